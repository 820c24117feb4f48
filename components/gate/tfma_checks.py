"""The release gate: the TFMA EvalConfig that blesses a model, and reading back what TFMA decided.

TFMA computes every number and a point verdict per threshold (value thresholds for the floors,
change thresholds against the baseline for the regression limits); this module declares them and
reads them back. components.gate.gate_decision decides each check again on its interval when
`evaluation.confidence` is set; with confidence null TFMA's verdicts are the gate's.
"""

import dataclasses
import json
import math
from typing import Optional

import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.slicer import slicer_lib

from components.training import features
from components.config import GATE_METRICS, EvaluationSection, Floors, MaxDrop, TaskSection

# TFMA metric class per gate metric (binary, and per class after binarization).
_METRIC_CLASSES = {'recall': 'Recall', 'precision': 'Precision', 'auc_pr': 'AUCPrecisionRecall',
                   'accuracy': 'BinaryAccuracy'}
# Name of the confusion-matrix metric at the decision threshold, and of the PR-curve plot.
CONFUSION_MATRIX = 'confusion_matrix'
PR_CURVE = 'pr_curve'
OVERALL = 'Overall'
# multiclass: the threshold on top_class_scores at which "predicted" means "most probable".
MULTICLASS_THRESHOLD = 0.0


def _threshold(floor: Optional[float], max_drop: Optional[float]) -> Optional[tfma.MetricThreshold]:
    threshold = tfma.MetricThreshold()
    if floor is not None:
        threshold.value_threshold.lower_bound.value = floor
    if max_drop is not None:
        # TFMA's diff is candidate - baseline; it must not fall below -max_drop.
        threshold.change_threshold.direction = tfma.MetricDirection.HIGHER_IS_BETTER
        threshold.change_threshold.absolute.value = -max_drop
    return threshold if threshold.ByteSize() else None


def _slicing_specs(evaluation: EvaluationSection) -> list[tfma.SlicingSpec]:
    specs = []
    for s in evaluation.slices:
        if s.values is None:
            specs.append(tfma.SlicingSpec(feature_keys=[s.feature]))
        else:
            specs += [tfma.SlicingSpec(feature_values={s.feature: str(v)}) for v in s.values]
    return specs


def _metric(metric: str, kwargs: dict, floor: Optional[float], max_drop: Optional[float],
            slices: list[tfma.SlicingSpec], class_name: Optional[str] = None) -> tfma.MetricConfig:
    config = tfma.MetricConfig(class_name=class_name or _METRIC_CLASSES[metric],
                               config=json.dumps({**kwargs, 'name': metric}))
    threshold = _threshold(floor, max_drop)
    if threshold is not None:
        config.threshold.CopyFrom(threshold)
        if slices:
            config.per_slice_thresholds.append(tfma.PerSliceMetricThreshold(slicing_specs=slices, threshold=threshold))
    return config


def _gated_metrics(floors: Floors, max_drop: MaxDrop, decision_threshold: float, slices,
                   metrics=GATE_METRICS) -> list[tfma.MetricConfig]:
    kwargs = {'recall': {'thresholds': decision_threshold}, 'precision': {'thresholds': decision_threshold},
              'accuracy': {'threshold': decision_threshold}, 'auc_pr': {}}
    return [_metric(m, kwargs[m], getattr(floors, m), getattr(max_drop, m, None), slices) for m in metrics]


def eval_config(task: TaskSection, evaluation: EvaluationSection, classes: tuple[int, ...] = ()) -> tfma.EvalConfig:
    """The gate as a TFMA EvalConfig.

    binary: recall, precision and accuracy of the positive class at the decision threshold, and
    AUC-PR, with the configured floors and regression limits. A threshold chosen on data
    (decision_threshold: {target_recall: ...}) is the model's own: TFMA reads the served
    `gate_scores`, on which each model's threshold is 0.5.
    multiclass (the model outputs one probability per class, in the order of `classes`): the
    decision is the most probable class, as Keras' accuracy and scikit-learn's
    classification_report count it. TFMA reads the served `top_class_scores` (each class's
    probability where it is the most probable, 0 elsewhere), so per class (TFMA binarization),
    "predicted" at threshold 0 is exactly "most probable": recall and precision there with
    `class_thresholds`, their macro averages with `thresholds`, and accuracy (top-1 precision). A
    class's AUC-PR and curve are of the same decision with a confidence cut: predicted when it is
    the most probable and its probability exceeds the threshold.

    Labels come from the model's `transform_features` signature (`label_xf`), so the Evaluator
    applies exactly the training-time label mapping to the raw held-out examples. Floors apply
    again within every configured slice. The baseline model spec is added by the Evaluator when a
    model is in production (change thresholds are dropped otherwise).
    """
    slices = _slicing_specs(evaluation)
    curve = tfma.MetricConfig(class_name='ConfusionMatrixPlot', config=json.dumps({'num_thresholds': 100, 'name': PR_CURVE}))
    if task.type == 'binary':
        if evaluation.decision_target is None:
            threshold, prediction_key = evaluation.decision_threshold, features.PREDICTION_KEY
        else:
            # The threshold each model chose on its eval split sits at 0.5 of its gate scores, so
            # candidate and baseline are each judged at their own threshold.
            threshold, prediction_key = 0.5, features.GATE_SCORES_KEY
        matrix = tfma.MetricConfig(class_name='ConfusionMatrixAtThresholds',
                                   config=json.dumps({'thresholds': [threshold], 'name': CONFUSION_MATRIX}))
        metrics_specs = [tfma.MetricsSpec(metrics=[tfma.MetricConfig(class_name='ExampleCount'), matrix, curve]
                                          + _gated_metrics(evaluation.thresholds, evaluation.max_drop, threshold, slices))]
    else:
        threshold = MULTICLASS_THRESHOLD
        prediction_key = features.TOP_CLASS_SCORES_KEY
        matrix = tfma.MetricConfig(class_name='MultiClassConfusionMatrixAtThresholds',
                                   config=json.dumps({'thresholds': [threshold], 'name': CONFUSION_MATRIX}))
        # Accuracy is precision on the top-1 sub-key: every example has exactly one top-1 prediction,
        # so TP / (TP + FP) = correct / examples. The top_k comes from the spec's binarization, not
        # the metric's own top_k, because TFMA keys thresholds by the spec's sub-keys only: a
        # threshold on a metric-level top_k is never matched ("Metric not found").
        accuracy = _metric('accuracy', {}, evaluation.thresholds.accuracy, evaluation.max_drop.accuracy,
                           slices, class_name='Precision')
        metrics_specs = [tfma.MetricsSpec(metrics=[tfma.MetricConfig(class_name='ExampleCount'), matrix]),
                         tfma.MetricsSpec(binarize=tfma.BinarizationOptions(top_k_list={'values': [1]}),
                                          metrics=[accuracy])]
        per_class = ('recall', 'precision', 'auc_pr')
        for index, label in enumerate(classes):
            floors = evaluation.class_thresholds.get(label, Floors())
            metrics_specs.append(tfma.MetricsSpec(
                binarize=tfma.BinarizationOptions(class_ids={'values': [index]}),
                metrics=_gated_metrics(floors, evaluation.max_drop, threshold, slices, per_class) + [curve]))
        metrics_specs.append(tfma.MetricsSpec(
            aggregate=tfma.AggregationOptions(macro_average=True, class_weights={i: 1.0 for i in range(len(classes))}),
            metrics=_gated_metrics(evaluation.thresholds, evaluation.max_drop, threshold, slices, per_class)))
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(
            signature_name='serving_default', label_key=features.LABEL_KEY,
            prediction_key=prediction_key, preprocessing_function_names=['transform_features'])],
        slicing_specs=[tfma.SlicingSpec()] + slices,
        metrics_specs=metrics_specs)


def with_floors(config: tfma.EvalConfig, floors: dict[str, float]) -> tfma.EvalConfig:
    """A copy of `config` with the floors of the named gate metrics set to new values (overall and
    in every slice; per-class floors of a multiclass gate stay as they are). This is how run
    parameters (e.g. a recall floor typed into the Kubeflow run form) reach TFMA."""
    for metric, floor in floors.items():
        if metric not in GATE_METRICS or not 0.0 <= floor <= 1.0:
            raise ValueError(f'{metric} floor = {floor!r}: expected a number between 0 and 1 '
                             f'for one of {", ".join(GATE_METRICS)}')
    config = tfma.EvalConfig.FromString(config.SerializeToString())
    for spec in config.metrics_specs:
        if spec.HasField('binarize'):
            continue
        for metric_config in spec.metrics:
            name = json.loads(metric_config.config or '{}').get('name')
            if name not in floors:
                continue
            thresholds = [metric_config.threshold] + [s.threshold for s in metric_config.per_slice_thresholds]
            for threshold in thresholds:
                threshold.value_threshold.lower_bound.value = floors[name]
    return config


@dataclasses.dataclass(frozen=True)
class MetricId:
    """Which number: a gate metric, for a class (multiclass), or their macro average."""

    metric: str
    class_label: Optional[int] = None
    macro: bool = False

    @property
    def label(self) -> str:
        if self.macro:
            return f'macro {self.metric}'
        return self.metric if self.class_label is None else f'{self.metric}[class {self.class_label}]'


def metric_id(key, classes: tuple[int, ...]) -> Optional[MetricId]:
    """The MetricId of a TFMA MetricKey proto; None for metrics that are not gate metrics."""
    if key.name not in GATE_METRICS:
        return None
    if key.aggregation_type.macro_average:
        return MetricId(key.name, macro=True)
    if key.sub_key.HasField('class_id'):
        return MetricId(key.name, class_label=classes[key.sub_key.class_id.value])
    return MetricId(key.name)


def slice_name(slice_key_proto) -> str:
    """'Overall', or 'feature:value' for a slice TFMA computed."""
    return slicer_lib.stringify_slice_key(slicer_lib.deserialize_slice_key(slice_key_proto))


def _model(key) -> str:
    return 'baseline' if key.model_name == tfma.BASELINE_KEY else 'candidate'


@dataclasses.dataclass
class SliceMetrics:
    """Everything TFMA computed on one slice, by model (candidate, baseline) and metric."""

    values: dict[str, dict[MetricId, float]]
    example_count: Optional[float]
    confusion_matrix: Optional[dict]
    # The baseline's, at the same threshold (for the paired test's cross-check).
    baseline_confusion_matrix: Optional[dict] = None


def _confusion_matrix(value, classes: tuple[int, ...]) -> Optional[dict]:
    if value.HasField('confusion_matrix_at_thresholds') and value.confusion_matrix_at_thresholds.matrices:
        m = value.confusion_matrix_at_thresholds.matrices[0]
        return {'threshold': m.threshold, 'true_positives': m.true_positives, 'false_positives': m.false_positives,
                'true_negatives': m.true_negatives, 'false_negatives': m.false_negatives}
    if value.HasField('multi_class_confusion_matrix_at_thresholds'):
        m = value.multi_class_confusion_matrix_at_thresholds.matrices[0]
        # Rows: actual class; columns: predicted class (the most probable one), in `classes` order.
        counts = [[0.0] * len(classes) for _ in classes]
        for entry in m.entries:
            counts[entry.actual_class_id][entry.predicted_class_id] = entry.num_weighted_examples
        return {'threshold': m.threshold, 'classes': list(classes), 'counts': counts}
    return None


def load_metrics(evaluation_uri: str, classes: tuple[int, ...] = ()) -> dict[str, SliceMetrics]:
    """Slice name -> what TFMA wrote to the evaluation artifact."""
    result = {}
    for metrics_for_slice in tfma.load_metrics(evaluation_uri):
        entry = SliceMetrics({'candidate': {}, 'baseline': {}}, None, None)
        for item in metrics_for_slice.metric_keys_and_values:
            key, value = item.key, item.value
            if key.name == 'example_count' and not key.is_diff and _model(key) == 'candidate':
                entry.example_count = value.double_value.value
            if key.name == CONFUSION_MATRIX and not key.is_diff:
                if _model(key) == 'candidate':
                    entry.confusion_matrix = _confusion_matrix(value, classes)
                else:
                    entry.baseline_confusion_matrix = _confusion_matrix(value, classes)
            which = metric_id(key, classes)
            # Diffs (candidate - baseline) are not kept: checks report both values, and TFMA's verdict.
            if which is None or key.is_diff or not value.HasField('double_value'):
                continue
            number = value.double_value.value
            # NaN: undefined on this slice (no positives, or nothing predicted positive); TFMA fails it.
            entry.values[_model(key)][which] = None if math.isnan(number) else number
        result[slice_name(metrics_for_slice.slice_key)] = entry
    return result


def load_pr_curves(evaluation_uri: str, classes: tuple[int, ...] = ()) -> dict[str, list[dict]]:
    """Candidate's precision-recall curve(s) on the whole split: 'positive' (binary) or 'class <label>'."""
    curves = {}
    for plots_for_slice in tfma.load_plots(evaluation_uri):
        if slice_name(plots_for_slice.slice_key) != OVERALL:
            continue
        for item in plots_for_slice.plot_keys_and_values:
            if item.key.name != PR_CURVE or _model(item.key) != 'candidate':
                continue
            name = (f'class {classes[item.key.sub_key.class_id.value]}'
                    if item.key.sub_key.HasField('class_id') else 'positive')
            curves[name] = [{'threshold': m.threshold, 'recall': m.recall, 'precision': m.precision}
                            for m in item.value.confusion_matrix_at_thresholds.matrices]
    return curves


@dataclasses.dataclass(frozen=True)
class Check:
    """One threshold TFMA checked: a floor (value >= threshold) or a regression limit
    (candidate - baseline >= -threshold)."""

    metric: MetricId
    slice: str
    kind: str  # 'floor' or 'max_drop'
    threshold: float
    value: Optional[float]
    baseline: Optional[float]
    passed: bool
    # TFMA's own message when the check failed for another reason than the value (e.g. "Metric not
    # found."); None otherwise.
    reason: Optional[str] = None
    # How `passed` was decided (components.gate.gate_decision): 'point' (TFMA's verdict on the value),
    # 'lower bound' (the interval's low end against the floor) or 'paired test' (max_drop).
    rule: str = 'point'
    # Floors decided on the lower bound: {low, high, confidence, method, k, n (binomial only)}.
    interval: Optional[dict] = None
    # max_drop decided by the paired test: gate_statistics.PairedComparison.as_dict().
    comparison: Optional[dict] = None

    def as_dict(self) -> dict:
        return {'metric': self.metric.label, 'slice': self.slice, 'kind': self.kind, 'threshold': self.threshold,
                'value': self.value, 'baseline': self.baseline, 'passed': self.passed, 'reason': self.reason,
                'rule': self.rule, 'interval': self.interval, 'comparison': self.comparison}


def _thresholds(eval_config_proto, classes) -> list[tuple[MetricId, Optional[str], str, float]]:
    """(metric, slice spec or None for overall, kind, threshold) for every threshold in the config."""
    found = []
    for spec in eval_config_proto.metrics_specs:
        class_label = classes[spec.binarize.class_ids.values[0]] if spec.binarize.class_ids.values else None
        macro = spec.aggregate.macro_average
        for metric in spec.metrics:
            name = json.loads(metric.config or '{}').get('name')
            if name not in GATE_METRICS:
                continue
            which = MetricId(name, class_label=class_label, macro=macro)
            entries = [(None, metric.threshold)] + [(s, t.threshold) for t in metric.per_slice_thresholds for s in t.slicing_specs]
            for slicing_spec, threshold in entries:
                if threshold.HasField('value_threshold'):
                    found.append((which, slicing_spec, 'floor', threshold.value_threshold.lower_bound.value))
                if threshold.HasField('change_threshold'):
                    found.append((which, slicing_spec, 'max_drop', -threshold.change_threshold.absolute.value))
    return found


def _matches(slice_text: str, slicing_spec) -> bool:
    """Whether a computed slice ('Overall' or 'feature:value'; slices are single-feature) is one the
    spec asks for (None: the overall slice)."""
    if slicing_spec is None:
        return slice_text == OVERALL
    if slice_text == OVERALL:
        return False
    feature, value = slice_text.split(':', 1)
    if slicing_spec.feature_values:
        return dict(slicing_spec.feature_values) == {feature: value}
    return list(slicing_spec.feature_keys) == [feature]


def _failures(validation, classes) -> dict:
    """(metric, slice, is_diff) -> TFMA's message ('' when the value missed the threshold)."""
    failed = {}
    for per_slice in validation.metric_validations_per_slice:
        for failure in per_slice.failures:
            which = metric_id(failure.metric_key, classes)
            failed[(which, slice_name(per_slice.slice_key), failure.metric_key.is_diff)] = ' '.join(failure.message.split())
    return failed


def unchecked_failures(validation, checks_found: list[Check], classes: tuple[int, ...] = ()) -> list[str]:
    """TFMA's failures that no check stands for (e.g. a metric that is not a gate metric); each
    blocks the blessing whatever the checks decide."""
    covered = {(c.metric, c.slice, c.kind == 'max_drop') for c in checks_found}
    return [f'{which.label if which else "a metric"} on {slice_text}: {message or "missed its threshold"}'
            for (which, slice_text, is_diff), message in _failures(validation, classes).items()
            if (which, slice_text, is_diff) not in covered]


def checks(metrics: dict[str, SliceMetrics], validation, eval_config_proto,
           classes: tuple[int, ...] = ()) -> list[Check]:
    """Every threshold of the gate, on every slice it applies to, with TFMA's verdict.

    `metrics` is load_metrics' result and `validation` TFMA's ValidationResult for the same
    evaluation; `eval_config_proto` is the config TFMA ran with (load_eval_config): without a
    baseline its change thresholds were dropped, so no regression check appears.
    """
    failed = _failures(validation, classes)
    result = []
    for which, slicing_spec, kind, threshold in _thresholds(eval_config_proto, classes):
        matched = [(text, entry) for text, entry in sorted(metrics.items()) if _matches(text, slicing_spec)]
        for slice_text, entry in matched:
            value = entry.values['candidate'].get(which)
            baseline = entry.values['baseline'].get(which)
            message = failed.get((which, slice_text, kind == 'max_drop'))
            passed = message is None and value is not None
            result.append(Check(which, slice_text, kind, threshold, value, baseline, passed, message or None))
        if not matched and slicing_spec is not None and slicing_spec.feature_values:
            # A named slice with no examples in the split: TFMA reports it missing; the gate fails.
            text = ', '.join(f'{k}:{v}' for k, v in sorted(slicing_spec.feature_values.items()))
            result.append(Check(which, text, kind, threshold, None, None, False))
    return result


def load_eval_config(evaluation_uri: str) -> tfma.EvalConfig:
    """The EvalConfig TFMA actually ran with (baseline added or change thresholds dropped)."""
    from tensorflow_model_analysis.writers import eval_config_writer

    return eval_config_writer.load_eval_run(evaluation_uri)[0]
