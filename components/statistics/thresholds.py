"""A decision threshold chosen on the eval split whose recall (or precision) target holds on the
interval's lower bound, not only on the eval split's value."""

from typing import Optional

import numpy as np
from components.statistics.proportions import DEFAULT_METHOD, _check_confidence, _check_method, proportion_bounds


def threshold_cuts(probabilities, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Every distinct cut of the scores, highest first: (thresholds, true positives, predicted
    positives, positives). A threshold lies halfway between two distinct probabilities, so
    `probability > threshold` splits them (the served decision and TFMA predict at >)."""
    p = np.asarray(probabilities, np.float64).reshape(-1)
    positive = np.asarray(labels).reshape(-1) == 1
    order = np.argsort(-p, kind='stable')
    p, positive = p[order], positive[order]
    ends = np.r_[np.nonzero(np.diff(p))[0], len(p) - 1]
    below = np.r_[p[1:], 0.0][ends]
    return (p[ends] + below) / 2, np.cumsum(positive)[ends], ends + 1, int(positive.sum())


def choose_threshold(probabilities, labels, target_recall: Optional[float] = None,
                     target_precision: Optional[float] = None, confidence: Optional[float] = 0.95,
                     method: str = DEFAULT_METHOD) -> dict:
    """The decision threshold for a target on the eval split.

    target_recall: the highest threshold (best precision) at which eval recall's lower bound at
    `confidence` reaches the target. Recall only grows as the threshold falls, so at most one cut
    point separates "true recall below target" from above, and the chosen threshold is below the
    target's true threshold unless the lower bound at a single fixed threshold failed: the chosen
    threshold's true recall misses the target with probability at most (1 - c) / 2, however many
    thresholds were tried. `confidence` None: the point rule (eval recall itself reaches the
    target), which picks the threshold where eval noise flatters recall most.
    target_precision: likewise, the best recall among thresholds whose precision lower bound
    reaches the target (precision is not monotone in the threshold, so this guarantee is weaker).
    When no threshold reaches the target, the one with the highest lower bound (the point value
    with confidence None), and target_met is false. Ties go to the higher threshold."""
    if (target_recall is None) == (target_precision is None):
        raise ValueError('expected exactly one of target_recall, target_precision')
    thresholds, true_positives, predicted, positives = threshold_cuts(probabilities, labels)
    if not positives:
        raise ValueError('the eval split holds no positive example, so no threshold can be chosen '
                         'for a target recall or precision')
    if target_recall is not None:
        target, totals = target_recall, np.full_like(predicted, positives)
    else:
        target, totals = target_precision, predicted
    if confidence is None:
        bound = true_positives / totals
    else:
        _check_confidence(confidence)
        _check_method(method)
        bound = proportion_bounds(true_positives, totals, confidence, method)[0]
    met = bound >= target - 1e-12
    if met.any():
        # Recall: best precision among the cuts that meet the target; precision: best recall.
        score = np.where(met, true_positives / (predicted if target_recall is not None else positives), -1.0)
    else:
        score = bound
    best = int(np.flatnonzero(score == score.max())[0])
    return {'value': float(np.clip(thresholds[best], 1e-6, 1 - 1e-6)), 'target_met': bool(met[best]),
            'eval_recall': float(true_positives[best] / positives), 'eval_precision': float(true_positives[best] / predicted[best]),
            'eval_lower_bound': float(bound[best]), 'confidence': confidence, 'eval_positives': positives,
            'eval_examples': int(predicted[-1])}
