"""`history`'s table on recorded rows (testdata/history.json: `history --json` after the embedded
default's first `make run-local`); rollback's order against ML Metadata on small SavedModels."""

import json
import os
import shutil
import types

import pytest
from ml_metadata.proto import metadata_store_pb2

from pipeline import registry
from pipeline.paths import LocalPaths

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TESTDATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'testdata')


def _rows() -> list[dict]:
    with open(os.path.join(TESTDATA, 'history.json')) as f:
        return json.load(f)


def test_the_table_has_a_row_per_version_the_one_in_production_starred():
    header, row = registry.table(_rows())
    assert header.split() == ['version', 'pushed', 'at', 'gated', 'against', 'gate', '(value', '[interval],', 'floor)',
                              'span', 'examples', 'started', 'from', 'recipe', 'config', 'run']
    assert row.startswith('* 1796304684  2026-12-03T13:31:24+00:00  none  ')
    assert 'recall 0.8438 [0.731, 0.922] (floor 0.65), precision 0.8182 [0.704, 0.902] (floor 0.65)' in row
    assert row.split()[-2:] == ['2437c50273a3653a', '2026-12-03T13:30:53.803656']


def test_the_recipe_column_says_whether_the_values_were_tuned():
    assert registry._recipe(None, False) == 'unknown'
    assert registry._recipe({'stages': []}, False) == 'as configured'
    tuned = {'tuning': {'values': {}, 'winner': {'trial': 4}, 'trials': 6}}
    assert registry._recipe(tuned, True) == 'tuned, trial 4 of 6'
    assert registry._recipe(tuned, False) == 'tuned, imported'
    [first] = _rows()
    _, row = registry.table([{**first, 'recipe': 'tuned, trial 4 of 6'}])
    assert '  tuned, trial 4 of 6  ' in row


def test_a_rollback_is_starred_in_production_and_shows_no_gate_of_its_own():
    [first] = _rows()
    older = {**first, 'in_production': False}
    rollback = {**first, 'version': '1796305000', 'rollback_of': first['version'], 'gate': [],
                'gated_against': first['version'], 'baseline_version': first['version']}
    header, newest, oldest = registry.table([rollback, older])
    assert newest.startswith('* 1796305000  ') and oldest.startswith('  1796304684  ')
    # The copy was gated by no Evaluator of its own: its gate column is '-', against the version it copies.
    at = header.index('gated against')
    assert newest[at:].split()[:2] == ['1796304684', '-'] and oldest[at:].split()[0] == 'none'
    # Columns line up: every row is as wide as the header, up to the last column.
    assert len({line.index(' 2026-') for line in (newest, oldest)}) == 1


def test_a_broken_version_is_marked_in_the_table():
    [first] = _rows()
    broken = {**first, 'broken': 'runs/digits-finetune/serving/1796304684/variables/variables.index is missing'}
    _, row = registry.table([broken])
    assert row.startswith('* 1796304684 broken  2026-12-03T13:31:24+00:00  ')


# Rollback's order against ML Metadata, on small SavedModels (no pipeline run): its start is
# recorded before the push, its end after; a record that fails after the push is made by the retry,
# which pushes nothing.

@pytest.fixture(scope='module')
def saved_model(tmp_path_factory) -> str:
    """A complete SavedModel with one variable (a version as the Pusher leaves one)."""
    import tensorflow as tf

    module = tf.Module()
    module.weight = tf.Variable([1.0, 2.0])
    path = str(tmp_path_factory.mktemp('model') / 'model')
    tf.saved_model.save(module, path)
    return path


@pytest.fixture
def served(tmp_path, saved_model):
    """A pipeline's config, with two versions pushed: `old` (to roll back to) and `new` (in production)."""
    from components.config import load_config
    from components.nodes import atomic_pusher

    config = load_config(os.path.join(REPO, 'configs', 'local.yaml'), (f'pipeline.runs_dir={tmp_path / "runs"}',))
    serving = os.path.join(config.run_dir, 'serving')
    old, _ = atomic_pusher.push_atomically(saved_model, serving)
    new_model = tmp_path / 'new'
    shutil.copytree(saved_model, new_model)
    (new_model / 'assets.extra').mkdir()
    (new_model / 'assets.extra' / 'note.txt').write_text('another model')
    new, _ = atomic_pusher.push_atomically(str(new_model), serving)
    return types.SimpleNamespace(config=config, serving=serving, old=old, new=new)


def _rollbacks(config) -> list:
    """The rollback executions in the pipeline's store, oldest first."""
    store = registry._store(LocalPaths(os.path.abspath(config.run_dir)))
    return sorted(store.get_executions_by_type(registry.ROLLBACK_TYPE), key=lambda e: e.id)


def _state(execution) -> str:
    return metadata_store_pb2.Execution.State.Name(execution.last_known_state)


def _record_failing(message: str):
    """registry._record as it fails on a store ML Metadata cannot write (its RuntimeError)."""
    def record(*args):
        raise RuntimeError(message)

    return record


def test_the_rollback_is_recorded_as_started_before_its_push_and_done_after(served, monkeypatch):
    from components.nodes import atomic_pusher

    push, seen = atomic_pusher.push_atomically, []

    def watched_push(source, serving):
        [started] = _rollbacks(served.config)
        seen.append((_state(started), registry.custom_value(started, registry.FROM_VERSION),
                     registry.custom_value(started, registry.REPLACED_VERSION), os.listdir(serving)))
        return push(source, serving)

    monkeypatch.setattr(atomic_pusher, 'push_atomically', watched_push)
    done = registry.rollback(served.config, served.old)
    # Recorded as started, naming both versions, while nothing was pushed yet.
    assert [(state, source, replaced, sorted(names)) for state, source, replaced, names in seen] == [
        ('RUNNING', served.old, served.new, sorted([served.old, served.new]))]
    assert done.pushed and sorted(os.listdir(served.serving)) == sorted([served.old, served.new, done.version])
    [finished] = _rollbacks(served.config)
    assert (_state(finished), registry.custom_value(finished, registry.TO_VERSION)) == ('COMPLETE', done.version)
    assert registry.history(served.config)[0]['rollback_of'] == served.old
    assert registry.unfinished_rollbacks(served.config) == []


def test_a_record_that_fails_after_the_push_is_made_by_the_retry_which_pushes_nothing(served, monkeypatch):
    record = registry._record
    monkeypatch.setattr(registry, '_record', _record_failing(
        'Error when executing query: database is locked query: INSERT INTO `Execution` ...'))
    with pytest.raises(registry.NotRecorded) as raised:
        registry.rollback(served.config, served.old)
    copy = max(os.listdir(served.serving), key=int)
    assert str(raised.value) == (
        f'version {served.old} is in production again, as version {copy} ({os.path.join(served.serving, copy)}), '
        f'but ML Metadata did not record it: {os.path.join(served.config.run_dir, "metadata.sqlite")} is not a '
        f'usable ML Metadata store (database is locked); until it does, `history` shows {copy} without its '
        f'lineage; once that store can be written (keep it: it holds the start of this rollback), run this '
        f'rollback again: it records {copy} and pushes nothing')
    [pending] = registry.unfinished_rollbacks(served.config)
    assert (pending['from_version'], pending['replaced_version']) == (served.old, served.new)
    assert registry.history(served.config)[0]['rollback_of'] is None

    monkeypatch.setattr(registry, '_record', record)
    again = registry.rollback(served.config, served.old)
    assert (again.version, again.pushed) == (copy, False)
    assert sorted(os.listdir(served.serving)) == sorted([served.old, served.new, copy])  # no second copy
    assert registry.history(served.config)[0]['rollback_of'] == served.old
    assert registry.unfinished_rollbacks(served.config) == []
    assert [_state(e) for e in _rollbacks(served.config)] == ['COMPLETE']


def test_a_retry_after_production_moved_on_records_the_old_copy_and_pushes_a_new_one(served, monkeypatch):
    from components.nodes import atomic_pusher

    record = registry._record
    monkeypatch.setattr(registry, '_record', _record_failing('disk I/O error'))
    with pytest.raises(registry.NotRecorded):
        registry.rollback(served.config, served.old)
    copy = max(os.listdir(served.serving), key=int)
    monkeypatch.setattr(registry, '_record', record)
    later, _ = atomic_pusher.push_atomically(os.path.join(served.serving, served.new), served.serving)  # a run's push
    done = registry.rollback(served.config, served.old)
    assert done.pushed and int(done.version) > int(later)
    rows = {row['version']: row for row in registry.history(served.config)}
    assert rows[copy]['rollback_of'] == rows[done.version]['rollback_of'] == served.old
    assert [_state(e) for e in _rollbacks(served.config)] == ['COMPLETE', 'COMPLETE']


def test_a_failed_push_is_recorded_as_failed_and_the_retry_pushes(served, monkeypatch):
    from components.nodes import atomic_pusher

    push = atomic_pusher.push_atomically

    def refused(source, serving):
        raise PermissionError(13, 'Permission denied', os.path.join(serving, '.partial-1'))

    monkeypatch.setattr(atomic_pusher, 'push_atomically', refused)
    with pytest.raises(registry.PushFailed) as raised:
        registry.rollback(served.config, served.old)
    assert str(raised.value) == (
        f"the push into {served.serving} failed (PermissionError: [Errno 13] Permission denied: "
        f"'{os.path.join(served.serving, '.partial-1')}'); nothing was pushed, production is still version "
        f"{served.new}; make {served.serving} writable and run this rollback again")
    assert [_state(e) for e in _rollbacks(served.config)] == ['FAILED']
    assert registry.unfinished_rollbacks(served.config) == []

    monkeypatch.setattr(atomic_pusher, 'push_atomically', push)
    done = registry.rollback(served.config, served.old)
    assert done.pushed and len(os.listdir(served.serving)) == 3
    assert [_state(e) for e in _rollbacks(served.config)] == ['FAILED', 'COMPLETE']


def test_a_version_whose_variables_do_not_read_back_is_refused_before_anything_is_recorded(served):
    data = os.path.join(served.serving, served.old, 'variables', 'variables.data-00000-of-00001')
    with open(data, 'r+b') as f:
        f.truncate(os.path.getsize(data) // 2)
    with pytest.raises(registry.BrokenVersion) as raised:
        registry.rollback(served.config, served.old)
    assert str(raised.value) == (f'{os.path.join(served.serving, served.old)}/variables/ does not read back '
                                 f'(IndexError: Read less bytes than requested); no other earlier version is complete')
    assert not os.path.exists(os.path.join(served.config.run_dir, 'metadata.sqlite'))
    assert sorted(os.listdir(served.serving)) == sorted([served.old, served.new])
