"""The real pipeline, run through the CLI on the embedded default, once per test session; the test
modules of this directory assert on these runs' outputs (tests/test_end_to_end.py says what each run is)."""

import os
import subprocess
import sys
import types

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, 'configs', 'local.yaml')


def _run_cli(runs_dir, *overrides):
    args = [sys.executable, '-m', 'pipeline', 'run', '--config', CONFIG, '--set', f'pipeline.runs_dir={runs_dir}']
    for override in overrides:
        args += ['--set', override]
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=1500)


def _records(run_dir):
    from tfx import v1 as tfx

    from pipeline import outcome

    connection = tfx.orchestration.metadata.sqlite_metadata_connection_config(os.path.join(run_dir, 'metadata.sqlite'))
    return outcome.latest_run(connection)


@pytest.fixture(scope='session')
def first_run(tmp_path_factory):
    runs_dir = tmp_path_factory.mktemp('runs')
    result = _run_cli(runs_dir)
    run_dir = os.path.join(runs_dir, 'digits-finetune')
    return types.SimpleNamespace(result=result, run_dir=run_dir, records=_records(run_dir),
                                 lines=result.stdout.strip().splitlines())


@pytest.fixture(scope='session')
def rejected_run(first_run, tree_digest):
    serving = os.path.join(first_run.run_dir, 'serving')
    before = tree_digest(serving)
    result = _run_cli(os.path.dirname(first_run.run_dir),
                      'evaluation.thresholds.recall=0.999', 'evaluation.thresholds.precision=0.999')
    return types.SimpleNamespace(result=result, serving_before=before, serving_after=tree_digest(serving),
                                 records=_records(first_run.run_dir), lines=result.stdout.strip().splitlines())


HEAD_ONLY = '[{name: head, epochs: 10, unfreeze: none, optimizer: {name: adam, learning_rate: 3e-3}}]'


@pytest.fixture(scope='session')
def regressed_run(rejected_run, first_run, tree_digest):
    serving = os.path.join(first_run.run_dir, 'serving')
    before = tree_digest(serving)
    result = _run_cli(os.path.dirname(first_run.run_dir), f'trainer.stages={HEAD_ONLY}',
                      'evaluation.thresholds.recall=0.3', 'evaluation.thresholds.precision=0.5')
    return types.SimpleNamespace(result=result, serving_before=before, serving_after=tree_digest(serving),
                                 records=_records(first_run.run_dir), lines=result.stdout.strip().splitlines())


