"""A search through the real pipeline on the embedded default: killed (SIGKILL) once a trial has
finished, run again to the end, run a third time unchanged, then with the values reused. One
search for the module, many assertions on it.

The first process is `python -m pipeline run`; the later runs call the CLI in this process."""

import glob
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import types

import pytest

from components.shared.artifact_files import TRAINING_LOG
from tests.conftest import REPO, _records, _run_args

pytestmark = pytest.mark.e2e

HEAD_LR = 'trainer.stages.head.optimizer.learning_rate'
FINETUNE_LR = 'trainer.stages.finetune.optimizer.learning_rate'
FINETUNE_EPOCHS = 'trainer.stages.finetune.epochs'
TRIALS = 3
TUNING = (f'tuning={{trials: {TRIALS}, space: {{{HEAD_LR}: {{space: log_uniform, low: 1e-3, high: 3e-2}}, '
          f'{FINETUNE_LR}: {{space: log_uniform, low: 1e-4, high: 3e-3}}, '
          f'{FINETUNE_EPOCHS}: {{space: choice, values: [0, 6, 12]}}}}}}')


def _finished_trials(run_dir) -> dict[int, float]:
    """{trial number: objective} of the trials the study holds as complete or pruned."""
    found = glob.glob(os.path.join(run_dir, 'pipeline', 'Tuner', 'resume', '*', 'study.db'))
    if not found:
        return {}
    try:
        with sqlite3.connect(f'file:{found[0]}?mode=ro', uri=True) as db:
            return dict(db.execute(
                "SELECT t.number, v.value FROM trials t LEFT JOIN trial_values v ON v.trial_id = t.trial_id "
                "WHERE t.state IN ('COMPLETE', 'PRUNED')").fetchall())
    except sqlite3.Error:
        return {}


def _output(records, node, key):
    return records[node].outputs[key][0].uri


@pytest.fixture(scope='module')
def search(tmp_path_factory, run_cli):
    runs_dir = tmp_path_factory.mktemp('tuning-runs')
    run_dir = os.path.join(runs_dir, 'digits-finetune')
    log_path = runs_dir / 'killed.log'
    with open(log_path, 'w') as log:
        child = subprocess.Popen([sys.executable, '-m', 'pipeline', *_run_args(runs_dir, TUNING)], cwd=REPO,
                                 stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and child.poll() is None and not _finished_trials(run_dir):
        time.sleep(0.2)
    child.send_signal(signal.SIGKILL)
    child.wait()
    before = _finished_trials(run_dir)
    resumed = run_cli(*_run_args(runs_dir, TUNING))
    records = _records(run_dir)
    history = run_cli('history', '--json', *_run_args(runs_dir, TUNING)[1:])
    again = run_cli(*_run_args(runs_dir, TUNING))
    best_dir = _output(records, 'Tuner', 'best_hyperparameters')
    reused = run_cli(*_run_args(runs_dir, TUNING, f'tuning.reuse={best_dir}'))
    with open(os.path.join(best_dir, 'best_hyperparameters.txt')) as f:
        best = json.load(f)
    with open(os.path.join(_output(records, 'Tuner', 'tuner_results'), 'tuner_results.json')) as f:
        rows = json.load(f)
    with open(os.path.join(_output(records, 'Trainer', 'model_run'), TRAINING_LOG)) as f:
        training_log = json.load(f)
    return types.SimpleNamespace(killed_code=child.returncode, before=before, resumed=resumed, records=records,
                                 again=again, reused=reused, reused_records=_records(run_dir), best=best, rows=rows,
                                 training_log=training_log, best_dir=best_dir, history=history)


def test_a_killed_search_resumes_without_running_its_finished_trials_again(search):
    assert search.killed_code == -signal.SIGKILL
    finished = len(search.before)
    assert finished >= 1
    lines = search.resumed.stdout.splitlines()
    assert f'        tuning: {finished} of {TRIALS} trials already finished (resumed)' in lines
    ran = [line for line in lines if line.startswith('        tuning: trial ')]
    assert len(ran) == TRIALS - finished
    # The finished trials kept their numbers and results; the resumed run ran only new ones.
    rows = {row['trial'] - 1: row for row in search.rows}
    for number, value in search.before.items():
        assert rows[number]['value'] == value
        assert not any(line.startswith(f'        tuning: trial {number + 1} of') for line in ran)
    assert search.best['completed'] + search.best['pruned'] == TRIALS
    assert search.best['interrupted'] <= 1


def test_the_trainer_trains_the_winner_and_the_summary_says_what_was_tuned(search):
    assert search.resumed.returncode in (0, 3), search.resumed.stderr[-2000:]
    values = search.best['values']
    assert search.training_log['tuning']['values'] == values
    assert search.training_log['tuning']['from'] == search.best_dir
    stages = {s['name']: s for s in search.training_log['stages']}
    assert stages['head']['learning_rate'] == pytest.approx(values[HEAD_LR])
    if values[FINETUNE_EPOCHS] == 0:
        assert set(stages) == {'head'}
    else:
        assert stages['finetune']['learning_rate'] == pytest.approx(values[FINETUNE_LR])
        assert stages['finetune']['epochs_planned'] == values[FINETUNE_EPOCHS]
    winner = search.best['winner']
    tuned = next(line for line in search.resumed.stdout.splitlines() if line.startswith('tuned: '))
    assert f"trial {winner['trial']} of {search.best['trials']}" in tuned
    assert f"eval auc_pr {winner['value']:.4f}" in tuned
    # The first trial is the config's own values.
    assert search.rows[0]['recipe'] is True
    assert search.rows[0]['values'] == {HEAD_LR: 3e-3, FINETUNE_LR: 1e-3, FINETUNE_EPOCHS: 12}


def test_the_search_reads_the_train_and_eval_splits_only(search):
    read = search.best['read']
    assert [os.path.basename(os.path.dirname(p)) for p in read['train']] == ['Split-train']
    assert [os.path.basename(os.path.dirname(p)) for p in read['eval']] == ['Split-eval']
    assert search.best['split'] == 'eval'


def test_the_trials_of_one_process_computed_the_frozen_features_once(search):
    """The resumed process ran at least two trials, each with a cached head stage; the features
    were computed for the first only."""
    assert len(search.rows) - len(search.before) >= 2
    assert search.best['feature_cache_computations'] == 1


def test_an_unchanged_rerun_does_not_search_again(search):
    assert search.again.returncode == search.resumed.returncode
    assert '] Tuner: cached' in search.again.stdout
    assert 'tuning: trial' not in search.again.stdout


def test_reused_values_are_imported_and_trained_without_a_search(search):
    records = search.reused_records
    assert 'Tuner' not in records and 'hyperparameters_importer' in records
    assert 'tuning: trial' not in search.reused.stdout
    tuned = next(line for line in search.reused.stdout.splitlines() if line.startswith('tuned: '))
    assert tuned.endswith(f'imported from {search.best_dir} (no search in this run)')


def test_history_says_the_model_in_production_was_tuned(search):
    if search.resumed.returncode != 0:
        pytest.skip('the tuned model was not pushed')
    rows = json.loads(search.history.stdout)
    assert rows[0]['in_production'] and rows[0]['recipe'] == (
        f"tuned, trial {search.best['winner']['trial']} of {search.best['trials']}")


def test_the_run_report_shows_the_search(search):
    path = next(line for line in search.resumed.stdout.splitlines() if line.startswith('run report: ')).split(': ', 1)[1]
    with open(path if os.path.isabs(path) else os.path.join(REPO, path)) as f:
        page = f.read()
    assert '<h3 id="tuning">The search</h3>' in page
    assert f"trial {search.best['winner']['trial']} of {search.best['trials']}" in page
    assert 'no search in this run' not in page
    rows = page.split('<table id="trials">', 1)[1].split('</table>', 1)[0].count('<tr>') - 1
    assert rows == len(search.rows)
    assert '<figure id="tuning-plot"><svg' in page
