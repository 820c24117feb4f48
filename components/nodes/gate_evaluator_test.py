"""The release gate through the real executors (TFX Evaluator + TFMA, Pusher) on small scoring models
whose predictions are known exactly, so every number TFMA reports can be checked independently."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from tfx.dsl.components.base import base_beam_executor
from tfx.proto import pusher_pb2
from tfx.types import standard_artifacts
from tfx.utils import path_utils, proto_utils

from components.shared import artifact_files
from components.training import export, features
from components.gate import tfma_checks, gate_report
from components.nodes import atomic_pusher, gate_evaluator, production_model
from components.shared import release_keys, serving_layout
from components.config import EvaluationSection, TaskSection, validate


# Binary test split: a score per example (the scoring model's probability), a label, a source.
SCORES = np.array([0.95, 0.9, 0.8, 0.7, 0.62, 0.55, 0.45, 0.3, 0.2, 0.1,
                   0.85, 0.6, 0.4, 0.35, 0.25, 0.15, 0.1, 0.05, 0.05, 0.02])


LABELS = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 0,
                   0, 0, 0, 0, 0, 0, 0, 0, 0, 0])


SOURCES = np.array(['a', 'b'] * 10)


def _write_examples(path, columns: dict) -> standard_artifacts.Examples:
    examples = standard_artifacts.Examples()
    examples.uri = str(path)
    examples.split_names = '["test"]'
    os.makedirs(os.path.join(path, 'Split-test'))
    with tf.io.TFRecordWriter(os.path.join(path, 'Split-test', 'data.tfrecord')) as writer:
        for i in range(len(next(iter(columns.values())))):
            feature = {}
            for name, values in columns.items():
                value = np.atleast_1d(values[i])
                if value.dtype.kind == 'f':
                    feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=value))
                elif value.dtype.kind in 'iu':
                    feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=value))
                else:
                    feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode() for v in value]))
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return examples


def _scoring_model(path, shift: float = 0.0, classes: tuple = (), decision_threshold: float = 0.5,
                   feature: str = 'score') -> standard_artifacts.Model:
    """A SavedModel with the exported model's two signatures and outputs: probabilities = the
    example's `feature` + shift (binary, deciding at `decision_threshold`, recorded as the export
    records it) or the `scores` vector (multiclass: `classes`); transform_features gives the label
    as label_xf."""
    num_classes = len(classes) or 1
    model = standard_artifacts.Model()
    model.uri = str(path)
    spec = {'label': tf.io.FixedLenFeature([], tf.int64)}
    spec[feature if num_classes == 1 else 'scores'] = tf.io.FixedLenFeature([num_classes], tf.float32)

    class Scorer(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def serve(self, serialized):
            parsed = tf.io.parse_example(serialized, spec)
            scores = parsed[feature] + shift if num_classes == 1 else parsed['scores']
            return export.outputs(tf.clip_by_value(scores, 0.0, 1.0), classes, decision_threshold)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def transform_features(self, serialized):
            return {features.LABEL_KEY: tf.io.parse_example(serialized, spec)['label']}

    scorer = Scorer()
    tf.saved_model.save(scorer, path_utils.serving_model_path(model.uri), signatures={
        'serving_default': scorer.serve, 'transform_features': scorer.transform_features})
    if not classes:
        os.makedirs(os.path.join(path_utils.serving_model_path(model.uri), 'assets.extra'), exist_ok=True)
        with open(os.path.join(path_utils.serving_model_path(model.uri), export.DECISION_THRESHOLD_FILE), 'w') as f:
            json.dump({'value': decision_threshold}, f)
    return model


def _production(tmp_path, serving_dir) -> standard_artifacts.Model:
    """What the ProductionModel step outputs for `serving_dir`."""
    output = standard_artifacts.Model()
    output.uri = str(tmp_path / 'production')
    production_model.ProductionModelExecutor().Do({}, {'model': [output]}, {'serving_dir': str(serving_dir)})
    return output


def _evaluate(tmp_path, examples, candidate, baseline, evaluation: dict, task=None, classes=(), run_parameters=None,
              confidence=None):
    """Runs the GateEvaluator executor; `confidence` None (no exec property): TFMA's point verdicts."""
    if confidence is not None:
        run_parameters = {**(run_parameters or {}), 'confidence': confidence, 'interval': 'clopper_pearson'}
    evaluation_section = validate(evaluation, EvaluationSection)
    task = task or TaskSection(positive_class=1)
    evaluation_artifact = standard_artifacts.ModelEvaluation()
    evaluation_artifact.uri = str(tmp_path / 'evaluation')
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = str(tmp_path / 'blessing')
    executor = gate_evaluator.GateEvaluatorExecutor(base_beam_executor.BaseBeamExecutor.Context(beam_pipeline_args=[]))
    executor.Do(
        {'examples': [examples], 'model': [candidate], 'baseline_model': [baseline]},
        {'evaluation': [evaluation_artifact], 'blessing': [blessing]},
        {'eval_config': proto_utils.proto_to_json(tfma_checks.eval_config(task, evaluation_section, classes)),
         'example_splits': '["test"]', 'classes': json.dumps(list(classes)), **(run_parameters or {})})
    with open(os.path.join(evaluation_artifact.uri, artifact_files.GATE_REPORT_JSON)) as f:
        report = json.load(f)
    return report, blessing, evaluation_artifact.uri


def _push(tmp_path, model, blessing, serving_dir) -> standard_artifacts.PushedModel:
    pushed = standard_artifacts.PushedModel()
    pushed.uri = str(tmp_path / 'pushed')
    destination = pusher_pb2.PushDestination(filesystem=pusher_pb2.PushDestination.Filesystem(
        base_directory=str(serving_dir)))
    atomic_pusher.AtomicPusherExecutor().Do({'model': [model], 'model_blessing': [blessing]}, {'pushed_model': [pushed]},
                                      {'push_destination': proto_utils.proto_to_json(destination)})
    return pushed


def _recall_precision(scores, labels, threshold=0.5):
    predicted = scores > threshold
    tp = np.sum(predicted & (labels == 1))
    return tp / np.sum(labels == 1), tp / np.sum(predicted)


def _check(report, metric, kind='floor', slice_name='Overall'):
    [row] = [c for c in report['checks'] if c['metric'] == metric and c['kind'] == kind and c['slice'] == slice_name]
    return row


@pytest.fixture(scope='module')
def binary_split(tmp_path_factory):
    return _write_examples(tmp_path_factory.mktemp('examples'),
                           {'score': SCORES.astype(np.float32), 'label': LABELS, 'source': SOURCES})


@pytest.mark.slow
def test_first_run_has_no_baseline_so_only_the_floors_apply(tmp_path, binary_split):
    candidate = _scoring_model(tmp_path / 'candidate')
    baseline = _production(tmp_path, tmp_path / 'serving')  # nothing pushed yet
    report, blessing, _ = _evaluate(tmp_path, binary_split, candidate, baseline, {
        'thresholds': {'recall': 0.7, 'precision': 0.7}, 'max_drop': {'recall': 0.0}})
    recall, precision = _recall_precision(SCORES, LABELS)
    assert report['baseline'] is None and report['blessed'] is True
    assert blessing.get_int_custom_property('blessed') == 1
    assert blessing.has_custom_property(release_keys.GATED_AGAINST)
    assert blessing.get_string_custom_property(release_keys.GATED_AGAINST) == ''  # nothing in production
    assert {c['kind'] for c in report['checks']} == {'floor'}
    assert _check(report, 'recall')['value'] == pytest.approx(recall, abs=1e-6)
    assert _check(report, 'precision')['value'] == pytest.approx(precision, abs=1e-6)
    # Confusion matrix at the decision threshold, and a PR curve, for the report page.
    assert report['confusion_matrix']['true_positives'] == 6 and report['confusion_matrix']['false_positives'] == 2
    assert report['confusion_matrix']['false_negatives'] == 2 and report['confusion_matrix']['true_negatives'] == 10
    assert len(report['pr_curves']['positive']) > 50


def test_a_model_short_of_a_floor_is_not_blessed_or_pushed_and_each_miss_is_named(tmp_path, binary_split, tree_digest):
    serving = tmp_path / 'serving'
    incumbent = _scoring_model(tmp_path / 'incumbent')
    atomic_pusher.push_atomically(path_utils.serving_model_path(incumbent.uri), str(serving))
    before = tree_digest(serving)
    candidate = _scoring_model(tmp_path / 'candidate')
    report, blessing, _ = _evaluate(tmp_path, binary_split, candidate, _production(tmp_path, serving), {
        'thresholds': {'recall': 0.9, 'precision': 0.9, 'auc_pr': 0.5}})
    assert report['blessed'] is False and blessing.get_int_custom_property('blessed') == 0
    failed = {c['metric'] for c in report['checks'] if not c['passed']}
    assert failed == {'recall', 'precision'}
    assert _check(report, 'recall')['threshold'] == 0.9
    pushed = _push(tmp_path, candidate, blessing, serving)
    assert pushed.get_int_custom_property('pushed') == 0
    assert tree_digest(serving) == before


@pytest.mark.slow
def test_a_regression_beyond_max_drop_is_blocked_though_the_floors_pass(tmp_path, binary_split, tree_digest):
    serving = tmp_path / 'serving'
    incumbent = _scoring_model(tmp_path / 'incumbent')
    atomic_pusher.push_atomically(path_utils.serving_model_path(incumbent.uri), str(serving))
    before = tree_digest(serving)
    worse = _scoring_model(tmp_path / 'worse', shift=-0.1)  # two positives fall below 0.5
    report, blessing, _ = _evaluate(tmp_path, binary_split, worse, _production(tmp_path, serving), {
        'thresholds': {'recall': 0.5, 'precision': 0.5}, 'max_drop': {'recall': 0.05, 'precision': 0.05}})
    assert report['baseline']['path'] == str(serving / serving_layout.latest_version(str(serving)))
    assert all(c['passed'] for c in report['checks'] if c['kind'] == 'floor')
    drop = _check(report, 'recall', 'max_drop')
    assert drop['passed'] is False
    assert drop['value'] == pytest.approx(_recall_precision(SCORES - 0.1, LABELS)[0], abs=1e-6)
    assert drop['baseline'] == pytest.approx(_recall_precision(SCORES, LABELS)[0], abs=1e-6)
    assert report['blessed'] is False
    assert _push(tmp_path, worse, blessing, serving).get_int_custom_property('pushed') == 0
    assert tree_digest(serving) == before


def test_a_better_model_is_blessed_and_replaces_the_one_in_production(tmp_path, binary_split, tree_digest):
    serving = tmp_path / 'serving'
    incumbent = _scoring_model(tmp_path / 'incumbent', shift=-0.1)
    old_version, _ = atomic_pusher.push_atomically(path_utils.serving_model_path(incumbent.uri), str(serving))
    better = _scoring_model(tmp_path / 'better', shift=0.0)
    report, blessing, _ = _evaluate(tmp_path, binary_split, better, _production(tmp_path, serving), {
        'thresholds': {'recall': 0.5}, 'max_drop': {'recall': 0.0, 'precision': 0.1}})  # precision 0.833 -> 0.75
    assert report['blessed'] is True
    assert {c['kind'] for c in report['checks']} == {'floor', 'max_drop'}
    assert blessing.get_string_custom_property(release_keys.GATED_AGAINST) == old_version
    pushed = _push(tmp_path, better, blessing, serving)
    assert pushed.get_int_custom_property('pushed') == 1
    assert pushed.get_string_custom_property(release_keys.GATED_AGAINST) == old_version
    new_version = serving_layout.latest_version(str(serving))
    assert int(new_version) > int(old_version)
    assert pushed.get_string_custom_property('pushed_destination') == str(serving / new_version)
    assert tree_digest(serving / new_version) == tree_digest(path_utils.serving_model_path(better.uri))
    # The next run's baseline is the model just pushed.
    assert _production(tmp_path / 'next', serving).get_string_custom_property('production_version') == new_version
    # Blessed again (say the floors changed), the model in production is not pushed a second time.
    again = _push(tmp_path / 'again', better, blessing, serving)
    assert again.get_int_custom_property('pushed') == 0
    assert again.get_string_custom_property(release_keys.ALREADY_IN_PRODUCTION) == str(serving / new_version)
    assert sorted(os.listdir(serving)) == sorted([old_version, new_version])


@pytest.mark.slow
def test_a_threshold_chosen_on_data_is_applied_per_model_by_the_gate(tmp_path, binary_split):
    """decision_threshold {target_recall: ...}: each model is judged at the threshold it carries."""
    serving = tmp_path / 'serving'
    incumbent = _scoring_model(tmp_path / 'incumbent', decision_threshold=0.6)
    atomic_pusher.push_atomically(path_utils.serving_model_path(incumbent.uri), str(serving))
    candidate = _scoring_model(tmp_path / 'candidate', decision_threshold=0.3)
    report, _, _ = _evaluate(tmp_path, binary_split, candidate, _production(tmp_path, serving), {
        'decision_threshold': {'target_recall': 0.9}, 'thresholds': {'recall': 0.9},
        'max_drop': {'precision': 0.5}})
    recall, precision = _recall_precision(SCORES, LABELS, 0.3)
    baseline_recall, baseline_precision = _recall_precision(SCORES, LABELS, 0.6)
    assert (recall, precision) != (baseline_recall, baseline_precision)  # the thresholds differ on this split
    values = report['metrics']['Overall']
    assert values['candidate']['recall'] == pytest.approx(recall, abs=1e-6)
    assert values['candidate']['precision'] == pytest.approx(precision, abs=1e-6)
    assert values['baseline']['recall'] == pytest.approx(baseline_recall, abs=1e-6)
    assert values['baseline']['precision'] == pytest.approx(baseline_precision, abs=1e-6)
    assert report['decision_threshold'] == {'value': 0.3}
    matrix = report['confusion_matrix']
    assert matrix['true_positives'] == np.sum((SCORES > 0.3) & (LABELS == 1))
    assert matrix['false_positives'] == np.sum((SCORES > 0.3) & (LABELS == 0))
    assert _check(report, 'recall')['passed'] is bool(recall >= 0.9) is False


@pytest.mark.slow
def test_floors_apply_again_on_each_named_slice(tmp_path, binary_split):
    candidate = _scoring_model(tmp_path / 'candidate')
    report, blessing, _ = _evaluate(tmp_path, binary_split, candidate, _production(tmp_path, tmp_path / 'serving'), {
        'thresholds': {'recall': 0.7}, 'slices': [{'feature': 'source'}]})
    by_slice = {c['slice']: c for c in report['checks'] if c['metric'] == 'recall'}
    assert set(by_slice) == {'Overall', 'source:a', 'source:b'}
    for source in ('a', 'b'):
        mask = SOURCES == source
        assert by_slice[f'source:{source}']['value'] == pytest.approx(
            _recall_precision(SCORES[mask], LABELS[mask])[0], abs=1e-6)
    # Positives of source b score 0.9, 0.7, 0.55, 0.3: recall 0.75 passes; a: 0.95, 0.8, 0.62, 0.45: 0.75.
    assert report['blessed'] is True
    strict, _, _ = _evaluate(tmp_path / 'strict', binary_split, candidate, _production(tmp_path, tmp_path / 's'), {
        'thresholds': {'recall': 0.74}, 'slices': [{'feature': 'source', 'values': ['a', 'c']}]})
    assert {(c['slice'], c['passed']) for c in strict['checks']} == {('Overall', True), ('source:a', True),
                                                                     ('source:c', False)}
    assert strict['blessed'] is False


def test_a_floor_given_as_a_run_parameter_replaces_the_configured_one_everywhere(tmp_path, binary_split):
    candidate = _scoring_model(tmp_path / 'candidate')
    evaluation = {'thresholds': {'recall': 0.7, 'precision': 0.7}, 'slices': [{'feature': 'source'}]}
    report, blessing, _ = _evaluate(tmp_path, binary_split, candidate, _production(tmp_path, tmp_path / 'serving'),
                                    evaluation, run_parameters={'recall_floor': 0.9, 'precision_floor': None})
    recall, _ = _recall_precision(SCORES, LABELS)
    assert recall == 0.75
    assert report['blessed'] is False and blessing.get_int_custom_property('blessed') == 0
    recall_checks = [c for c in report['checks'] if c['metric'] == 'recall']
    assert {c['slice'] for c in recall_checks} == {'Overall', 'source:a', 'source:b'}
    assert {c['threshold'] for c in recall_checks} == {0.9}
    assert {c['threshold'] for c in report['checks'] if c['metric'] == 'precision'} == {0.7}
    assert not _check(report, 'recall')['passed'] and _check(report, 'precision')['passed']


def test_a_floor_outside_0_1_from_the_run_form_is_refused_by_name(tmp_path, binary_split):
    with pytest.raises(ValueError, match=r'recall floor = 1.5: expected a number between 0 and 1'):
        _evaluate(tmp_path, binary_split, _scoring_model(tmp_path / 'candidate'),
                  _production(tmp_path, tmp_path / 'serving'), {'thresholds': {'recall': 0.7}},
                  run_parameters={'recall_floor': 1.5})


def test_a_check_tfma_failed_for_another_reason_carries_its_message():
    from tensorflow_model_analysis.proto import validation_result_pb2

    config = tfma_checks.eval_config(TaskSection(positive_class=1), validate({'thresholds': {'recall': 0.5}}, EvaluationSection))
    metrics = {tfma_checks.OVERALL: tfma_checks.SliceMetrics({'candidate': {tfma_checks.MetricId('recall'): 0.9}, 'baseline': {}}, 10, None)}
    validation = validation_result_pb2.ValidationResult()
    failure = validation.metric_validations_per_slice.add().failures.add()
    failure.metric_key.name = 'recall'
    failure.message = 'Metric not found.'
    [check] = tfma_checks.checks(metrics, validation, config)
    assert not check.passed and check.reason == 'Metric not found.'
    from components.reporting import run_summary
    assert run_summary.gate_lines({'baseline': None, 'split': 'test', 'checks': [check.as_dict()]})[-1] == \
        'gate recall: 0.9000, Metric not found. (TFMA) FAIL (split test)'


@pytest.mark.slow
def test_report_page_shows_the_table_the_confusion_matrix_and_the_curve(tmp_path, binary_split):
    candidate = _scoring_model(tmp_path / 'candidate')
    _, _, uri = _evaluate(tmp_path, binary_split, candidate, _production(tmp_path, tmp_path / 'serving'), {
        'thresholds': {'recall': 0.9}})
    with open(os.path.join(uri, artifact_files.GATE_REPORT_HTML)) as f:
        page = f.read()
    assert 'NOT BLESSED' in page and 'no model in production yet' in page
    assert '<tr class=fail><td>recall</td><td>Overall</td><td>floor</td><td>0.7500</td><td>0.9</td>' in page
    assert '<th>actual positive</th><td>6</td><td>2</td>' in page
    # The two plots, drawn by components.gate.plots as the run report draws them: the intervals, the curve.
    assert page.count('<svg') == 2 and '>recall</text>' in page and '>precision</text>' in page


# The gate on intervals (evaluation.confidence) and the paired test against production.


@pytest.mark.slow
def test_a_floor_the_value_clears_but_the_lower_bound_does_not_is_refused_and_serving_is_untouched(
        tmp_path, binary_split, tree_digest):
    from statsmodels.stats.proportion import proportion_confint

    from components.reporting import run_summary

    serving = tmp_path / 'serving'
    incumbent = _scoring_model(tmp_path / 'incumbent', shift=-0.3)
    atomic_pusher.push_atomically(path_utils.serving_model_path(incumbent.uri), str(serving))
    before = tree_digest(serving)
    candidate = _scoring_model(tmp_path / 'candidate')
    evaluation = {'thresholds': {'recall': 0.6, 'precision': 0.6}}  # recall 6/8 and precision 6/8: 0.75
    report, blessing, _ = _evaluate(tmp_path, binary_split, candidate, _production(tmp_path, serving), evaluation,
                                    confidence=0.95)
    recall = _check(report, 'recall')
    assert recall['value'] == 0.75 and recall['rule'] == 'lower bound'
    low, high = proportion_confint(6, 8, alpha=0.05, method='beta')
    assert (recall['interval']['low'], recall['interval']['high']) == pytest.approx((low, high), abs=1e-6)
    assert (recall['interval']['k'], recall['interval']['n']) == (6, 8)
    assert recall['passed'] is False and report['tfma_blessed'] is True and report['blessed'] is False
    assert blessing.get_int_custom_property('blessed') == 0
    assert os.listdir(blessing.uri) == ['NOT_BLESSED']
    lines = run_summary.gate_lines(report)
    assert f'gate recall: 0.7500 [{low:.3f}, {high:.3f}], lower bound {low:.3f} < floor 0.6 ' \
           '(95% Clopper-Pearson, 6/8) FAIL (split test)' in lines
    pushed = _push(tmp_path, candidate, blessing, serving)
    assert pushed.get_int_custom_property('pushed') == 0 and tree_digest(serving) == before
    assert run_summary.push_result(pushed.mlmd_artifact, report)[1].startswith(
        f'not pushed: recall 0.7500 [{low:.3f}, {high:.3f}]: lower bound {low:.3f} < floor 0.6')
    assert 'Floors and intervals' in gate_report.render_html(report)

    # The point rule (confidence null) blesses the same model, as TFMA does.
    point, point_blessing, _ = _evaluate(tmp_path / 'point', binary_split, candidate, _production(tmp_path, serving),
                                         evaluation)
    assert point['blessed'] is True and point_blessing.get_int_custom_property('blessed') == 1
    assert {c['rule'] for c in point['checks']} == {'point'} and point['confidence'] is None
    assert 'gate recall: 0.7500 >= 0.6 (point estimate) pass (split test)' in run_summary.gate_lines(point)
