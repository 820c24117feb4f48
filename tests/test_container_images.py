"""The container images (docker/Dockerfile) against the lock and the cluster config. Docker builds
them (`make images`); these checks catch drift between what the tests ran and what ships."""

import os
import re

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(*path):
    with open(os.path.join(REPO, *path)) as f:
        return f.read()


def _locked(package):
    return re.search(rf'^{re.escape(package)}==(\S+)$', _read('requirements.lock'), re.M).group(1)


def _stages(dockerfile):
    """Final build stages by name -> their instructions (continuation lines joined)."""
    stages, current = {}, None
    for line in dockerfile.replace('\\\n', ' ').splitlines():
        line = line.strip()
        if not line or line.startswith('#'):
            continue
        match = re.match(r'FROM (\S+)(?: AS (\S+))?$', line, re.I)
        if match:
            current = match.group(2) or match.group(1)
            stages[current] = [line]
        elif current:
            stages[current].append(line)
    return stages


def test_images_are_built_on_the_official_images_of_the_locked_versions():
    dockerfile = _read('docker', 'Dockerfile')
    assert f'ARG TFX_IMAGE=tensorflow/tfx:{_locked("tfx")}' in dockerfile
    assert f'ARG BEAM_IMAGE=apache/beam_python3.10_sdk:{_locked("apache-beam")}' in dockerfile
    assert 'requires-python = ">=3.10,<3.11"' in _read('pyproject.toml')
    stages = _stages(dockerfile)
    assert stages['pipeline'][0] == 'FROM python:3.10-slim AS pipeline'
    assert stages['trainer'][0] == 'FROM ${TFX_IMAGE} AS trainer'


def test_both_images_install_the_lock_and_the_project_and_run_unprivileged():
    stages = _stages(_read('docker', 'Dockerfile'))
    for name in ('pipeline', 'trainer'):
        steps = stages[name]
        assert any('install --no-cache-dir -r /tmp/requirements.lock' in s for s in steps), name
        # The project as a wheel built at image build time; nothing is built when a step runs.
        assert any('--no-deps /tmp/dist/*.whl' in s for s in steps), name
        users = [s for s in steps if s.startswith('USER ')]
        assert users and users[-1] == 'USER 1000:1000', name


def test_no_credentials_can_reach_an_image():
    dockerfile = _read('docker', 'Dockerfile')
    instructions = '\n'.join(line for line in dockerfile.splitlines() if not line.lstrip().startswith('#')).lower()
    for secret in ('credential', 'aws_', 'secret', 'token', 'password', '.json', '.pem'):
        assert secret not in instructions, secret
    # The build context admits only what the images need.
    ignore = [line for line in _read('.dockerignore').splitlines() if line and not line.startswith('#')]
    assert ignore[0] == '*'
    allowed = {line[1:].rstrip('/') for line in ignore if line.startswith('!')}
    assert allowed == {'pyproject.toml', 'README.md', 'requirements.lock', 'pipeline', 'components', 'system'}
    copied = set()
    for line in dockerfile.splitlines():
        if line.startswith('COPY ') and '--from=' not in line:
            copied.update(line.split()[1:-1])
    assert copied == allowed


def test_the_cluster_config_uses_the_images_make_images_builds():
    config = yaml.safe_load(_read('configs', 'kubeflow.yaml'))['kubeflow']
    assert config['images']['default'].endswith('/staged-finetune:latest')
    assert config['images']['trainer'].endswith('/staged-finetune-gpu:latest')
    makefile = _read('Makefile')
    assert '--target pipeline -t $(REGISTRY)/staged-finetune:$(TAG)' in makefile
    assert '--target trainer -t $(REGISTRY)/staged-finetune-gpu:$(TAG)' in makefile
    # Dataflow workers run the pipeline image, which has the project installed.
    assert f'--sdk_container_image={config["images"]["default"]}' in config['beam_args']
