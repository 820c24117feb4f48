"""Every command the README shows runs in `make test` (here, on tiny data, or in the test named for
it).

COMMANDS lists each one. A command in the README that is not listed fails the first test, so a new
command cannot be documented without saying where it runs. The benchmarks run here with the smallest
budget that still goes through their whole path and prints their figures; what they print is
checked, not how fast it was.
"""

import json
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, 'configs', 'local.yaml')

pytestmark = pytest.mark.e2e

# The smallest training the default config allows: one epoch of two steps per stage, a source task
# of one epoch.
TINY = ('trainer.stages.0.epochs=1', 'trainer.stages.1.epochs=1', 'trainer.steps_per_epoch=2',
        'model.backbone.source_task.epochs=1', 'evaluation.confidence=null', 'evaluation.max_drop={}',
        'evaluation.thresholds={recall: 0.01, precision: 0.01}')

# README command -> where it runs: ('here', test of this module) or ('test', path, text that path
# passes to the CLI or runs), or ('suite', why) for the commands that run the tests themselves.
COMMANDS = {
    'make run-local': ('test', 'tests/conftest.py', "'-m', 'pipeline'"),
    'python -m pipeline run': ('test', 'tests/conftest.py', "'-m', 'pipeline'"),
    'make test': ('suite', 'the suite itself; .ci/run calls it'),
    'make test-fast': ('here', 'test_make_test_fast_selects_the_quick_tests'),
    'make durations': ('here', 'test_make_durations_writes_the_measured_order'),
    'make compare': ('test', 'tests/test_compare.py', "'compare'"),
    'python -m pipeline compare': ('test', 'tests/test_compare.py', "'compare'"),
    'make tensorboard': ('test', 'tests/test_run_report.py', "'tensorboard'"),
    'python -m pipeline tensorboard': ('test', 'tests/test_run_report.py', "'tensorboard'"),
    'python -m pipeline history': ('test', 'tests/test_retraining.py', "'history'"),
    'python -m pipeline rollback': ('test', 'tests/test_retraining.py', "'rollback'"),
    'python -m pipeline predict': ('test', 'tests/test_end_to_end.py', "'predict'"),
    'make backbone': ('test', 'pipeline/kubeflow_runner_test.py', "'backbone'"),
    'python -m pipeline backbone': ('test', 'pipeline/kubeflow_runner_test.py', "'backbone'"),
    'make compile-kubeflow': ('test', 'pipeline/kubeflow_runner_test.py', "'compile'"),
    'make schedule': ('test', 'pipeline/kubeflow_schedule_test.py', "'schedule'"),
    'make kubeflow-local': ('test', 'tools/kfp_launcher_test.py', 'kfp_launcher.run_spec('),
    'python -m tools.kfp_launcher': ('test', 'tools/kfp_launcher_test.py', 'kfp_launcher.run_spec('),
    'make images': ('here', 'test_make_images_builds_both_targets_of_the_dockerfile'),
    'make lock': ('here', 'test_make_lock_resolves_both_locks_from_their_inputs'),
    'make bench': ('here', 'test_make_bench_prints_the_ratios'),
    'make bench-tuning': ('here', 'test_make_bench_tuning_prints_the_search_s_cost'),
    'python -m benchmarks.cold_run': ('here', 'test_cold_run_prints_each_phase_and_the_re_run_answered_by_the_cache'),
    'python -m benchmarks.beam_mode': ('here', 'test_beam_mode_prints_both_modes_and_their_crossover'),
    'python -m benchmarks.data_steps': ('here', 'test_data_steps_prints_their_seconds'),
}


def readme_commands() -> set[str]:
    """`make TARGET` and `python -m MODULE [SUBCOMMAND]` as the README shows them."""
    with open(os.path.join(REPO, 'README.md')) as f:
        text = f.read()
    found = set()
    command_pattern = r'(?:^|`|\n)[ \t]*(?:\$ )?(?:\.venv/bin/)?(make [a-z][a-z-]*|python -m [a-z_.]+(?: [a-z]+)?)'
    for match in re.finditer(command_pattern, text):
        command = match.group(1)
        if command.startswith('python -m') and not command.startswith('python -m pipeline '):
            command = ' '.join(command.split()[:3])  # a module's arguments are not a subcommand
        found.add(command)
    return found


def _make_dry_run(*args: str) -> str:
    return subprocess.run(['make', '-n', *args], cwd=REPO, capture_output=True, text=True, check=True).stdout


def _python(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_every_readme_command_says_where_it_runs():
    assert readme_commands() == set(COMMANDS)
    here = {name for name in globals() if name.startswith('test_')}
    for command, (kind, *where) in COMMANDS.items():
        if kind == 'here':
            assert where[0] in here, command
        elif kind == 'test':
            path, text = where
            with open(os.path.join(REPO, path)) as f:
                assert text in f.read(), (command, path)


@pytest.mark.parametrize('target, runs', [
    ('run-local', '-m pipeline run --config configs/local.yaml'),
    ('compare', '-m pipeline compare --config configs/local.yaml'),
    ('tensorboard', '-m pipeline tensorboard --config configs/local.yaml'),
    ('backbone', '-m pipeline backbone --config configs/kubeflow.yaml'),
    ('compile-kubeflow', '-m pipeline compile --config configs/kubeflow.yaml'),
    ('kubeflow-local', '-m tools.kfp_launcher --config configs/local.yaml'),
    ('bench', '-m benchmarks.trainer'),
    ('bench-tuning', '-m benchmarks.tuning --config configs/local.yaml'),
])
def test_each_make_target_runs_the_command_its_test_runs(target, runs):
    """`make TARGET` (recipe only, `make -n`) is the CLI command the test named in COMMANDS runs."""
    assert runs in _make_dry_run(target, 'PY=.venv/bin/python')


def test_make_test_fast_selects_the_quick_tests():
    recipe = _make_dry_run('test-fast')
    assert "-m pytest -m 'not e2e and not slow'" in recipe and 'lint-imports' in recipe
    assert 'lint-imports' in _make_dry_run('test')


def test_make_durations_writes_the_measured_order(tmp_path):
    recipe = _make_dry_run('durations')
    assert '.pytest_cache/v/staged-finetune/durations' in recipe and 'tests/durations.json' in recipe


def test_make_images_builds_both_targets_of_the_dockerfile():
    """Docker builds need the base images' registry, which this machine does not reach: the recipe
    and the Dockerfile are checked, and the usage error without REGISTRY."""
    recipe = _make_dry_run('images', 'REGISTRY=registry.example/ml', 'TAG=t')
    with open(os.path.join(REPO, 'docker', 'Dockerfile')) as f:
        stages = re.findall(r'^FROM \S+ AS (\w+)$', f.read(), re.M)
    for target in ('pipeline', 'trainer'):
        assert f'--target {target}' in recipe and target in stages
    assert 'docker push registry.example/ml/staged-finetune:t' in recipe
    missing = subprocess.run(['make', 'images'], cwd=REPO, capture_output=True, text=True)
    assert missing.returncode == 2 and 'usage: make images REGISTRY=' in missing.stderr


def test_make_lock_resolves_both_locks_from_their_inputs():
    """Resolving needs the package index and rewrites the locks: the recipe is checked, and that each
    lock says it was compiled from the input the recipe names."""
    recipe = _make_dry_run('lock')
    assert 'uv pip compile pyproject.toml --extra dev' in recipe and '-o requirements.lock' in recipe
    assert 'uv pip compile tools/kfp/requirements.in' in recipe
    with open(os.path.join(REPO, 'requirements.lock')) as f:
        assert 'uv pip compile pyproject.toml --extra dev' in f.read(400)


def test_cold_run_prints_each_phase_and_the_re_run_answered_by_the_cache():
    result = _python('-m', 'benchmarks.cold_run', *[a for o in TINY for a in ('--set', o)])
    figures = json.loads(result.stdout[:result.stdout.rindex('}') + 1])
    assert figures['wall_s'] > figures['pipeline_s'] > 0 and figures['training_s'] > 0
    assert {'Trainer', 'Transform', 'Evaluator'} <= set(figures['components_s'])
    assert re.search(r'^pipeline \d+ s / training [\d.]+ s = [\d.]+$', result.stdout, re.M)
    assert figures['rerun_exit'] == 0
    assert not {'Transform', 'Trainer', 'Evaluator'} & set(figures['steps_executed_on_rerun'])
    assert 0 < figures['rerun_to_cold'] < 1
    assert re.search(r'^re-run [\d.]+ s / cold [\d.]+ s = [\d.]+$', result.stdout, re.M)


def test_data_steps_prints_their_seconds(capsys, monkeypatch):
    """In this process: the data steps are the real components on LocalDagRunner."""
    from benchmarks import data_steps

    monkeypatch.setattr(sys, 'argv', ['data_steps', '--sizes', '1'])
    data_steps.main()
    [row] = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines() if line.startswith('{')]
    assert row['size'] == 1 and row['steps_s'] > 0 and 'Transform' in row['per_step_s'] and row['ratio_to_first'] == 1


def test_beam_mode_prints_both_modes_and_their_crossover(capsys, monkeypatch):
    from benchmarks import beam_mode

    monkeypatch.setattr(sys, 'argv', ['beam_mode', '--sizes', '1'])
    beam_mode.main()
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines() if line.startswith('{')]
    assert [row['mode'] for row in rows[:2]] == ['in_memory', 'multi_processing']
    assert all(row['data_steps_s'] > 0 for row in rows[:2]) and 'crossover_mb' in rows[2]


def test_make_bench_tuning_prints_the_search_s_cost(capsys, tmp_path):
    from benchmarks import tuning

    sets = [arg for kv in (*TINY, f'pipeline.runs_dir={tmp_path}') for arg in ('--set', kv)]
    assert tuning.main(['--config', CONFIG, '--trials', '2', *sets]) == 0
    out = capsys.readouterr().out
    assert re.search(r'^search: \d+ s for 2 trials \(\d pruned\); one training of the fixed recipe: \d+ s; '
                     r'ratio [\d.]+$', out, re.M), out[-2000:]


def test_make_bench_prints_the_ratios(capsys, monkeypatch):
    from benchmarks import trainer

    monkeypatch.setattr(sys, 'argv', ['trainer', '--photos', '400', '--sizes', '48', '32', '--steps', '2',
                                      '--epochs', '2', '--repeats', '1'])
    trainer.main()
    out = capsys.readouterr().out
    assert re.search(r'^transformed/raw bytes at 48x48: [\d.]+$', out, re.M), out[-2000:]
    assert re.search(r'^ratio [\d.]+$', out, re.M), out[-2000:]
    assert re.search(r'^head stage uncached [\d.]+ s, cached [\d.]+ s', out, re.M), out[-2000:]
