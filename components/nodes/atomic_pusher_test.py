"""AtomicPusher: a push is whole or absent, never replaces a version, and happens only while
production is the model the gate compared against."""

import os
import shutil
import time

import pytest
from tfx.utils import io_utils, path_utils

from components.nodes import atomic_pusher
from components.nodes.gate_evaluator_test import (_evaluate, _production, _push, _scoring_model,  # noqa: F401
                                                  binary_split)  # binary_split: a fixture
from components.shared import release_keys, serving_layout


def test_push_is_atomic_a_copy_killed_halfway_leaves_no_version_behind(tmp_path, monkeypatch, tree_digest):
    serving = tmp_path / 'serving'
    first = _scoring_model(tmp_path / 'first')
    version, _ = atomic_pusher.push_atomically(path_utils.serving_model_path(first.uri), str(serving))
    before = tree_digest(serving / version)
    real_copy = io_utils.copy_dir

    def copy_then_die(src, dst, *args, **kwargs):
        real_copy(src, dst, *args, **kwargs)
        os.remove(os.path.join(dst, 'saved_model.pb'))  # as if interrupted before the last file
        raise KeyboardInterrupt

    monkeypatch.setattr(io_utils, 'copy_dir', copy_then_die)
    with pytest.raises(KeyboardInterrupt):
        atomic_pusher.push_atomically(path_utils.serving_model_path(first.uri), str(serving))
    # The interrupted push removed its own staging directory; production is untouched.
    assert os.listdir(serving) == [version] and serving_layout.latest_version(str(serving)) == version
    assert tree_digest(serving / version) == before


def _staging(serving, name: str, age_seconds: float):
    """A staging directory as a push leaves it, its files last written `age_seconds` ago."""
    path = serving / name
    (path / 'variables').mkdir(parents=True)
    (path / 'variables' / 'variables.index').write_bytes(b'x')
    written = time.time() - age_seconds
    for file in (path / 'variables' / 'variables.index', path / 'variables', path):
        os.utime(file, (written, written))
    return path


def test_a_push_removes_only_the_staging_directories_no_push_can_still_be_writing(tmp_path):
    serving = tmp_path / 'serving'
    model = _scoring_model(tmp_path / 'model')
    stale = _staging(serving, '.partial-123-killed', atomic_pusher.STALE_STAGING_SECONDS + 60)
    # Another push's, still copying: its newest file is recent, though the directory is old.
    busy = _staging(serving, '.partial-456-copying', atomic_pusher.STALE_STAGING_SECONDS + 60)
    (busy / 'saved_model.pb').write_bytes(b'being written')
    version, _ = atomic_pusher.push_atomically(path_utils.serving_model_path(model.uri), str(serving))
    assert sorted(os.listdir(serving)) == sorted([version, busy.name])
    assert not stale.exists() and (busy / 'saved_model.pb').read_bytes() == b'being written'


def test_a_push_compares_and_swaps_production_and_never_replaces_a_version(tmp_path, monkeypatch, tree_digest):
    serving = tmp_path / 'serving'
    model = path_utils.serving_model_path(_scoring_model(tmp_path / 'model').uri)
    first, _ = atomic_pusher.push_atomically(model, str(serving), expected_latest=None)
    with pytest.raises(release_keys.ProductionChanged, match=f'gated against version none, production is now {first}'):
        atomic_pusher.push_atomically(model, str(serving), expected_latest=None)
    assert os.listdir(serving) == [first]  # nothing pushed, no staging left
    # A version number taken meanwhile (say, by a push in the same second) is skipped, not replaced.
    taken = str(int(time.time()) + 5)
    shutil.copytree(serving / first, serving / taken)
    os.remove(serving / taken / 'saved_model.pb')  # not a complete version: production is still `first`
    marker = tree_digest(serving / taken)
    monkeypatch.setattr(time, 'time', lambda: float(taken))
    second, destination = atomic_pusher.push_atomically(model, str(serving), expected_latest=first)
    assert second == str(int(taken) + 1) and tree_digest(serving / taken) == marker
    assert tree_digest(destination) == tree_digest(model)


def test_the_pusher_does_not_push_when_production_changed_after_the_gate(tmp_path, binary_split, tree_digest):
    """The compare-and-swap through the real executors: gated against version A, the Pusher finds
    B in production (another run pushed meanwhile) and pushes nothing, saying why."""
    from components.reporting import run_summary

    serving = tmp_path / 'serving'
    incumbent = _scoring_model(tmp_path / 'incumbent', shift=-0.1)
    gated, _ = atomic_pusher.push_atomically(path_utils.serving_model_path(incumbent.uri), str(serving))
    candidate = _scoring_model(tmp_path / 'candidate')
    report, blessing, _ = _evaluate(tmp_path, binary_split, candidate, _production(tmp_path, serving), {
        'thresholds': {'recall': 0.5}})
    assert report['blessed'] is True and report['baseline']['version'] == gated
    meanwhile, _ = atomic_pusher.push_atomically(path_utils.serving_model_path(incumbent.uri), str(serving))
    before = tree_digest(serving)
    pushed = _push(tmp_path, candidate, blessing, serving)
    assert pushed.get_int_custom_property('pushed') == 0
    assert pushed.get_string_custom_property(release_keys.GATED_AGAINST) == gated
    assert pushed.get_string_custom_property(release_keys.PRODUCTION_CHANGED_TO) == meanwhile
    assert tree_digest(serving) == before
    assert run_summary.push_result(pushed.mlmd_artifact, report) == (
        run_summary.EXIT_PRODUCTION_CHANGED, f'not pushed: gated against version {gated}, production is now {meanwhile}; '
                                         'run again')
    # A blessing given when nothing was in production: the line says 'none'.
    blessing.set_string_custom_property(release_keys.GATED_AGAINST, '')
    late = _push(tmp_path / 'late', candidate, blessing, serving)
    assert run_summary.push_result(late.mlmd_artifact, report)[1] == \
        f'not pushed: gated against version none, production is now {meanwhile}; run again'
    assert tree_digest(serving) == before
