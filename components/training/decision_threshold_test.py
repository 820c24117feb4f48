"""The decision threshold the Trainer chooses on the eval split, and the eval summary."""


import numpy as np
import pytest

from components.config import DecisionTarget, validate
from components.statistics import proportions, thresholds
from components.training import decision_threshold


def _brute_force_threshold(p, y, target_recall=None, target_precision=None, confidence=None):
    """Every cut between distinct probabilities, checked one by one with scikit-learn, the targeted
    metric's lower bound from statsmodels' Clopper-Pearson interval (confidence None: the metric
    itself): (threshold, recall, precision, target met)."""
    from sklearn.metrics import precision_score, recall_score
    from statsmodels.stats.proportion import proportion_confint

    def bound(k, n):
        return k / n if confidence is None else proportion_confint(k, n, alpha=1 - confidence, method='beta')[0]

    values = np.unique(p)[::-1]
    cuts = [(a + b) / 2 for a, b in zip(values, np.r_[values[1:], 0.0])]
    rows = []
    for t in cuts:
        caught, predicted = int(np.sum((p > t) & (y == 1))), int(np.sum(p > t))
        low = bound(caught, int(np.sum(y == 1))) if target_recall is not None else bound(caught, predicted)
        rows.append((t, recall_score(y, p > t), precision_score(y, p > t), low))
    target, other = (target_recall, 2) if target_recall is not None else (target_precision, 1)
    feasible = [r for r in rows if r[3] >= target - 1e-12]
    if not feasible:
        t, recall, precision, _ = max(rows, key=lambda r: (r[3], r[0]))
        return t, recall, precision, False
    t, recall, precision, _ = max(feasible, key=lambda r: (r[other], r[0]))
    return t, recall, precision, True


@pytest.mark.parametrize('confidence', [None, 0.95])
@pytest.mark.parametrize('target', [{'target_recall': 0.9}, {'target_recall': 0.5}, {'target_precision': 0.8},
                                    {'target_precision': 0.95}])


def test_decision_threshold_reaches_the_target_with_the_best_other_metric(target, confidence):
    from components.config import DecisionTarget

    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.2).astype(np.int64)
    p = np.clip(0.35 * y + rng.normal(0.3, 0.15, 300), 0.001, 0.999).round(3).astype(np.float32)
    chosen = decision_threshold.choose_threshold(p[:, None], y, validate(target, DecisionTarget), confidence)
    threshold, recall, precision, met = _brute_force_threshold(p.astype(np.float64), y, **target, confidence=confidence)
    assert chosen['value'] == pytest.approx(threshold)
    assert (chosen['eval_recall'], chosen['eval_precision']) == pytest.approx((recall, precision))
    assert chosen['target_met'] is met and chosen['eval_examples'] == 300 and chosen['eval_positives'] == 58
    # Every target is reached on the eval values; precision 0.95 is not with 95% confidence.
    assert met is (confidence is None or target != {'target_precision': 0.95})
    # What the served decision (probability > threshold) gives on the same data.
    served = p > np.float32(chosen['value'])
    assert np.sum(served & (y == 1)) / np.sum(y == 1) == pytest.approx(recall)


def test_decision_threshold_is_the_lower_bound_rule_of_gate_statistics_by_default():
    from components.config import DecisionTarget

    # 20 positives above 12 examples holding 2 more positives.
    p = np.r_[np.linspace(0.99, 0.6, 20), np.linspace(0.55, 0.1, 12)]
    y = np.r_[np.ones(20), 0, 1, np.zeros(5), 1, np.zeros(4)]
    target = DecisionTarget(target_recall=0.8)
    chosen = decision_threshold.choose_threshold(p, y, target)
    same = thresholds.choose_threshold(p, y, target_recall=0.8, confidence=0.95,
                                            method=proportions.CLOPPER_PEARSON)
    assert chosen == {'target_recall': 0.8, **same, 'interval': 'clopper_pearson'}
    # The point rule stops at 18 of 22 caught (0.818); the lower bound needs all 22 (0.846; 21 of 22: 0.772).
    point = decision_threshold.choose_threshold(p, y, target, confidence=None)
    assert point['eval_recall'] == pytest.approx(18 / 22) and point['eval_lower_bound'] == point['eval_recall']
    assert point['target_met'] and point['confidence'] is None
    assert chosen['eval_recall'] == 1.0 and chosen['value'] < point['value']
    assert chosen['target_met'] and chosen['eval_lower_bound'] == pytest.approx(0.025 ** (1 / 22))
    wilson = decision_threshold.choose_threshold(p, y, target, 0.95, 'wilson')
    assert wilson['interval'] == 'wilson' and wilson['eval_lower_bound'] != chosen['eval_lower_bound']


def test_decision_threshold_for_an_unreachable_precision_says_so_and_needs_positives():
    from components.config import DecisionTarget

    y = np.array([1, 0, 1, 0, 0])
    p = np.array([0.9, 0.9, 0.5, 0.4, 0.1])
    for confidence in (None, 0.95):
        chosen = decision_threshold.choose_threshold(p, y, DecisionTarget(target_precision=0.99), confidence)
        # The best precision there is 2/3, cutting below 0.5 (and so is its lower bound).
        assert chosen['target_met'] is False and chosen['eval_precision'] == pytest.approx(2 / 3)
        assert chosen['value'] == pytest.approx(0.45)
    with pytest.raises(ValueError, match='^evaluation.decision_threshold: the eval split holds no positive example'):
        decision_threshold.choose_threshold(p, np.zeros(5), DecisionTarget(target_recall=0.9))


def test_eval_summary_is_average_precision_for_one_output_and_accuracy_with_macro_recall_for_softmax():
    binary = decision_threshold.eval_summary(np.array([[0.9], [0.8], [0.3], [0.1]]), np.array([1, 0, 1, 0]))
    assert binary == {'auc_pr': pytest.approx((1 / 1 + 2 / 3) / 2), 'examples': 4}
    softmax = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    multiclass = decision_threshold.eval_summary(softmax, np.array([0, 1, 1, 2]))
    # Class 1 is right once in two: macro recall (1 + 1/2 + 1) / 3.
    assert multiclass == {'accuracy': 0.75, 'macro_recall': pytest.approx(2.5 / 3), 'examples': 4}


def test_point_rule_is_the_trainers_choice():
    rng = np.random.default_rng(2)
    for _ in range(20):
        labels = rng.random(60) < 0.4
        probabilities = np.round(np.where(labels, rng.beta(4, 2, 60), rng.beta(2, 4, 60)), 2)  # with ties
        for target in ({'target_recall': 0.8}, {'target_precision': 0.7}):
            ours = thresholds.choose_threshold(probabilities, labels, **target, confidence=None)
            theirs = decision_threshold.choose_threshold(probabilities, labels, DecisionTarget(**target), confidence=None)
            assert {k: ours[k] for k in ('value', 'target_met', 'eval_recall', 'eval_precision')} == \
                {k: theirs[k] for k in ('value', 'target_met', 'eval_recall', 'eval_precision')}
