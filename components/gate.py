"""The release gate: the TFMA EvalConfig that blesses a model, and reading back what TFMA decided."""

import json
from typing import Optional

import tensorflow_model_analysis as tfma

from components import features
from pipeline.config import EvaluationSection

# Gate metrics, by config key: (TFMA metric class, name TFMA reports it under).
GATED_METRICS = {'recall': 'Recall', 'precision': 'Precision'}


def eval_config(evaluation: EvaluationSection) -> tfma.EvalConfig:
    """Recall and precision of the positive class at the decision threshold, with absolute floors.

    Labels come from the model's `transform_features` signature (`label_xf`), so the Evaluator
    applies exactly the training-time label mapping to the raw held-out examples.
    """
    threshold = evaluation.decision_threshold
    gated = [
        tfma.MetricConfig(
            class_name=class_name,
            config=json.dumps({'thresholds': threshold, 'name': key}),
            threshold=tfma.MetricThreshold(value_threshold=tfma.GenericValueThreshold(
                lower_bound={'value': getattr(evaluation.thresholds, key)})))
        for key, class_name in GATED_METRICS.items()
    ]
    informational = [
        tfma.MetricConfig(class_name='ExampleCount'),
        tfma.MetricConfig(class_name='BinaryAccuracy', config=json.dumps({'threshold': threshold, 'name': 'accuracy'})),
        tfma.MetricConfig(class_name='AUCPrecisionRecall', config=json.dumps({'name': 'auc_pr'})),
    ]
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(
            signature_name='serving_default', label_key=features.LABEL_KEY,
            prediction_key=features.PREDICTION_KEY, preprocessing_function_names=['transform_features'])],
        slicing_specs=[tfma.SlicingSpec()],
        metrics_specs=[tfma.MetricsSpec(metrics=gated + informational)])


def overall_metrics(evaluation_uri: str) -> dict[str, float]:
    """The candidate model's metrics on the whole evaluated split, as TFMA computed them."""
    for metrics_for_slice in tfma.load_metrics(evaluation_uri):
        if metrics_for_slice.slice_key.single_slice_keys:
            continue
        values = {}
        for entry in metrics_for_slice.metric_keys_and_values:
            key, value = entry.key, entry.value
            if key.is_diff or key.model_name not in ('', 'candidate'):
                continue
            if value.HasField('double_value'):
                values[key.name] = value.double_value.value
        return values
    return {}


def failed_metrics(evaluation_uri: str) -> set[str]:
    """Names of the metrics TFMA's validation found short of their thresholds."""
    result = tfma.load_validation_result(evaluation_uri)
    return {failure.metric_key.name
            for per_slice in result.metric_validations_per_slice for failure in per_slice.failures}


def gate_results(evaluation: EvaluationSection, evaluation_uri: str) -> list[dict]:
    """One row per gated metric, as TFMA computed and judged it: metric, value, threshold, passed."""
    metrics = overall_metrics(evaluation_uri)
    failed = failed_metrics(evaluation_uri)
    rows = []
    for key in GATED_METRICS:
        value: Optional[float] = metrics.get(key)
        rows.append({'metric': key, 'value': value, 'threshold': getattr(evaluation.thresholds, key),
                     'passed': value is not None and key not in failed})
    return rows
