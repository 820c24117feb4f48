"""The gate report, written next to TFMA's evaluation: gate_report.json for machines, gate_report.html
for people (pass/fail table, confusion matrix at the decision threshold, precision-recall curve).

Every number comes from the evaluation artifact (components.gate reads it); nothing is recomputed.
"""

import html
import json
import os
from typing import Optional

import tensorflow_model_analysis as tfma

from components import gate

REPORT_JSON = 'gate_report.json'
REPORT_HTML = 'gate_report.html'


def build_report(evaluation_uri: str, classes: tuple[int, ...], split: str,
                 baseline: Optional[dict], decision_threshold: Optional[dict] = None) -> dict:
    """The report as plain data. `baseline`: where the production model came from, or None.
    `decision_threshold`: the candidate's, as its export recorded it (binary)."""
    metrics = gate.load_metrics(evaluation_uri, classes)
    validation = tfma.load_validation_result(evaluation_uri)
    checks = gate.checks(metrics, validation, gate.load_eval_config(evaluation_uri), classes)
    overall = metrics.get(gate.OVERALL)
    return {
        # TFMA's verdict, the one the Evaluator wrote to the blessing.
        'blessed': bool(validation.validation_ok),
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
        'pr_curves': gate.load_pr_curves(evaluation_uri, classes),
    }


def decision_threshold_value(report: dict) -> Optional[float]:
    """Binary: the threshold the candidate decides at, as its export recorded it (chosen on data, or
    the configured number), else the one TFMA's confusion matrix used. None for multiclass (the
    most probable class is the decision) or when no confusion matrix was computed."""
    matrix = report.get('confusion_matrix') or {}
    if 'true_positives' not in matrix:
        return None
    return (report.get('decision_threshold') or {}).get('value', matrix['threshold'])


def _fmt(value) -> str:
    return '' if value is None else f'{value:.4f}' if isinstance(value, float) else html.escape(str(value))


def _checks_table(checks: list[dict]) -> str:
    rows = ''.join(
        f"<tr class={'pass' if c['passed'] else 'fail'}><td>{html.escape(c['metric'])}</td>"
        f"<td>{html.escape(c['slice'])}</td><td>{'floor' if c['kind'] == 'floor' else 'max drop vs production'}</td>"
        f"<td>{_fmt(c['value'])}</td><td>{c['threshold']:g}</td><td>{_fmt(c['baseline'])}</td>"
        f"<td>{'pass' if c['passed'] else 'FAIL'}{html.escape(' (TFMA: ' + c['reason'] + ')') if c.get('reason') else ''}"
        "</td></tr>" for c in checks)
    return ('<table><tr><th>metric</th><th>slice</th><th>check</th><th>value</th><th>threshold</th>'
            f'<th>production</th><th>result</th></tr>{rows}</table>')


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


def _pr_svg(curves: dict[str, list[dict]], size: int = 320) -> str:
    if not curves:
        return '<p>not computed</p>'
    pad = 40
    scale = size - 2 * pad
    colours = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#8c564b', '#e377c2', '#17becf']
    lines, legend = [], []
    for i, (name, points) in enumerate(sorted(curves.items())):
        xy = ' '.join(f"{pad + p['recall'] * scale:.1f},{size - pad - p['precision'] * scale:.1f}"
                      for p in sorted(points, key=lambda p: p['recall']))
        colour = colours[i % len(colours)]
        lines.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{xy}"/>')
        legend.append(f'<text x="{size - pad - 80}" y="{pad + 14 * i + 10}" fill="{colour}" font-size="11">'
                      f'{html.escape(name)}</text>')
    axes = (f'<rect x="{pad}" y="{pad}" width="{scale}" height="{scale}" fill="none" stroke="#999"/>'
            f'<text x="{size / 2}" y="{size - 8}" text-anchor="middle" font-size="12">recall</text>'
            f'<text x="12" y="{size / 2}" font-size="12" transform="rotate(-90 12 {size / 2})" '
            f'text-anchor="middle">precision</text>'
            f'<text x="{pad}" y="{size - pad + 14}" font-size="10">0</text>'
            f'<text x="{size - pad}" y="{size - pad + 14}" font-size="10" text-anchor="end">1</text>'
            f'<text x="{pad - 4}" y="{pad + 4}" font-size="10" text-anchor="end">1</text>')
    return f'<svg width="{size}" height="{size}" xmlns="http://www.w3.org/2000/svg">{axes}{"".join(lines)}{"".join(legend)}</svg>'


def render_html(report: dict) -> str:
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
<h2>Checks</h2>{_checks_table(report['checks'])}
<h2>Confusion matrix{threshold}</h2>{_matrix_table(matrix)}
<h2>Precision-recall curve</h2>{_pr_svg(report['pr_curves'])}
</body></html>
"""


def write_report(evaluation_uri: str, report: dict) -> str:
    """Writes both files into the evaluation artifact; returns the HTML path."""
    from tfx.dsl.io import fileio

    with fileio.open(os.path.join(evaluation_uri, REPORT_JSON), 'w') as f:
        f.write(json.dumps(report, indent=2))
    path = os.path.join(evaluation_uri, REPORT_HTML)
    with fileio.open(path, 'w') as f:
        f.write(render_html(report))
    return path
