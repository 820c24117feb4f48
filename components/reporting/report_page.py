"""The run report: one self-contained HTML page per run (plots inline as SVG, no network), written
by the RunReport step (components/nodes/run_report.py) on every orchestrator.

Sections: the config used; the data (examples per split and class, from the data gate's pass);
the learning rate at every optimizer step and the training curves, stage boundaries marked (from
training_log.json); the gate (checks, confusion matrix, precision-recall curve, from the
Evaluator's gate_report.json, i.e. from TFMA); lineage (what the model started from, the data
span, the baseline). Plots are drawn with matplotlib, the page with a Jinja2 template.
"""

import datetime
import os
from typing import Optional

import jinja2
import yaml

from components.shared import artifact_files, node_ids, storage
from components.gate import gate_report
from components.shared.artifact_files import LABEL_COUNTS_FILE
from components.shared.artifact_files import TRAINING_LOG
from components.config import Config
from components.config.tuning import short_path
from components.gate.plots import COLOURS, interval_plot, pr_plot, pyplot, svg
from components.reporting import run_summary
from components.reporting.mlmd_records import examples_span
from components.reporting.run_summary import NodeRecord, display_path, output_uri

REPORT_FILE = 'report.html'
_TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'templates')


def _stage_boundaries(axis, starts: list[tuple[str, float]]) -> None:
    for name, start in starts:
        axis.axvline(start, color='#555', linestyle='--', linewidth=0.8)
        axis.annotate(name, (start, 1), xycoords=('data', 'axes fraction'), xytext=(3, -10),
                      textcoords='offset points', fontsize=8, color='#333')


def lr_plot(training_log: dict) -> str:
    """The learning rate at every optimizer step, across all stages."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(8, 2.8))
    offset, starts = 0, []
    for stage in training_log['stages']:
        rates = stage['lr_by_step']
        starts.append((stage['name'], offset))
        axis.plot(range(offset, offset + len(rates)), rates, color=COLOURS[0], linewidth=1.2)
        offset += len(rates)
    _stage_boundaries(axis, starts)
    axis.set_xlabel('optimizer step')
    axis.set_ylabel('learning rate')
    axis.ticklabel_format(axis='y', style='sci', scilimits=(-2, 2))
    return svg(figure)


def tuning_plot(tuning: dict) -> Optional[str]:
    """The search's eval objective against each searched learning rate (log scale), one panel per
    rate: completed trials as dots, pruned ones as crosses at their last reported value, the
    winner as a star. None when no learning rate was searched or no trial table was kept."""
    rows = tuning.get('trial_rows') or []
    rates = [p for p in tuning.get('searched', {}) if p.endswith('.learning_rate')]
    if not rows or not rates:
        return None
    plt = pyplot()
    figure, axes = plt.subplots(1, len(rates), figsize=(3.6 * len(rates), 2.8), squeeze=False)
    winner = tuning['winner']['trial']
    for axis, path in zip(axes[0], rates):
        for state, marker, colour in (('complete', 'o', COLOURS[0]), ('pruned', 'x', COLOURS[3])):
            points = [(r['values'][path], r['value']) for r in rows
                      if r['state'] == state and r['value'] is not None and r['values'].get(path) is not None]
            if points:
                axis.scatter(*zip(*points), marker=marker, color=colour, s=22, label=state)
        trained = next((r for r in rows if r['trial'] == winner), None)
        if trained is not None:
            axis.scatter([trained['values'][path]], [trained['value']], marker='*', s=160, color=COLOURS[2],
                         edgecolors='#222', linewidths=0.6, label=f'trained (trial {winner})', zorder=3)
        axis.set_xscale('log')
        axis.set_xlabel(short_path(path))
        axis.set_ylabel(f"eval {tuning['objective']}")
    axes[0][0].legend(fontsize=7, loc='lower right')
    figure.tight_layout()
    return svg(figure)


# The curves shown, in this order, when training logged them: the loss and what the gate looks at.
_CURVES = ('loss', 'recall', 'precision', 'accuracy')


def curve_names(training_log: dict) -> list[str]:
    """The metrics of _CURVES with a training and a validation value in every epoch; accuracy only
    where neither recall nor precision is there (multiclass)."""
    epochs = [epoch for stage in training_log['stages'] for epoch in stage['epochs']]
    names = [n for n in _CURVES if epochs and all(n in e and f'val_{n}' in e for e in epochs)]
    return [n for n in names if n != 'accuracy' or not {'recall', 'precision'} & set(names)]


def curves_plot(training_log: dict) -> str:
    """Training (dashed) and validation (solid) curves per epoch, one panel for the loss and one for
    the other metrics, stage boundaries marked."""
    plt = pyplot()
    names = curve_names(training_log)
    figure, (loss_axis, metric_axis) = plt.subplots(1, 2, figsize=(10, 3.2))
    offset, starts = 0, []
    for stage in training_log['stages']:
        epochs = stage['epochs']
        starts.append((stage['name'], offset + 0.5))
        x = [offset + e['epoch'] for e in epochs]
        for i, name in enumerate(names):
            axis = loss_axis if name == 'loss' else metric_axis
            colour = COLOURS[i % len(COLOURS)]
            first = stage is training_log['stages'][0]
            axis.plot(x, [e[name] for e in epochs], '--', color=colour, linewidth=1, label=name if first else None)
            axis.plot(x, [e[f'val_{name}'] for e in epochs], '-', color=colour, linewidth=1.5,
                      label=f'val_{name}' if first else None)
        offset += stage['epochs'][-1]['epoch'] if epochs else 0
    for axis, title in ((loss_axis, 'loss'), (metric_axis, 'metrics')):
        _stage_boundaries(axis, starts)
        axis.set_xlabel('epoch (all stages)')
        axis.set_title(title)
        axis.legend(fontsize=7, loc='best')
    return svg(figure)


def _read_json(directory: Optional[str], name: str) -> Optional[dict]:
    """storage.read_json on TFX's file system: a run's outputs may be on object storage."""
    from tfx.dsl.io import fileio

    return storage.read_json(directory, name, fileio.exists, fileio.open)


def lineage(records: dict[str, NodeRecord], training_log: dict, report: dict) -> dict:
    """What the model came from: the starting weights, the data read, the baseline it was gated against."""
    examples = records[node_ids.EXAMPLE_GEN].outputs['examples'][0]
    started = training_log['started_from']
    baseline = report.get('baseline')
    if 'production_path' in started:
        started_from = f"warm start from the model in production {display_path(started['production_path'])}"
    elif 'backbone' in started:
        started_from = f"backbone {display_path(started['backbone'])}"
    else:
        started_from = f"random weights in the architecture of {display_path(started['scratch'])}"
    return {
        'started_from': started_from,
        'data': display_path(records[node_ids.EXAMPLE_GEN].properties.get('input_base', '')),
        'span': examples_span(examples),
        'examples_artifact': display_path(examples.uri),
        'baseline': (f"model in production {display_path(baseline['path'])} (version {baseline['version']})"
                     if baseline else 'none: nothing in production yet, only the floors applied'),
        'model': display_path(output_uri(records, node_ids.TRAINER, 'model')),
    }


def build(config: Config, records: dict[str, NodeRecord], verdict: list[str]) -> Optional[dict]:
    """Everything the page shows, or None when the run did not get as far as the gate."""
    evaluation_uri = output_uri(records, node_ids.EVALUATOR, 'evaluation')
    training_log = _read_json(output_uri(records, node_ids.TRAINER, 'model_run'), TRAINING_LOG)
    report = _read_json(evaluation_uri, artifact_files.GATE_REPORT_JSON)
    if training_log is None or report is None:
        return None
    counts = _read_json(output_uri(records, node_ids.DATA_GATE, 'label_counts'), LABEL_COUNTS_FILE) or {}
    labels = sorted({label for split in counts.values() for label in split}, key=int)
    offset, stage_rows = 0, []
    for stage in training_log['stages']:
        stage_rows.append({**stage, 'first_step': offset, 'last_epoch': stage['epochs'][-1] if stage['epochs'] else {}})
        offset += len(stage['lr_by_step'])
    return {
        'problems': [],
        'title': f'{config.pipeline.name}: {"blessed" if report["blessed"] else "not blessed"}',
        'created': datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z'),
        'verdict': verdict,
        'config_yaml': yaml.safe_dump(config.model_dump(mode='json', exclude_none=True), sort_keys=False),
        'counts': counts,
        'labels': labels,
        'positive_label': str(config.task.positive_class) if config.task.type == 'binary' else None,
        'training_log': training_log,
        'stages': stage_rows,
        'total_steps': offset,
        'curve_names': curve_names(training_log),
        'lr_svg': lr_plot(training_log),
        'tuning': training_log.get('tuning'),
        'tuning_lines': run_summary.tuning_lines(training_log.get('tuning'), run_summary.searched_in_run(config)),
        'tuning_columns': [(p, short_path(p)) for p in (training_log.get('tuning') or {}).get('searched', {})],
        'tuning_svg': tuning_plot(training_log['tuning']) if training_log.get('tuning') else None,
        'curves_svg': curves_plot(training_log),
        'gate': report,
        'gate_rule': gate_report.confidence_text(report),
        'gate_rows': [(check, gate_report.check_line(check)) for check in report['checks']],
        'interval_svg': interval_plot(report),
        'split_notes': run_summary.small_split_notes(config, counts),
        'decision_threshold': gate_report.decision_threshold_value(report),
        'pr_svg': pr_plot(report),
        'lineage': lineage(records, training_log, report),
    }


def render(page: dict) -> str:
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(_TEMPLATES),
                                     autoescape=jinja2.select_autoescape(['html', 'j2']),
                                     undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return environment.get_template('report.html.j2').render(**page)


def stopped(config: Config, problems: list[str]) -> dict:
    """The page of a run that data validation stopped: the problems, one per line, and the config."""
    return {
        'title': f'{config.pipeline.name}: stopped by data validation',
        'created': datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z'),
        'verdict': ['data failed validation; nothing was trained or pushed'],
        'problems': problems,
        'config_yaml': yaml.safe_dump(config.model_dump(mode='json', exclude_none=True), sort_keys=False),
    }


def save(page: str, directory: str) -> str:
    """Writes the page as `directory`/report.html (through a temporary name); returns its path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, REPORT_FILE)
    storage.write_text_atomically(path, page)
    return path
