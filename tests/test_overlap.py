"""Two real `python -m pipeline run` processes on one pipeline at once, as a scheduled run and a run by
hand would overlap: the second (with --wait) waits for the first's lock, runs when it is free, and
is gated against the model the first pushed. A third run and a rollback, started while the first
holds the lock, are refused at once with the holder named.

One module, one pair of runs: the second reads its data steps from the cache, and trains with
another seed (so it has a model of its own to push) and floors the model reaches surely; its
max_drop is lifted, so it is pushed whatever it scores against the first. Only ml_metadata is
imported here: this worker does not load TensorFlow."""

import json
import os
import subprocess
import sys
import time
import types

import pytest
from ml_metadata.proto import metadata_store_pb2

from components.reporting import mlmd_records
from pipeline import run_lock

pytestmark = pytest.mark.e2e

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, 'configs', 'local.yaml')
SECOND = ('trainer.seed=1', 'trainer.stages.0.epochs=3', 'trainer.stages.1.epochs=3',
          'evaluation.thresholds.recall=0.3', 'evaluation.thresholds.precision=0.3',
          'evaluation.max_drop.recall=1', 'evaluation.max_drop.precision=1')


def _command(runs_dir, *args, overrides=()) -> list[str]:
    command = [sys.executable, '-m', 'pipeline', *args, '--config', CONFIG, '--set', f'pipeline.runs_dir={runs_dir}']
    for override in overrides:
        command += ['--set', override]
    return command


def _until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f'timed out waiting for {what}')
        time.sleep(0.1)


def _timed(command) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    return result, time.monotonic() - started


def _finished(process, out, err) -> types.SimpleNamespace:
    process.wait(timeout=1500)
    with open(out) as f, open(err) as g:
        stdout, stderr = f.read(), g.read()
    # The summary: the lines after "=== <name>: finished in N s ===".
    lines = stdout.split(' s ===\n', 1)[-1].strip().splitlines()
    return types.SimpleNamespace(returncode=process.returncode, stdout=stdout, stderr=stderr, lines=lines,
                                 pid=process.pid)


@pytest.fixture(scope='module')
def overlap(tmp_path_factory):
    runs_dir = tmp_path_factory.mktemp('runs')
    run_dir = os.path.join(runs_dir, 'digits-finetune')
    env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
    logs = tmp_path_factory.mktemp('logs')

    def start(name, *extra, overrides=()):
        out, err = open(logs / f'{name}.out', 'w'), open(logs / f'{name}.err', 'w')
        process = subprocess.Popen(_command(runs_dir, 'run', *extra, overrides=overrides), cwd=REPO, env=env,
                                   stdout=out, stderr=err)
        out.close()
        err.close()
        return process, logs / f'{name}.out', logs / f'{name}.err'

    started = time.monotonic()
    first = start('first')
    _until(lambda: run_lock.holder(run_dir).get('pid') == first[0].pid, 60, 'the first run to take the lock')
    second = start('second', '--wait', overrides=SECOND)
    _until(lambda: 'waiting: ' in second[2].read_text(), 60, 'the second run to wait')
    refused, refused_seconds = _timed(_command(runs_dir, 'run'))
    rollback, rollback_seconds = _timed(_command(runs_dir, 'rollback', '--to', '1'))
    first_alive_after = first[0].poll() is None  # the refusals happened while the first held the lock
    first, second = _finished(*first), _finished(*second)
    return types.SimpleNamespace(
        run_dir=run_dir, serving=os.path.join(run_dir, 'serving'), first=first, second=second, refused=refused,
        refused_seconds=refused_seconds, rollback=rollback, first_alive_after=first_alive_after,
        seconds=time.monotonic() - started, runs_dir=runs_dir)


def _pushed_version(run) -> str:
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.lines[-1].startswith('pushed: ')
    return os.path.basename(run.lines[-1].split(': ', 1)[1])


def _run_id(run) -> str:
    report = next(line for line in run.lines if line.startswith('run report: '))
    return os.path.basename(os.path.dirname(report.split(': ', 1)[1]))


def test_a_run_started_while_another_holds_the_pipeline_is_refused_at_once_naming_it(overlap):
    assert overlap.first_alive_after
    holder = (f'pid {overlap.first.pid} (python -m pipeline run --config {CONFIG} '
              f'--set pipeline.runs_dir={overlap.runs_dir})')
    assert overlap.refused.returncode == run_lock.EXIT_LOCKED and overlap.refused.stdout == ''
    [line] = overlap.refused.stderr.strip().splitlines()
    assert line.startswith(f'cannot start: {overlap.run_dir} is in use by {holder}, since ')
    assert line.endswith('; give --wait to wait for it')
    # It answers before TensorFlow would have loaded: a second or two, on a machine this loaded.
    assert overlap.refused_seconds < 10
    [rollback] = overlap.rollback.stderr.strip().splitlines()
    assert overlap.rollback.returncode == run_lock.EXIT_LOCKED
    assert rollback.startswith(f'cannot roll back: {overlap.run_dir} is in use by {holder}, since ')


def test_the_second_run_waited_then_was_gated_against_the_first_s_push(overlap):
    first, second = _pushed_version(overlap.first), _pushed_version(overlap.second)
    assert overlap.second.stderr.splitlines()[0].startswith(
        f'waiting: {overlap.run_dir} is in use by pid {overlap.first.pid} (python -m pipeline run ')
    assert 'gate baseline: no model in production yet; only the floors apply' in overlap.first.lines
    assert f'gate baseline: model in production {os.path.join(overlap.serving, first)}' in overlap.second.lines
    assert int(second) > int(first)
    # Nothing else was pushed, and no staging directory is left.
    assert sorted(os.listdir(overlap.serving)) == sorted([first, second])


def test_each_run_reports_itself(overlap, tree_digest):
    """Each process's summary, report and exit code are its own run's, read back by its own run id."""
    connection = metadata_store_pb2.ConnectionConfig()
    connection.sqlite.filename_uri = os.path.join(overlap.run_dir, 'metadata.sqlite')
    ids = [_run_id(run) for run in (overlap.first, overlap.second)]
    assert ids[0] != ids[1]
    for run, run_id in zip((overlap.first, overlap.second), ids):
        assert os.path.isfile(os.path.join(overlap.run_dir, 'reports', run_id, 'report.html'))
        record = mlmd_records.run_by_id(connection, run_id)
        pushed = record['Pusher'].outputs['pushed_model'][0]
        destination = mlmd_records.custom_value(pushed, 'pushed_destination')
        assert destination == os.path.join(overlap.serving, _pushed_version(run))
        # The version is complete: the files of the model this run's Pusher was given.
        assert tree_digest(destination) == tree_digest(os.path.join(record['Pusher'].inputs['model'][0].uri,
                                                                    'Format-Serving'))


def test_history_shows_the_second_push_gated_against_the_first(overlap, run_cli):
    result = run_cli('history', '--config', CONFIG, '--set', f'pipeline.runs_dir={overlap.runs_dir}', '--json')
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    first, second = _pushed_version(overlap.first), _pushed_version(overlap.second)
    assert [(r['version'], r['baseline_version'], r['gated_against']) for r in rows] == [
        (second, first, first), (first, None, '')]
    assert [r['run'] for r in rows] == [_run_id(overlap.second), _run_id(overlap.first)]


def test_the_lock_is_free_when_both_runs_have_ended(overlap):
    with run_lock.hold(overlap.run_dir, 'test'):
        pass
