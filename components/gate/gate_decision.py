"""The gate's verdict with its uncertainty: each of TFMA's checks decided again on an interval.

TFMA computes the metrics, the confusion matrices and a point verdict per threshold
(components.gate). With `evaluation.confidence` set, this module decides each check from counts
instead (components.statistics says which interval and why):

* a floor on recall, precision or accuracy passes when the lower end of its interval clears it:
  binary, a binomial interval on TFMA's confusion matrix at the decision threshold; multiclass,
  per class and macro, a bootstrap over the examples the matrix counts (accuracy: binomial);
* a regression limit (max_drop) on recall, precision or accuracy fails only when a paired test on
  both models' predictions for the same examples shows the candidate worse by more than max_drop
  (score_examples; its counts are checked against TFMA's matrices of both models);
* AUC-PR and the macro averages' regression limits keep TFMA's point verdict (no interval here:
  AUC-PR is not a proportion of examples, and the paired tests are per class), marked 'point'.

`confidence: None` keeps every TFMA verdict and marks each check 'point'.
"""

import dataclasses
from typing import Optional, Sequence

import numpy as np

from components.statistics import bootstrap, paired, proportions

POINT, LOWER_BOUND, PAIRED = 'point', 'lower bound', 'paired test'
_PROPORTIONS = ('recall', 'precision', 'accuracy')


@dataclasses.dataclass(frozen=True)
class Predictions:
    """Both models' decisions on the gate split, example by example, in the same order.

    `labels`, `candidate`, `production`: binary 0/1 (label, predicted positive); multiclass the
    class label values (actual, most probable). `slices`: feature -> each example's value as TFMA
    names slices ('' where the example has none)."""

    labels: np.ndarray
    candidate: np.ndarray
    production: np.ndarray
    slices: dict


class InconsistentScores(RuntimeError):
    """The examples scored again do not give TFMA's confusion matrix: the gate refuses to decide."""


def _slice_mask(predictions: Predictions, slice_text: str) -> np.ndarray:
    if slice_text == 'Overall':
        return np.ones(len(predictions.labels), bool)
    feature, value = slice_text.split(':', 1)
    return np.asarray(predictions.slices[feature]) == value


def binary_counts(matrix: dict, metric: str) -> tuple[int, int]:
    """(k, n) of a binary metric from TFMA's confusion matrix at the decision threshold."""
    tp, fp, tn, fn = (int(round(matrix[key])) for key in
                      ('true_positives', 'false_positives', 'true_negatives', 'false_negatives'))
    return {'recall': (tp, tp + fn), 'precision': (tp, tp + fp), 'accuracy': (tp + tn, tp + fp + tn + fn)}[metric]


def matrix_examples(matrix: dict) -> tuple[np.ndarray, np.ndarray]:
    """Multiclass: each example's (actual, predicted) class, expanded from TFMA's counts (the
    matrix holds every pair, so a bootstrap over them is a bootstrap over the examples)."""
    classes = matrix['classes']
    labels, predicted = [], []
    for i, row in enumerate(matrix['counts']):
        for j, count in enumerate(row):
            labels += [classes[i]] * int(round(count))
            predicted += [classes[j]] * int(round(count))
    return np.array(labels, np.int64), np.array(predicted, np.int64)


def _interval_dict(low: float, high: float, confidence: float, method: str, k=None, n=None) -> dict:
    return {'low': low, 'high': high, 'confidence': confidence, 'method': method, 'k': k, 'n': n}


class _Intervals:
    """The interval of each (metric, slice), computed once per slice."""

    def __init__(self, metrics: dict, confidence: float, method: str):
        self._metrics, self._confidence, self._method = metrics, confidence, method
        self._examples: dict = {}    # slice -> (actual, predicted) classes of its examples
        self._bootstraps: dict = {}  # slice -> bootstrap_class_metrics

    def __call__(self, check) -> Optional[dict]:
        entry = self._metrics.get(check.slice)
        matrix = entry.confusion_matrix if entry is not None else None
        metric = check.metric
        if matrix is None or metric.metric not in _PROPORTIONS:
            return None
        if 'counts' not in matrix:
            k, n = binary_counts(matrix, metric.metric)
            return self._binomial(k, n, check)
        if check.slice not in self._examples:
            self._examples[check.slice] = matrix_examples(matrix)
        labels, predicted = self._examples[check.slice]
        if metric.metric == 'accuracy' and not metric.macro:
            return self._binomial(int(np.sum(labels == predicted)), len(labels), check)
        if check.slice not in self._bootstraps:
            self._bootstraps[check.slice] = bootstrap.bootstrap_class_metrics(
                labels, predicted, matrix['classes'], self._confidence)
        name = metric.label if metric.macro else f'{metric.metric}[class {metric.class_label}]'
        found = self._bootstraps[check.slice].get(name)
        if found is None or found.point is None:
            return None
        _agrees(check, found.point)
        return _interval_dict(found.low, found.high, self._confidence, found.method)

    def _binomial(self, k: int, n: int, check) -> Optional[dict]:
        interval = proportions.proportion_interval(k, n, self._confidence, self._method)
        if interval is None:
            return None
        _agrees(check, k / n)
        return _interval_dict(interval.low, interval.high, self._confidence, self._method, k, n)


def _agrees(check, value: float) -> None:
    if check.value is not None and abs(check.value - value) > 1e-6:
        raise InconsistentScores(f'{check.metric.label} on {check.slice}: TFMA computed {check.value:.6f}, its '
                                 f'confusion matrix gives {value:.6f}')


def _paired(check, predictions: Predictions, confidence: float):
    """The paired comparison for a max_drop check, or None where none applies (macro, AUC-PR)."""
    metric = check.metric
    if metric.macro or metric.metric not in _PROPORTIONS:
        return None
    mask = _slice_mask(predictions, check.slice)
    labels, candidate, production = (np.asarray(a)[mask] for a in
                                     (predictions.labels, predictions.candidate, predictions.production))
    name = metric.label
    if metric.metric == 'accuracy':
        return paired.paired_recall(candidate == labels, production == labels, check.threshold,
                                             confidence, metric=name, unit='examples')
    positive = 1 if metric.class_label is None else metric.class_label
    if metric.class_label is not None:  # multiclass: one class against the rest
        candidate, production = candidate == positive, production == positive
    candidate, production, actual = candidate.astype(bool), production.astype(bool), labels == positive
    if metric.metric == 'recall':
        return paired.paired_recall(candidate[actual], production[actual], check.threshold, confidence,
                                             metric=name)
    return paired.paired_precision(actual, candidate, production, check.threshold, confidence, metric=name)


def check_counts(predictions: Predictions, metrics: dict) -> None:
    """Raises InconsistentScores unless both models' predictions give TFMA's overall confusion
    matrices (candidate and, where TFMA kept it, baseline)."""
    overall = metrics.get('Overall')
    if overall is None:
        return
    for model, matrix, predicted in (('candidate', overall.confusion_matrix, predictions.candidate),
                                     ('production', overall.baseline_confusion_matrix, predictions.production)):
        if matrix is None:
            continue
        labels, predicted = np.asarray(predictions.labels), np.asarray(predicted)
        if 'counts' in matrix:
            expected_labels, expected_predicted = matrix_examples(matrix)
            pairs = sorted(zip(labels.tolist(), predicted.tolist()))
            same = pairs == sorted(zip(expected_labels.tolist(), expected_predicted.tolist()))
        else:
            found = {'true_positives': np.sum((labels == 1) & (predicted == 1)),
                     'false_positives': np.sum((labels != 1) & (predicted == 1)),
                     'true_negatives': np.sum((labels != 1) & (predicted != 1)),
                     'false_negatives': np.sum((labels == 1) & (predicted != 1))}
            same = all(int(found[key]) == int(round(matrix[key])) for key in found)
        if not same:
            raise InconsistentScores(f'the {model} model scored again on the gate split does not give the '
                                     'confusion matrix TFMA computed; the paired test cannot run')


def decide(checks: Sequence, metrics: dict, confidence: Optional[float], method: str = proportions.DEFAULT_METHOD,
           predictions: Optional[Predictions] = None) -> list:
    """TFMA's checks (components.gate.tfma_checks.checks) decided again as the module docstring says: each with
    `rule`, and `interval` (floors) or `comparison` (max_drop) where one was computed. Without
    `predictions` (nothing in production), max_drop checks keep TFMA's verdict."""
    if confidence is None:
        return [dataclasses.replace(c, rule=POINT) for c in checks]
    intervals = _Intervals(metrics, confidence, method)
    decided = []
    for check in checks:
        if check.reason:  # TFMA could not compute it ("Metric not found."): it fails as TFMA said
            decided.append(dataclasses.replace(check, rule=POINT))
        elif check.kind == 'floor':
            interval = intervals(check) if check.value is not None else None
            if interval is None:
                decided.append(dataclasses.replace(check, rule=POINT))
            else:
                decided.append(dataclasses.replace(check, rule=LOWER_BOUND, interval=interval,
                                                   passed=interval['low'] >= check.threshold))
        else:
            comparison = _paired(check, predictions, confidence) if predictions is not None else None
            if comparison is None:
                decided.append(dataclasses.replace(check, rule=POINT))
            else:
                decided.append(dataclasses.replace(check, rule=PAIRED, comparison=comparison.as_dict(),
                                                   passed=not comparison.worse))
    return decided
