"""The plots of both reports, drawn once with matplotlib as inline SVG (text stays text): the
gate report's (the Evaluator's gate_report.html) and the run report's, which shows the same two
gate plots beside the training curves."""

import io
from typing import Optional

from components.gate import gate_report

# matplotlib's default colour cycle, named so that train/validation pairs share a colour.
COLOURS = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f']
PASSED, FAILED = '#2ca02c', '#d62728'


def pyplot():
    """matplotlib.pyplot on the Agg backend, with the report's style."""
    import matplotlib

    matplotlib.use('Agg')  # no display; also keeps TkAgg and friends from loading
    import matplotlib.pyplot as plt

    plt.rcParams.update({'svg.fonttype': 'none', 'font.size': 9, 'axes.grid': True, 'grid.alpha': 0.3})
    return plt


def svg(figure) -> str:
    """The figure as an inline <svg> element (text stays text), and the figure closed."""
    plt = pyplot()
    buffer = io.StringIO()
    figure.savefig(buffer, format='svg', bbox_inches='tight')
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index('<svg'):]


def pr_plot(report: dict) -> Optional[str]:
    """The candidate's precision-recall curve(s); the decision threshold's point marked (binary)."""
    if not report.get('pr_curves'):
        return None
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(4.2, 4))
    for i, (name, points) in enumerate(sorted(report['pr_curves'].items())):
        points = sorted(points, key=lambda p: p['recall'])
        axis.plot([p['recall'] for p in points], [p['precision'] for p in points],
                  color=COLOURS[i % len(COLOURS)], linewidth=1.5, label=name)
    matrix = report.get('confusion_matrix') or {}
    if 'true_positives' in matrix:
        tp, fp, fn = matrix['true_positives'], matrix['false_positives'], matrix['false_negatives']
        if tp + fn and tp + fp:
            recall, precision = tp / (tp + fn), tp / (tp + fp)
            # The gate's intervals of the two, where it computed them, as error bars on the point.
            intervals = {c['metric']: c['interval'] for c in report.get('checks', [])
                         if c['kind'] == 'floor' and c['slice'] == 'Overall' and c.get('interval')}

            def error(metric: str, value: float):
                interval = intervals.get(metric)
                return None if interval is None else [[value - interval['low']], [interval['high'] - value]]

            axis.errorbar([recall], [precision], xerr=error('recall', recall), yerr=error('precision', precision),
                          fmt='o', color=FAILED, capsize=3,
                          label=f'decision threshold {gate_report.decision_threshold_value(report):.4g}')
    axis.set_xlim(0, 1.02)
    axis.set_ylim(0, 1.02)
    axis.set_xlabel('recall')
    axis.set_ylabel('precision')
    axis.legend(fontsize=7, loc='lower left')
    return svg(figure)


def interval_plot(report: dict) -> Optional[str]:
    """Each floor's value with its interval as an error bar, and the floor as a dashed tick."""
    floors = [c for c in report.get('checks', []) if c['kind'] == 'floor' and c['value'] is not None]
    if not floors:
        return None
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(5, 0.5 + 0.45 * len(floors)))
    for i, check in enumerate(floors):
        interval = check.get('interval')
        colour = PASSED if check['passed'] else FAILED
        error = ([[check['value'] - interval['low']], [interval['high'] - check['value']]] if interval else None)
        axis.errorbar([check['value']], [i], xerr=error, fmt='o', color=colour, capsize=4)
        axis.plot([check['threshold']] * 2, [i - 0.3, i + 0.3], '--', color='#000', linewidth=1)
    axis.set_yticks(range(len(floors)), [c['metric'] + ('' if c['slice'] == 'Overall' else f" on {c['slice']}")
                                         for c in floors])
    axis.set_xlim(0, 1.02)
    axis.set_ylim(-0.6, len(floors) - 0.4)
    axis.set_xlabel(f"on the {report['split']} split")
    return svg(figure)
