"""The gate report's lines."""

from components.gate import gate_report


def test_a_bound_just_under_its_floor_is_never_printed_as_reaching_it():
    check = {'metric': 'precision', 'slice': 'Overall', 'kind': 'floor', 'threshold': 0.7, 'value': 53 / 65,
             'baseline': None, 'passed': False, 'reason': None,
             'interval': {'low': 0.69972, 'high': 0.901, 'confidence': 0.95, 'method': 'clopper_pearson',
                          'k': 53, 'n': 65}}
    assert gate_report.check_line(check) == ('0.8154 [0.700, 0.901], lower bound 0.6997 < floor 0.7 '
                                             '(95% Clopper-Pearson, 53/65)')
