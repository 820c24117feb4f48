"""The gate report, written next to TFMA's evaluation: gate_report.json for machines, gate_report.html
for people (pass/fail table with each check's interval or paired test, the intervals drawn as
error bars, confusion matrix at the decision threshold, precision-recall curve).

The metrics and matrices come from the evaluation artifact (components.gate reads it); the
intervals and paired tests from components.gate.gate_decision.
"""

import dataclasses
import html
import json
import os
from typing import Optional

import tensorflow_model_analysis as tfma

from components.gate import tfma_checks, gate_decision
from components.statistics import paired, proportions
from components.shared.artifact_files import GATE_REPORT_HTML, GATE_REPORT_JSON



@dataclasses.dataclass
class Evaluation:
    """What TFMA wrote: metrics by slice, its validation result, the config it ran with, its checks."""

    metrics: dict
    validation: object
    config: tfma.EvalConfig
    checks: list
    pr_curves: dict


def load_evaluation(evaluation_uri: str, classes: tuple[int, ...] = ()) -> Evaluation:
    metrics = tfma_checks.load_metrics(evaluation_uri, classes)
    validation = tfma.load_validation_result(evaluation_uri)
    config = tfma_checks.load_eval_config(evaluation_uri)
    return Evaluation(metrics, validation, config, tfma_checks.checks(metrics, validation, config, classes),
                      tfma_checks.load_pr_curves(evaluation_uri, classes))


def build_report(evaluation: Evaluation, classes: tuple[int, ...], split: str,
                 baseline: Optional[dict], decision_threshold: Optional[dict] = None,
                 confidence: Optional[float] = None, method: str = 'clopper_pearson',
                 predictions: Optional[gate_decision.Predictions] = None) -> dict:
    """The report as plain data. `evaluation`: load_evaluation's result. `baseline`: where the production model came from, or None. `decision_threshold`: the
    candidate's, as its export recorded it (binary). `confidence`, `method`, `predictions`: as
    gate_decision.decide takes them. `blessed` is the gate's verdict: TFMA's with confidence None,
    else every check decided on its interval or paired test (and no TFMA failure outside them)."""
    metrics, validation = evaluation.metrics, evaluation.validation
    checks = gate_decision.decide(evaluation.checks, metrics, confidence, method, predictions)
    tfma_blessed = bool(validation.validation_ok)
    if confidence is None:
        blessed = tfma_blessed
    else:
        blessed = all(c.passed for c in checks) and not tfma_checks.unchecked_failures(validation, evaluation.checks, classes)
    overall = metrics.get(tfma_checks.OVERALL)
    return {
        'blessed': blessed,
        # TFMA's point verdict on the same thresholds (the blessing when confidence is null).
        'tfma_blessed': tfma_blessed,
        'confidence': confidence,
        'interval_method': method if confidence is not None else None,
        'split': split,
        'task': 'multiclass' if classes else 'binary',
        'baseline': baseline,
        'decision_threshold': decision_threshold,
        'checks': [c.as_dict() for c in checks],
        'metrics': {
            name: {'example_count': entry.example_count,
                   **{model: {m.label: v for m, v in sorted(values.items(), key=lambda kv: kv[0].label)}
                      for model, values in entry.values.items() if values}}
            for name, entry in sorted(metrics.items())},
        'confusion_matrix': overall.confusion_matrix if overall else None,
        'pr_curves': evaluation.pr_curves,
    }


def decision_threshold_value(report: dict) -> Optional[float]:
    """Binary: the threshold the candidate decides at, as its export recorded it (chosen on data, or
    the configured number), else the one TFMA's confusion matrix used. None for multiclass (the
    most probable class is the decision) or when no confusion matrix was computed."""
    matrix = report.get('confusion_matrix') or {}
    if 'true_positives' not in matrix:
        return None
    return (report.get('decision_threshold') or {}).get('value', matrix['threshold'])


_METHOD_NAMES = {'clopper_pearson': 'Clopper-Pearson', 'wilson': 'Wilson'}


def interval_text(check: dict) -> str:
    """'0.8696 [0.737, 0.951]' (with an interval), else the value."""
    interval = check.get('interval') or {}
    return proportions.value_text(check['value'], interval.get('low'), interval.get('high'))


def basis_text(check: dict) -> str:
    """How the check was decided, e.g. '95% Clopper-Pearson, 40/46', 'point estimate'."""
    interval, comparison = check.get('interval'), check.get('comparison')
    if interval:
        counts = f", {interval['k']}/{interval['n']}" if interval.get('n') is not None else ''
        return f"{interval['confidence']:.0%} {_METHOD_NAMES.get(interval['method'], interval['method'])}{counts}"
    if comparison:
        return f"{comparison['method']}, {comparison['confidence']:.0%}"
    return 'point estimate'


def comparison_text(comparison: dict) -> str:
    """The paired test's finding, e.g. 'recall vs production: -0.022, 1 of 46 positives lost, 2
    gained; not worse by more than 0.01 (p = 0.61, exact unconditional score test, 95%)'."""
    fields = {**comparison, 'candidate': tuple(comparison['candidate']), 'production': tuple(comparison['production'])}
    return paired.PairedComparison(**fields).text()


def check_line(check: dict) -> str:
    """One check as the summary prints it (without the slice or verdict)."""
    if check.get('reason'):
        return f"{proportions.value_text(check['value'])}, {check['reason']} (TFMA)"
    if check['kind'] == 'floor':
        interval = check.get('interval')
        if interval:
            sign = '>=' if interval['low'] >= check['threshold'] else '<'
            low = proportions.bound_text(interval['low'], check['threshold'])
            return (f"{interval_text(check)}, lower bound {low} {sign} floor {check['threshold']:g} "
                    f"({basis_text(check)})")
        sign = '>=' if check['value'] is not None and check['value'] >= check['threshold'] else '<'
        return f"{proportions.value_text(check['value'])} {sign} {check['threshold']:g} (point estimate)"
    if check.get('comparison'):
        return comparison_text(check['comparison']).split(': ', 1)[1]
    return (f"{proportions.value_text(check['value'])} vs production {proportions.value_text(check['baseline'])}, max drop {check['threshold']:g} "
            '(point estimate)')


def _fmt(value) -> str:
    return '' if value is None else f'{value:.4f}' if isinstance(value, float) else html.escape(str(value))


def _finding(check: dict) -> str:
    if check.get('comparison'):
        return html.escape(comparison_text(check['comparison']).split(': ', 1)[1])
    if check.get('interval'):
        return html.escape(f"lower bound {check['interval']['low']:.3f} ({basis_text(check)})")
    return 'point estimate'


def _checks_table(checks: list[dict]) -> str:
    rows = ''.join(
        f"<tr class={'pass' if c['passed'] else 'fail'}><td>{html.escape(c['metric'])}</td>"
        f"<td>{html.escape(c['slice'])}</td><td>{'floor' if c['kind'] == 'floor' else 'max drop vs production'}</td>"
        f"<td>{html.escape(interval_text(c))}</td><td>{c['threshold']:g}</td><td>{_fmt(c['baseline'])}</td>"
        f"<td style='text-align:left'>{_finding(c)}</td>"
        f"<td>{'pass' if c['passed'] else 'FAIL'}{html.escape(' (TFMA: ' + c['reason'] + ')') if c.get('reason') else ''}"
        "</td></tr>" for c in checks)
    return ('<table><tr><th>metric</th><th>slice</th><th>check</th><th>value [interval]</th><th>threshold</th>'
            f'<th>production</th><th>decided on</th><th>result</th></tr>{rows}</table>')


def confidence_text(report: dict) -> str:
    """How the report's floors were decided, in one phrase."""
    if report.get('confidence') is None:
        return 'Point estimates: each floor compares the value itself (evaluation.confidence: null)'
    method = _METHOD_NAMES.get(report.get('interval_method'), report.get('interval_method'))
    return (f"Each floor passes when the lower end of its {report['confidence']:.0%} interval clears it "
            f'({method} for binomial proportions, a bootstrap over examples for per-class and macro values); '
            'regression limits are paired tests on the same examples')


def _matrix_table(matrix: Optional[dict]) -> str:
    if not matrix:
        return '<p>not computed</p>'
    if 'counts' not in matrix:
        m = {k: int(v) for k, v in matrix.items() if k != 'threshold'}
        return ('<table><tr><th></th><th>predicted positive</th><th>predicted negative</th></tr>'
                f"<tr><th>actual positive</th><td>{m['true_positives']}</td><td>{m['false_negatives']}</td></tr>"
                f"<tr><th>actual negative</th><td>{m['false_positives']}</td><td>{m['true_negatives']}</td></tr></table>")
    head = ''.join(f'<th>{c}</th>' for c in matrix['classes'])
    body = ''.join(f"<tr><th>{label}</th>{''.join(f'<td>{int(v)}</td>' for v in row)}</tr>"
                   for label, row in zip(matrix['classes'], matrix['counts']))
    return f'<table><tr><th>actual \\ predicted</th>{head}</tr>{body}</table>'


def render_html(report: dict) -> str:
    from components.gate import plots  # matplotlib, for the page only

    verdict = 'BLESSED' if report['blessed'] else 'NOT BLESSED'
    baseline = report['baseline']
    against = (f"compared with the model in production: {html.escape(baseline['path'])}" if baseline
               else 'no model in production yet: only the floors apply')
    matrix = report['confusion_matrix']
    value = decision_threshold_value(report)
    threshold = (f' at decision threshold {value:.4g}' if value is not None
                 else ' (predicted: the most probable class)' if matrix else '')
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Gate report: {verdict}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}} tr.fail td{{background:#fdd}}
tr.pass td{{background:#efe}}</style></head><body>
<h1>Gate report: {verdict}</h1>
<p>Split <b>{html.escape(report['split'])}</b> (not used by training or early stopping); {against}.</p>
<h2>Checks</h2><p>{html.escape(confidence_text(report))}.</p>{_checks_table(report['checks'])}
<h2>Floors and intervals</h2><p>Dot: the value; bar: its interval; dashed: the floor.</p>{plots.interval_plot(report) or '<p>no floor with a value</p>'}
<h2>Confusion matrix{threshold}</h2>{_matrix_table(matrix)}
<h2>Precision-recall curve</h2>{plots.pr_plot(report) or '<p>not computed</p>'}
</body></html>
"""


def write_report(evaluation_uri: str, report: dict) -> str:
    """Writes both files into the evaluation artifact; returns the HTML path."""
    from tfx.dsl.io import fileio

    with fileio.open(os.path.join(evaluation_uri, GATE_REPORT_JSON), 'w') as f:
        f.write(json.dumps(report, indent=2))
    path = os.path.join(evaluation_uri, GATE_REPORT_HTML)
    with fileio.open(path, 'w') as f:
        f.write(render_html(report))
    return path
