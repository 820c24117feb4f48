"""The gate against the model in production: the paired test on the same examples, overall and
within each slice, and what it lets through to the Pusher."""


import numpy as np
import pytest
from tfx.utils import path_utils

from components.nodes import atomic_pusher
from components.statistics import paired
from components.nodes.gate_evaluator_test import (LABELS, SCORES, SOURCES, _check, _evaluate, _production, _push,
                                                  _scoring_model, _write_examples, binary_split)  # noqa: F401 (a fixture)


@pytest.fixture(scope='module')
def paired_split(tmp_path_factory):
    """46 positives and 100 negatives. `score`: production's probabilities (41 positives above 0.5,
    one of them at 0.52); `worse`: 8 of the positives at 0.8 moved to 0.3."""
    score = np.array([0.8] * 40 + [0.52] + [0.3] * 5 + [0.7] * 4 + [0.1] * 96, np.float32)
    worse = score.copy()
    worse[:8] = 0.3
    labels = np.array([1] * 46 + [0] * 100)
    return _write_examples(tmp_path_factory.mktemp('paired'), {'score': score, 'worse': worse, 'label': labels})


@pytest.mark.slow
def test_one_example_apart_on_46_positives_is_no_regression_and_a_clearly_worse_model_is(
        tmp_path, paired_split, tree_digest):
    from components.reporting import run_summary

    serving = tmp_path / 'serving'
    atomic_pusher.push_atomically(path_utils.serving_model_path(_scoring_model(tmp_path / 'production').uri), str(serving))
    before = tree_digest(serving)
    evaluation = {'thresholds': {'recall': 0.5, 'precision': 0.5}, 'max_drop': {'recall': 0.01, 'precision': 0.01}}

    # Shifted by -0.03, the positive at 0.52 falls under 0.5: 40 of 46 against production's 41.
    near = _scoring_model(tmp_path / 'near', shift=-0.03)
    report, blessing, _ = _evaluate(tmp_path / 'a', paired_split, near, _production(tmp_path / 'a', serving),
                                    evaluation, confidence=0.95)
    drop = _check(report, 'recall', 'max_drop')
    assert drop['rule'] == 'paired test'
    comparison = drop['comparison']
    assert (comparison['lost'], comparison['gained'], comparison['n']) == (1, 0, 46)
    assert comparison['candidate'] == [40, 46] and comparison['production'] == [41, 46]
    expected = paired.paired_recall([True] * 40 + [False] * 6, [True] * 41 + [False] * 5, 0.01)
    assert comparison['p_value'] == pytest.approx(expected.p_value, abs=1e-9) and not comparison['worse']
    assert drop['passed'] and report['blessed'] is True and blessing.get_int_custom_property('blessed') == 1
    assert report['tfma_blessed'] is False  # the point rule calls -0.022 a regression
    assert any(line.startswith('gate recall vs production: -0.022, 1 of 46 positives lost, 0 gained; not worse by '
                               'more than 0.01 (p = ') and line.endswith('pass (split test)')
               for line in run_summary.gate_lines(report))
    point, _, _ = _evaluate(tmp_path / 'b', paired_split, near, _production(tmp_path / 'b', serving), evaluation)
    assert point['blessed'] is False and _check(point, 'recall', 'max_drop')['passed'] is False

    # 8 positives lost, none gained: worse, though every floor passes on its lower bound.
    worse = _scoring_model(tmp_path / 'worse', feature='worse')
    report, blessing, _ = _evaluate(tmp_path / 'c', paired_split, worse, _production(tmp_path / 'c', serving),
                                    evaluation, confidence=0.95)
    assert all(c['passed'] for c in report['checks'] if c['kind'] == 'floor')
    drop = _check(report, 'recall', 'max_drop')
    assert (drop['comparison']['lost'], drop['comparison']['gained']) == (8, 0)
    assert drop['comparison']['worse'] and not drop['passed'] and report['blessed'] is False
    assert drop['comparison']['drop_low'] > 0.01
    assert _push(tmp_path, worse, blessing, serving).get_int_custom_property('pushed') == 0
    assert tree_digest(serving) == before


@pytest.mark.slow
def test_the_paired_test_runs_again_within_each_slice(tmp_path, binary_split):
    serving = tmp_path / 'serving'
    atomic_pusher.push_atomically(path_utils.serving_model_path(_scoring_model(tmp_path / 'production', shift=-0.1).uri),
                            str(serving))
    report, _, _ = _evaluate(tmp_path, binary_split, _scoring_model(tmp_path / 'candidate'),
                             _production(tmp_path, serving),
                             {'thresholds': {'recall': 0.0}, 'max_drop': {'recall': 0.0}, 'slices': [{'feature': 'source'}]},
                             confidence=0.95)
    drops = {c['slice']: c for c in report['checks'] if c['kind'] == 'max_drop'}
    assert set(drops) == {'Overall', 'source:a', 'source:b'}
    for name, check in drops.items():
        mask = np.ones(len(LABELS), bool) if name == 'Overall' else SOURCES == name.split(':')[1]
        positives = mask & (LABELS == 1)
        candidate, production = SCORES[positives] > 0.5, SCORES[positives] - 0.1 > 0.5
        comparison = check['comparison']
        assert check['rule'] == 'paired test' and comparison['n'] == positives.sum()
        assert (comparison['lost'], comparison['gained']) == (int(np.sum(production & ~candidate)),
                                                              int(np.sum(candidate & ~production)))
        assert check['passed']  # the candidate gained positives: not worse
