"""A step that fails: the summary gives one line of cause and the path of the full traceback; the
console carries no traceback."""

import os

import pytest

from tests.conftest import _run_args

pytestmark = pytest.mark.e2e


def test_a_failing_trainer_gives_one_line_of_cause_and_the_traceback_in_a_file(tmp_path, run_cli):
    result = run_cli(*_run_args(tmp_path / 'runs', 'trainer.stages.1.unfreeze={pattern: no_such_layer}'))
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 1, lines[-5:]
    assert lines[-3] == 'run failed at Trainer; nothing was pushed'
    assert lines[-2].startswith("cause: ValueError: unfreeze.pattern = 'no_such_layer': matches no backbone layer")
    assert lines[-1].startswith('full traceback: ')
    path = lines[-1][len('full traceback: '):]
    with open(path) as f:
        text = f.read()
    assert text.startswith('Traceback (most recent call last):') and 'no_such_layer' in text
    assert 'Traceback' not in result.stdout + result.stderr
    assert not os.path.exists(os.path.join(tmp_path, 'runs', 'digits-finetune', 'serving'))
