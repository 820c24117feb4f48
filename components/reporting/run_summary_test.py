from components.reporting import run_summary
from components.reporting.run_summary import decision_line
from components.reporting.testdata import recorded as _recorded

CHOSEN = {'value': 0.312, 'target_recall': 0.9, 'target_met': True, 'eval_recall': 21 / 22, 'eval_precision': 0.84,
          'eval_lower_bound': 0.7716, 'confidence': 0.95, 'interval': 'clopper_pearson', 'eval_positives': 22,
          'eval_examples': 122}


def test_decision_line_names_the_lower_bound_and_its_confidence():
    assert decision_line(CHOSEN) == ('decision threshold: 0.3120, chosen on eval for recall >= 0.9 at 95% confidence: '
                                     'eval recall 0.9545 (lower bound 0.772 on 22 positives), precision 0.8400')
    precision = {**CHOSEN, 'target_precision': 0.8, 'confidence': 0.975}
    del precision['target_recall']
    assert decision_line(precision) == ('decision threshold: 0.3120, chosen on eval for precision >= 0.8 at 97.5% '
                                        'confidence: eval recall 0.9545, precision 0.8400 (lower bound 0.772)')


def test_decision_line_of_the_point_rule_and_of_an_unmet_target():
    point = {**CHOSEN, 'confidence': None, 'eval_lower_bound': 21 / 22}
    assert decision_line(point) == ('decision threshold: 0.3120, chosen on eval for recall >= 0.9 (point rule): '
                                    'eval recall 0.9545, precision 0.8400')
    assert decision_line({**point, 'target_met': False}).endswith(
        'precision 0.8400 (target not reached; the best recall there)')
    assert decision_line({**CHOSEN, 'target_met': False}).endswith(
        '(lower bound 0.772 on 22 positives), precision 0.8400 (target not reached; the highest lower bound there)')


# A run's training log and gate report as the embedded default's `make run-local` wrote them, and
# the summary lines it printed from them.
PRINTED = """\
stage head: 10/10 epochs, trainable params 2,113 (frozen 23,632), final lr 3.00e-03, loss 0.4594, val_loss 0.5232, val_recall 0.7843, val_precision 0.4706
stage finetune: 10/12 epochs, trainable params 25,297 (frozen 448), final lr 2.83e-04, loss 0.0909, val_loss 0.2168, val_recall 0.9020, val_precision 0.7077
gate baseline: no model in production yet; only the floors apply
gate recall: 0.8438 [0.731, 0.922], lower bound 0.731 >= floor 0.65 (95% Clopper-Pearson, 54/64) pass (split test)
gate precision: 0.8182 [0.704, 0.902], lower bound 0.704 >= floor 0.65 (95% Clopper-Pearson, 54/66) pass (split test)"""  # noqa: E501


def test_stage_and_gate_lines_of_a_recorded_run_are_the_ones_it_printed():
    lines = run_summary.stage_lines(_recorded('training_log.json')) + run_summary.gate_lines(_recorded('gate_report.json'))
    assert lines == PRINTED.splitlines()


def test_a_failed_floor_and_a_regression_are_named_with_their_numbers():
    report = _recorded('gate_report.json')
    recall = next(c for c in report['checks'] if c['metric'] == 'recall')
    recall.update(threshold=0.75, passed=False)
    regression = {**recall, 'kind': 'max_drop', 'threshold': 0.01, 'baseline': 0.9, 'passed': False,
                  'interval': None, 'comparison': None}
    report.update(checks=[recall, regression], baseline={'version': '17', 'path': 'serving/17'})
    assert run_summary.gate_lines(report) == [
        'gate baseline: model in production serving/17',
        'gate recall: 0.8438 [0.731, 0.922], lower bound 0.731 < floor 0.75 (95% Clopper-Pearson, 54/64) FAIL (split test)',
        'gate recall vs production: 0.8438 vs production 0.9000, max drop 0.01 (point estimate) FAIL (split test)']


def test_an_examples_artifact_s_span_is_its_rolling_window_else_its_one_span():
    from ml_metadata.proto import metadata_store_pb2

    from components.reporting.mlmd_records import examples_span

    one = metadata_store_pb2.Artifact()
    one.custom_properties['span'].int_value = 3
    assert examples_span(one) == 3
    window = metadata_store_pb2.Artifact()
    window.custom_properties['span'].int_value = 3
    window.custom_properties['spans'].string_value = '[2, 3]'
    assert examples_span(window) == '[2, 3]'
    assert examples_span(metadata_store_pb2.Artifact()) is None
