import contextlib
import io
import os
import subprocess

import pytest

# Quiet TensorFlow's C++ logging in tests; set before any test module imports TensorFlow.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def _tree_digest(path) -> str:
    """SHA-256 over every file's relative path and bytes under `path`: equal digests, equal trees."""
    import hashlib

    digest = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            digest.update(os.path.relpath(full, path).encode())
            with open(full, 'rb') as f:
                digest.update(f.read())
    return digest.hexdigest()


@pytest.fixture(scope='session')
def tree_digest():
    """The function that proves a directory (e.g. the served model) byte-for-byte unchanged."""
    return _tree_digest


def _run_cli(*argv: str) -> subprocess.CompletedProcess:
    """`python -m pipeline ARGV`, run in this process: its exit code and what it printed.

    The test session has imported TensorFlow and TFX already, so a run here costs its work, not
    another 20 s of imports. tests/conftest.py's first run goes through a real `python -m pipeline`
    process; the others use this.
    """
    from pipeline import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return subprocess.CompletedProcess(['python', '-m', 'pipeline', *argv], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope='session')
def run_cli():
    """The CLI, called in this process (see _run_cli)."""
    return _run_cli


# The slowest modules (measured with --durations), started first: pytest-xdist hands a worker
# the next group in collection order, so a long group collected last would run alone at the end.
SLOWEST_FIRST = ('pipeline/kfp_launcher_test.py', 'tests/test_crash_resume.py', 'tests/test_overlap.py',
                 'tests/test_end_to_end.py',
                 'tests/test_run_report.py', 'tests/test_retraining.py', 'tests/test_compare.py',
                 'components/trainer_process_test.py')


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the marks
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist's `loadgroup` scheduling, the tests of one module stay on one worker, so
    its module-scoped fixtures run once; modules that read the session's end-to-end run (marked
    `xdist_group('default_run')`) share a worker, so that run happens once too. The slowest
    modules go first (SLOWEST_FIRST); the order within a module stays as written."""
    for item in items:
        if item.get_closest_marker('xdist_group') is None:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))

    def rank(item):
        path = os.path.relpath(str(item.fspath), os.path.dirname(os.path.abspath(__file__)))
        return SLOWEST_FIRST.index(path) if path in SLOWEST_FIRST else len(SLOWEST_FIRST)

    items.sort(key=rank)  # stable

