"""`history`'s table on recorded rows (testdata/history.json: `history --json` after the embedded
default's first `make run-local`)."""

import json
import os

from pipeline import registry

TESTDATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'testdata')


def _rows() -> list[dict]:
    with open(os.path.join(TESTDATA, 'history.json')) as f:
        return json.load(f)


def test_the_table_has_a_row_per_version_the_one_in_production_starred():
    header, row = registry.table(_rows())
    assert header.split() == ['version', 'pushed', 'at', 'gated', 'against', 'gate', '(value', '[interval],', 'floor)',
                              'span', 'examples', 'started', 'from', 'config', 'run']
    assert row.startswith('* 1796304684  2026-12-03T13:31:24+00:00  none  ')
    assert 'recall 0.8438 [0.731, 0.922] (floor 0.65), precision 0.8182 [0.704, 0.902] (floor 0.65)' in row
    assert row.split()[-2:] == ['2437c50273a3653a', '2026-12-03T13:30:53.803656']


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
