"""Pushes at once into one serving directory, as two runs (or a run and a rollback) would make them:
processes pushing the same moment, round after round. No version is ever incomplete or pushed
twice, and every push returns a complete version of its own.

The model is a stand-in SavedModel directory (saved_model.pb and many variable files): a push copies
files and never reads them. The processes are forked from this one, so each push starts at once
(TensorFlow is imported already; a push uses only its file system calls)."""

import multiprocessing
import os

import pytest

from components.nodes import atomic_pusher
from pipeline import registry
from components.config import load_config

ROUNDS, PUSHERS = 20, 4
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fake_saved_model(path, marker: str):
    """A real SavedModel of 40 variable shards of 16 KB (a rollback refuses anything less than a
    complete one): a copy that takes long enough to overlap. `marker` sets its values, so that
    two models differ."""
    import tensorflow as tf

    module = tf.Module()
    module.weights = [tf.Variable(tf.fill([4096], float(sum(map(ord, marker))))) for _ in range(40)]
    tf.saved_model.save(module, str(path), options=tf.saved_model.SaveOptions(
        experimental_sharding_callback=tf.train.experimental.MaxShardSizePolicy(max_shard_size=16384)))
    return str(path)


def _push(barrier, results, index, push):
    barrier.wait()  # every process of the round pushes at the same moment
    try:
        results.put((index, ('pushed', *push())))
    except Exception as error:  # noqa: BLE001 - reported to the test, which fails on it
        results.put((index, ('failed', repr(error))))


def _at_once(*pushes) -> list[tuple]:
    """Runs each push in a forked process, all released at once; their results, in the order given."""
    context = multiprocessing.get_context('fork')
    barrier, results = context.Barrier(len(pushes)), context.Queue()
    processes = [context.Process(target=_push, args=(barrier, results, i, push)) for i, push in enumerate(pushes)]
    for process in processes:
        process.start()
    outcomes = dict(results.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=60)
    return [outcomes[i] for i in range(len(pushes))]


def _version_files(tree_digest, serving) -> dict[str, str]:
    names = os.listdir(serving)
    assert [n for n in names if not n.isdigit()] == []  # no staging directory left behind
    return {name: tree_digest(os.path.join(serving, name)) for name in names}


def test_pushes_at_once_never_meet(tmp_path, tree_digest):
    serving = str(tmp_path / 'serving')
    source = _fake_saved_model(tmp_path / 'model', 'model')
    expected = tree_digest(source)
    pushed = []
    for _ in range(ROUNDS):
        outcomes = _at_once(*[lambda: atomic_pusher.push_atomically(source, serving)] * PUSHERS)
        assert [o for o in outcomes if o[0] != 'pushed'] == []
        pushed += [(version, destination) for _, version, destination in outcomes]
    versions = [version for version, _ in pushed]
    assert len(set(versions)) == ROUNDS * PUSHERS  # no two pushes got one version
    assert all(destination == os.path.join(serving, version) for version, destination in pushed)
    # Every numeric directory is one of the pushes, and complete: the source's files, byte for byte.
    assert _version_files(tree_digest, serving) == {version: expected for version in versions}


def test_a_rollback_and_a_push_at_once_never_meet(tmp_path, tree_digest):
    config = load_config(os.path.join(REPO, 'configs', 'local.yaml'), (f'pipeline.runs_dir={tmp_path}',))
    serving = os.path.join(config.run_dir, 'serving')
    old = _fake_saved_model(tmp_path / 'old', 'old')
    new = _fake_saved_model(tmp_path / 'new', 'new')
    first, _ = atomic_pusher.push_atomically(old, serving)
    atomic_pusher.push_atomically(new, serving)
    rollbacks, pushes = [], []
    for _ in range(5):
        rollback, push = _at_once(lambda: registry.rollback(config, first),
                                  lambda: atomic_pusher.push_atomically(new, serving))
        assert rollback[0] == push[0] == 'pushed', (rollback, push)
        rollbacks.append(rollback[1])
        pushes.append(push[1])
    files = _version_files(tree_digest, serving)
    assert len(files) == 2 + len(rollbacks) + len(pushes)
    assert {files[v] for v in rollbacks} == {tree_digest(old)} and {files[v] for v in pushes} == {tree_digest(new)}
    # Each rollback is recorded as a copy of the version asked for.
    rows = {row['version']: row for row in registry.history(config)}
    assert all(rows[v]['rollback_of'] == first for v in rollbacks)


@pytest.fixture(autouse=True)
def _no_stray_processes():
    yield
    assert multiprocessing.active_children() == []
