"""A run killed in the Trainer, its resume files cut short one after another, through the real
pipeline: every re-run warns once about the file it cannot load, redoes that part, and the last
one completes and pushes exactly once.

Each file is cut as a kill in the middle of writing it would have left it (a 96-byte h5 file,
for one, which Keras cannot load). The runs are `python -m pipeline run` processes, killed with
SIGKILL once the fine-tuning stage has written a new backup; the last run goes to the end.
"""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from components.shared.artifact_files import TRAINING_LOG
from tests.conftest import REPO, _records, _run_args


pytestmark = pytest.mark.e2e

# The whole training split, and no early stopping, so that each fine-tuning epoch lasts long
# enough to be killed after it; few epochs, so that the runs are short.
OVERRIDES = ('data.train_examples_per_class=null', 'trainer.stages.0.epochs=3', 'trainer.stages.1.epochs=6',
             'trainer.stages.1.early_stopping=null')
# In the order they are cut: the head stage's result, then the fine-tuning stage's epoch backup.
RESUME_FILES = ('head.weights.h5', 'head.done.json', 'finetune.backup/latest.weights.h5',
                'finetune.backup/training_metadata.json')


def _backup(run_dir):
    """The fine-tuning stage's epoch backup metadata in the Trainer's resume directory: (its
    resume directory, its bytes), or (None, None)."""
    found = glob.glob(os.path.join(run_dir, 'pipeline', 'Trainer', 'resume', '*', 'finetune.backup',
                                   'training_metadata.json'))
    if len(found) != 1:
        return None, None
    try:
        with open(found[0], 'rb') as f:
            content = f.read()
        json.loads(content)
    except (OSError, ValueError):
        return None, None
    return os.path.dirname(os.path.dirname(found[0])), content


def _run_until_a_new_backup(runs_dir, log_path, warned: bool):
    """Starts a run and SIGKILLs it once fine-tuning has written a backup other than the one there
    now (and, when `warned`, after the run printed its warning). Returns the resume directory and
    what the run printed."""
    _, before = _backup(os.path.join(runs_dir, 'digits-finetune'))
    with open(log_path, 'w') as log:
        child = subprocess.Popen([sys.executable, '-m', 'pipeline', *_run_args(runs_dir, *OVERRIDES)], cwd=REPO,
                                 stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and child.poll() is None:
        work_dir, content = _backup(os.path.join(runs_dir, 'digits-finetune'))
        with open(log_path) as f:
            printed = f.read()
        if content is not None and content != before and (not warned or 'warning:' in printed):
            break
        time.sleep(0.02)
    assert child.poll() is None, 'the run ended before it could be killed:\n' + open(log_path).read()[-3000:]
    child.send_signal(signal.SIGKILL)
    child.wait()
    with open(log_path) as f:
        return work_dir, f.read()


def _warnings(printed: str) -> list[str]:
    return [line.strip() for line in printed.splitlines() if line.strip().startswith('warning:')]


def test_each_cut_resume_file_is_discarded_and_the_run_completes_and_pushes_once(tmp_path, run_cli):
    runs_dir = tmp_path / 'runs'
    run_dir = runs_dir / 'digits-finetune'
    work_dir, printed = _run_until_a_new_backup(runs_dir, tmp_path / 'run-0.log', warned=False)
    assert 'Trainer: running' in printed and 'Pusher' not in printed
    assert work_dir is not None and os.path.exists(os.path.join(work_dir, 'head.done.json'))

    for case, name in enumerate(RESUME_FILES, start=1):
        path = os.path.join(work_dir, name)
        with open(path, 'r+b') as f:
            f.truncate(96 if name.endswith('.h5') else 5)
        if case < len(RESUME_FILES):
            work_dir, printed = _run_until_a_new_backup(runs_dir, tmp_path / f'run-{case}.log', warned=True)
        else:
            result = run_cli(*_run_args(runs_dir, *OVERRIDES))
            printed = result.stdout
            assert result.returncode == 0, printed[-3000:] + result.stderr[-3000:]
        warnings = _warnings(printed)
        assert len(warnings) == 1, (name, warnings)
        assert 'does not load' in warnings[0] and 'discarded' in warnings[0], (name, warnings)
        names = "stage 'head'" if name.startswith('head.') else 'finetune.backup'
        assert names in warnings[0], (name, warnings)

    # The last run: the stages ran or resumed, the model was pushed, once, and nothing is left over.
    records = _records(str(run_dir))
    pushed = records['Pusher'].outputs['pushed_model'][0]
    assert pushed.custom_properties['pushed'].int_value == 1
    assert [p for p in os.listdir(run_dir / 'serving') if not p.startswith('.')] == \
        [pushed.custom_properties['pushed_version'].string_value]
    assert not os.path.exists(work_dir)
    assert printed.strip().splitlines()[-1].startswith('pushed: ')
    with open(os.path.join(records['Trainer'].outputs['model_run'][0].uri, TRAINING_LOG)) as f:
        head, finetune = json.load(f)['stages']
    assert head['restored_after_restart'] is True
    # Its backup was cut last: fine-tuning started over, from the head stage's restored weights.
    assert finetune['resumed_at_epoch'] is None and finetune['epochs'][0]['epoch'] == 1
