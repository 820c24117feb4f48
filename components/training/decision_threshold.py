"""The decision threshold chosen on the eval split, and the eval split's summary metrics."""

from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from components.statistics import proportions, thresholds
from components.config import DecisionTarget


def choose_threshold(probabilities: np.ndarray, labels: np.ndarray, target: DecisionTarget,
                     confidence: Optional[float] = 0.95, method: str = proportions.DEFAULT_METHOD) -> dict:
    """The decision threshold for `target` on these (eval split) predictions, by
    thresholds.choose_threshold: for target_recall, the best precision among thresholds whose
    eval recall has a lower bound (two-sided `confidence` interval by `method`) >= target, so the
    threshold's recall on new data misses the target with probability at most (1 - confidence) / 2;
    for target_precision, the best recall among those whose precision lower bound reaches it. When
    none reaches the target, the highest lower bound, and `target_met` is false. `confidence` None:
    the point rule (the eval value itself reaches the target). Ties go to the higher threshold. A
    threshold lies halfway between two distinct probabilities, so `probability > threshold` splits
    them, as the served decision and TFMA predict.

    Returns the target (target_recall or target_precision), 'value', 'target_met', 'eval_recall',
    'eval_precision', 'eval_lower_bound' (of the targeted metric; its value with the point rule),
    'confidence', 'interval' (the method), 'eval_positives' and 'eval_examples'."""
    wanted = target.model_dump(exclude_none=True)
    try:
        chosen = thresholds.choose_threshold(probabilities, labels, **wanted, confidence=confidence,
                                                  method=method)
    except ValueError as error:
        raise ValueError(f'evaluation.decision_threshold: {error}') from error
    return {'value': chosen.pop('value'), **wanted, **chosen, 'interval': method}


def predicted_probabilities(model: keras.Model, data: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    probabilities, labels = [], []
    for inputs, label in data:
        probabilities.append(model(inputs, training=False).numpy())
        labels.append(label.numpy())
    return np.concatenate(probabilities), np.concatenate(labels)


def eval_summary(probabilities: np.ndarray, labels: np.ndarray) -> dict:
    """The model's figures on a split, from its outputs and targets: binary (one sigmoid output)
    {'auc_pr': average precision, 'examples'}; multiclass {'accuracy', 'macro_recall' (classes
    present in `labels`), 'examples'} (scikit-learn)."""
    from sklearn import metrics

    labels = np.asarray(labels).reshape(-1)
    if probabilities.ndim == 1 or probabilities.shape[-1] == 1:
        return {'auc_pr': float(metrics.average_precision_score(labels, probabilities.reshape(-1))),
                'examples': int(len(labels))}
    predicted = np.argmax(probabilities, axis=-1)
    return {'accuracy': float(metrics.accuracy_score(labels, predicted)),
            'macro_recall': float(metrics.recall_score(labels, predicted, labels=np.unique(labels), average='macro')),
            'examples': int(len(labels))}
