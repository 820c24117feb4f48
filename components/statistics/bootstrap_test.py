"""The percentile bootstrap over examples."""

import itertools
import math

import numpy as np
import pytest

from components.statistics import bootstrap


def _labels_and_predictions(n: int, seed: int = 3):
    rng = np.random.default_rng(seed)
    labels = rng.choice([2, 5, 7], size=n, p=[0.5, 0.3, 0.2])
    predicted = np.where(rng.random(n) < 0.75, labels, rng.choice([2, 5, 7], size=n))
    return labels, predicted


def _slow_bootstrap(labels, predicted, classes, confidence, resamples, seed):
    """The same resamples, one at a time, counted with plain Python."""
    rng = np.random.default_rng(seed)
    stats_by_name = {'macro recall': [], 'macro precision': []}
    for c in classes:
        stats_by_name[f'recall[class {c}]'] = []
        stats_by_name[f'precision[class {c}]'] = []
    for _ in range(resamples):
        idx = rng.integers(0, len(labels), size=len(labels))
        recalls, precisions = [], []
        for c in classes:
            actual = [i for i in idx if labels[i] == c]
            chosen = [i for i in idx if predicted[i] == c]
            right = sum(1 for i in idx if labels[i] == c and predicted[i] == c)
            recall = right / len(actual) if actual else math.nan
            recalls.append(recall)
            stats_by_name[f'recall[class {c}]'].append(recall)
            precisions.append(right / len(chosen) if chosen else math.nan)
            stats_by_name[f'precision[class {c}]'].append(precisions[-1])
        stats_by_name['macro recall'].append(sum(recalls) / len(recalls))
        stats_by_name['macro precision'].append(sum(precisions) / len(precisions))
    result = {}
    for name, values in stats_by_name.items():
        defined = sorted(v for v in values if not math.isnan(v))
        # inverted_cdf: the smallest value whose empirical CDF reaches the level.
        ends = [defined[max(math.ceil(level * len(defined)) - 1, 0)]
                for level in ((1 - confidence) / 2, (1 + confidence) / 2)]
        result[name] = (ends[0], ends[1], len(values) - len(defined))
    return result


def test_bootstrap_matches_a_slow_loop_with_the_same_seed(monkeypatch):
    labels, predicted = _labels_and_predictions(40)
    classes = (2, 5, 7)
    expected = _slow_bootstrap(labels, predicted, classes, 0.9, 300, seed=11)
    # Small blocks: the resamples must not depend on how many are drawn at once.
    monkeypatch.setattr(bootstrap, '_BOOTSTRAP_BLOCK', 40 * 7)
    result = bootstrap.bootstrap_class_metrics(labels, predicted, classes, confidence=0.9, resamples=300, seed=11)
    assert set(result) == set(expected)
    for name, (low, high, undefined) in expected.items():
        assert (result[name].low, result[name].high, result[name].undefined) == pytest.approx((low, high, undefined),
                                                                                              abs=1e-12), name
    right = labels == predicted
    assert result['recall[class 5]'].point == pytest.approx(np.sum(right & (labels == 5)) / np.sum(labels == 5))
    assert result == bootstrap.bootstrap_class_metrics(labels, predicted, classes, confidence=0.9, resamples=300, seed=11)


def test_bootstrap_within_its_stated_tolerance_of_the_exact_bootstrap_distribution():
    # Five examples: all 5^5 equally likely resamples enumerated give the exact bootstrap distribution.
    labels = np.array([0, 0, 1, 1, 1])
    predicted = np.array([0, 1, 1, 1, 0])
    classes = (0, 1)
    exact = {'macro recall': [], 'macro precision': [], 'recall[class 1]': [], 'precision[class 0]': []}
    for idx in itertools.product(range(5), repeat=5):
        idx = np.array(idx)
        lab, pred = labels[idx], predicted[idx]
        recall = [np.mean(pred[lab == c] == c) if np.any(lab == c) else math.nan for c in classes]
        precision = [np.mean(lab[pred == c] == c) if np.any(pred == c) else math.nan for c in classes]
        exact['macro recall'].append(np.mean(recall))
        exact['macro precision'].append(np.mean(precision))
        exact['recall[class 1]'].append(recall[1])
        exact['precision[class 0]'].append(np.mean(lab[pred == 0] == 0) if np.any(pred == 0) else math.nan)
    resamples, confidence = 20_000, 0.8
    tolerance = math.sqrt(math.log(2 / 1e-3) / (2 * resamples))  # the docstring's DKW bound
    result = bootstrap.bootstrap_class_metrics(labels, predicted, classes, confidence, resamples, seed=5)
    for name, values in exact.items():
        values = np.array(values)
        defined = values[~np.isnan(values)]
        cdf = lambda x: np.mean(defined <= x + 1e-12)  # noqa: E731
        below = lambda x: np.mean(defined < x - 1e-12)  # noqa: E731
        for end, level in ((result[name].low, (1 - confidence) / 2), (result[name].high, (1 + confidence) / 2)):
            # `end` is a quantile at a level within `tolerance` of `level`.
            assert below(end) <= level + tolerance and cdf(end) >= level - tolerance, (name, end, level)
        assert result[name].undefined / resamples == pytest.approx(np.isnan(values).mean(), abs=tolerance)


# The paired comparison.
