"""The percentile bootstrap over examples, for what is not a binomial proportion: the per-class
and macro values of a multiclass decision."""

import dataclasses
import math
from typing import Optional, Sequence

import numpy as np
from components.statistics.proportions import _check_confidence


DEFAULT_RESAMPLES = 10_000


# Resampled example indices held in memory at once (int64): about 16 MB, whatever the split size.
_BOOTSTRAP_BLOCK = 2_000_000


def _resampled_indices(n: int, resamples: int, seed: int):
    """Blocks of resampled example indices, shape (rows, n), `resamples` rows in all: row r is the
    r-th draw of rng.integers(0, n, n) from default_rng(seed), whatever the block size."""
    rng = np.random.default_rng(seed)
    rows = max(1, _BOOTSTRAP_BLOCK // max(n, 1))
    done = 0
    while done < resamples:
        size = min(rows, resamples - done)
        yield rng.integers(0, n, size=(size, n))
        done += size


def _percentile(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """The percentile interval: the (1-c)/2 and (1+c)/2 quantiles of the defined resamples, each a
    value some resample took (numpy's 'inverted_cdf', the inverse of the empirical distribution)."""
    values = values[~np.isnan(values)]
    if not len(values):
        return math.nan, math.nan
    low, high = np.quantile(values, [(1 - confidence) / 2, (1 + confidence) / 2], method='inverted_cdf')
    return float(low), float(high)


@dataclasses.dataclass(frozen=True)
class BootstrapInterval:
    """A percentile bootstrap interval over examples. `undefined`: the resamples where the statistic
    had no denominator (a class absent, or never predicted); they are left out of the percentiles."""

    point: Optional[float]
    low: float
    high: float
    confidence: float
    resamples: int
    undefined: int
    seed: int
    method: str = 'percentile bootstrap'

    def text(self) -> str:
        return 'undefined' if self.point is None else f'{self.point:.4f} [{self.low:.3f}, {self.high:.3f}]'

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _confusion_counts(codes: np.ndarray, indices: np.ndarray, cells: int) -> np.ndarray:
    """(rows, cells) counts of each code among the resampled examples of each row."""
    rows = indices.shape[0]
    flat = codes[indices] + cells * np.arange(rows)[:, None]
    return np.bincount(flat.ravel(), minlength=rows * cells).reshape(rows, cells)


def _class_index(values: np.ndarray, classes: Sequence[int], what: str) -> np.ndarray:
    values = np.asarray(values).reshape(-1)
    position = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(values.tolist()) - set(position))
    if unknown:
        raise ValueError(f'{what}: values {unknown} are not among the classes {list(classes)}')
    return np.array([position[v] for v in values.tolist()], dtype=np.int64)


def _recall_precision(matrices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class recall and precision of (..., K, K) confusion matrices (rows: actual), NaN where
    undefined."""
    correct = np.diagonal(matrices, axis1=-2, axis2=-1).astype(np.float64)
    with np.errstate(invalid='ignore', divide='ignore'):
        return correct / matrices.sum(axis=-1), correct / matrices.sum(axis=-2)


def _macro(recall: np.ndarray) -> np.ndarray:
    """The unweighted mean over classes, NaN when a class's recall is undefined (as TFMA's macro
    average with every class weighted 1)."""
    return recall.mean(axis=-1)


def bootstrap_class_metrics(labels, predicted, classes: Sequence[int], confidence: float = 0.95,
                            resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict[str, BootstrapInterval]:
    """Percentile bootstrap intervals over examples for a multiclass decision: 'macro recall',
    'macro precision' (undefined in a resample where some class is never predicted, as TFMA's
    macro average is NaN there), and
    'recall[class c]' / 'precision[class c]' for each class, from each example's label and predicted
    class (the most probable one). Seeded; the same seed gives the same intervals.

    Tolerance: the ends are quantiles of `resamples` draws from the exact bootstrap distribution, so
    by the Dvoretzky-Kiefer-Wolfowitz inequality their levels lie within
    sqrt(ln(2 / 1e-3) / (2 * resamples)) (0.014 at 10,000 resamples) of (1 -+ c) / 2 except with
    probability 1e-3.
    """
    _check_confidence(confidence)
    classes = list(classes)
    label_index = _class_index(labels, classes, 'labels')
    predicted_index = _class_index(predicted, classes, 'predicted classes')
    if len(label_index) != len(predicted_index):
        raise ValueError(f'{len(label_index)} labels but {len(predicted_index)} predicted classes')
    n, k = len(label_index), len(classes)
    if n == 0:
        raise ValueError('no examples to bootstrap')
    codes = label_index * k + predicted_index
    point = np.bincount(codes, minlength=k * k).reshape(k, k)
    point_recall, point_precision = _recall_precision(point)
    recalls, precisions = [], []
    for indices in _resampled_indices(n, resamples, seed):
        matrices = _confusion_counts(codes, indices, k * k).reshape(-1, k, k)
        recall, precision = _recall_precision(matrices)
        recalls.append(recall)
        precisions.append(precision)
    recall, precision = np.concatenate(recalls), np.concatenate(precisions)

    def interval(point_value: float, values: np.ndarray) -> BootstrapInterval:
        low, high = _percentile(values, confidence)
        return BootstrapInterval(None if math.isnan(point_value) else float(point_value), low, high,
                                 confidence, resamples, int(np.isnan(values).sum()), seed)

    result = {'macro recall': interval(_macro(point_recall), _macro(recall)),
              'macro precision': interval(_macro(point_precision), _macro(precision))}
    for i, label in enumerate(classes):
        result[f'recall[class {label}]'] = interval(point_recall[i], recall[:, i])
        result[f'precision[class {label}]'] = interval(point_precision[i], precision[:, i])
    return result


# The paired comparison with the model in production.
