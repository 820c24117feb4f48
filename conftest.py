import contextlib
import io
import json
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


# Seconds each test module took in a full run (setup, calls and teardown, summed over its tests),
# as the last `make test` measured them (`make durations` writes this file from pytest's cache).
# The slowest groups start first: pytest-xdist hands a worker the next group in collection
# order, so a long group collected last would run alone at the end.
DURATIONS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'tests', 'durations.json')
DURATIONS_CACHE_KEY = 'staged-finetune/durations'


def measured_durations(config=None) -> dict[str, float]:
    """{module path: seconds}: this checkout's last full run (pytest's cache), else DURATIONS_FILE."""
    cache = getattr(config, 'cache', None)  # None with -p no:cacheprovider
    cached = cache.get(DURATIONS_CACHE_KEY, None) if cache is not None else None
    if cached:
        return cached
    with open(DURATIONS_FILE) as f:
        return json.load(f)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the marks
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist's `loadgroup` scheduling, the tests of one module stay on one worker, so
    its module-scoped fixtures run once; modules that read the session's end-to-end run (marked
    `xdist_group('default_run')`) share a worker, so that run happens once too. The groups go in
    order of their measured durations (DURATIONS_FILE), slowest first; the order within a module
    stays as written."""
    for item in items:
        if item.get_closest_marker('xdist_group') is None:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    # Longest group first (pytest-xdist hands out whole groups): each group's seconds are its modules'.
    def group(item):
        return item.get_closest_marker('xdist_group').args[0]

    durations, modules = measured_durations(config), {}
    for item in items:
        modules.setdefault(group(item), set()).add(item.nodeid.split('::')[0])
    seconds = {name: sum(durations.get(path, 0.0) for path in paths) for name, paths in modules.items()}
    items.sort(key=lambda item: -seconds[group(item)])  # stable


_module_seconds: dict[str, float] = {}


def pytest_runtest_logreport(report):
    """Sums each module's seconds (on pytest-xdist's controller, from its workers' reports)."""
    path = report.nodeid.split('::')[0]
    _module_seconds[path] = _module_seconds.get(path, 0.0) + report.duration


def pytest_sessionfinish(session, exitstatus):
    """Keeps a full run's durations in pytest's cache, for the next run's order and `make durations`."""
    if hasattr(session.config, 'workerinput') or getattr(session.config, 'cache', None) is None:
        return
    partial = (session.config.args_source != pytest.Config.ArgsSource.TESTPATHS
               or session.config.option.markexpr or session.config.option.keyword)
    if partial or exitstatus != 0:
        return  # a partial or failed run would leave out or misstate modules
    if _module_seconds:
        session.config.cache.set(DURATIONS_CACHE_KEY, {k: round(v, 1) for k, v in sorted(_module_seconds.items())})
