from components.reporting.run_summary import decision_line

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
