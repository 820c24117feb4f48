"""The order the test modules start in comes from measured durations (tests/durations.json), and
that file names exactly the test modules there are: a renamed or new module fails here until
`make durations` is run after a full `make test`."""

import json
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _test_modules() -> set[str]:
    found = set()
    for top in ('tests', 'pipeline', 'components', 'tools'):
        for directory, subdirectories, names in os.walk(os.path.join(REPO, top)):
            subdirectories[:] = [d for d in subdirectories if d != '__pycache__']
            found |= {os.path.relpath(os.path.join(directory, n), REPO) for n in names
                      if n.endswith('.py') and (n.startswith('test_') or n.endswith('_test.py'))}
    return found


def test_every_test_module_has_a_measured_duration_and_no_other_path_does():
    with open(os.path.join(REPO, 'tests', 'durations.json')) as f:
        durations = json.load(f)
    assert set(durations) == _test_modules()
    assert all(seconds >= 0 for seconds in durations.values())
