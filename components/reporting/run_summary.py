"""What a run did, read back from ML Metadata: node states, their outputs, the summary."""

import dataclasses
import json
import os
from typing import Optional

from components.shared import artifact_files, node_ids
from components.gate import gate_report
from components.statistics import proportions
from components.shared import release_keys
from components.shared import data_checks, storage
from components.shared.artifact_files import LABEL_COUNTS_FILE
from components.shared.artifact_files import TRAINING_LOG
from components.config import Config
from components.config.tuning import values_text
# Re-exported: callers read runs through this module (components.reporting.mlmd_records holds the ML Metadata part).
from components.reporting.mlmd_records import (NodeRecord, custom_value, display_path, latest_run, latest_run_id,
                                               output_uri, run_by_id, training_logs_dir)

# The exit codes of a run's outcome (shared.exit_codes), re-exported for the callers of summarize.
from components.shared.exit_codes import (EXIT_BAD_DATA, EXIT_FAILED, EXIT_NOT_BLESSED,  # noqa: F401,E402
                                          EXIT_PRODUCTION_CHANGED, EXIT_PUSHED)


@dataclasses.dataclass
class Outcome:
    """How the run ended (a CLI exit code) and the summary lines to print."""

    exit_code: int
    lines: list[str]


def _format_metrics(epoch: dict) -> str:
    keys = [k for k in ('loss', 'val_loss', 'val_recall', 'val_precision') if k in epoch]
    if 'val_recall' not in epoch and 'val_accuracy' in epoch:  # multiclass
        keys.append('val_accuracy')
    return ', '.join(f'{k} {epoch[k]:.4f}' for k in keys)


def stage_lines(training_log: dict) -> list[str]:
    """One line per stage: epochs run, final learning rate, last epoch's metrics."""
    lines = []
    for stage in training_log['stages']:
        last = stage['epochs'][-1]
        lines.append(
            f"stage {stage['name']}: {stage['epochs_run']}/{stage['epochs_planned']} epochs, "
            f"trainable params {stage['trainable_params']:,} (frozen {stage['non_trainable_params']:,}), "
            f"final lr {stage['lr_by_step'][-1]:.2e}, {_format_metrics(last)}")
    return lines


def data_anomalies(records: dict[str, NodeRecord]) -> list[str]:
    """The anomalies ExampleValidator reported in the run, one line each."""
    from tfx.types.standard_artifacts import ExampleAnomalies

    from components.reporting.anomalies import list_anomalies

    record = records.get(node_ids.EXAMPLE_VALIDATOR)
    if record is None or not record.outputs.get('anomalies'):
        return []
    artifact = ExampleAnomalies()
    artifact.set_mlmd_artifact(record.outputs['anomalies'][0])
    return list_anomalies(artifact)


def data_notes(records: dict[str, NodeRecord]) -> list[str]:
    """What the data steps found that did not stop the run: the files an image folder held but did
    not read (ExampleGen's Examples artifact), near-duplicate groups and warnings (the data gate's
    data_checks.json, when it passed)."""
    from tfx.dsl.io import fileio

    lines = []
    example_gen = records.get(node_ids.EXAMPLE_GEN)
    if example_gen is not None and example_gen.outputs.get('examples'):
        skipped = custom_value(example_gen.outputs['examples'][0], data_checks.SKIPPED_FILES)
        line = data_checks.skipped_files_line(skipped if isinstance(skipped, str) else None)
        lines += [line] if line else []
    checks = storage.read_json(output_uri(records, node_ids.DATA_GATE, 'label_counts'), data_checks.DATA_CHECKS_FILE,
                               fileio.exists, fileio.open)
    if checks is not None:
        lines += data_checks.DataChecks.from_dict(checks).notes()
    return lines


def validation_problems(error: BaseException) -> list[str]:
    """The problems a DataValidationError lists, found in `error` or the errors that caused it."""
    marker = 'data failed validation:'
    while error is not None:
        text = str(error)
        if marker in text:
            return [line.strip() for line in text.split(marker, 1)[1].splitlines() if line.strip()]
        error = error.__cause__ or error.__context__
    return []


def summarize(config: Config, records: dict[str, NodeRecord]) -> Outcome:
    """Reads the run's outputs and says how it ended."""
    gate_record = records.get(node_ids.DATA_GATE)
    if gate_record is not None and gate_record.state == 'FAILED':
        return Outcome(EXIT_BAD_DATA, ['data failed validation; nothing was trained or pushed:']
                       + ['  ' + line for line in data_anomalies(records)])
    failed = [node for node, record in records.items() if record.state == 'FAILED']
    if failed or node_ids.PUSHER not in records:
        return Outcome(EXIT_FAILED, [f'run failed at {", ".join(failed) or "an unknown step"}; nothing was pushed'])

    lines = []
    from tfx.dsl.io import fileio  # the run's outputs may be on object storage (the RunReport step)

    log_path = os.path.join(output_uri(records, node_ids.TRAINER, 'model_run'), TRAINING_LOG)
    with fileio.open(log_path) as f:
        training_log = json.load(f)
    lines += tuning_lines(training_log.get('tuning'), searched_in_run(config))
    lines += stage_lines(training_log)
    decision = training_log.get('decision_threshold') or {}
    if 'target_recall' in decision or 'target_precision' in decision:
        lines.append(decision_line(decision))

    report_dir = output_uri(records, node_ids.EVALUATOR, 'evaluation')
    with fileio.open(os.path.join(report_dir, artifact_files.GATE_REPORT_JSON)) as f:
        report = json.load(f)
    lines += gate_lines(report)
    counts_dir = output_uri(records, node_ids.DATA_GATE, 'label_counts')
    if counts_dir:
        with fileio.open(os.path.join(counts_dir, LABEL_COUNTS_FILE)) as f:
            lines += ['note: ' + line for line in small_split_notes(config, json.load(f))]
    lines += ['note: ' + line for line in data_notes(records)]
    lines.append(f'gate report: {display_path(os.path.join(report_dir, artifact_files.GATE_REPORT_HTML))}')
    lines.append(f'training log: {display_path(log_path)}')

    code, line = push_result(records[node_ids.PUSHER].outputs['pushed_model'][0], report)
    return Outcome(code, lines + [line])


def searched_in_run(config: Config) -> bool:
    """Whether the run's Trainer got its values from a search in the run (a `tuning` section
    without `reuse`), not imported from an earlier one."""
    return config.tuning is not None and config.tuning.reuse is None


def tuning_lines(tuning: Optional[dict], searched: bool = True) -> list[str]:
    """What was tuned and what won, from the training log's `tuning` entry (None: not tuned;
    `searched`: by this run's tuning step, else imported from an earlier search), e.g.
    'tuned: head.learning_rate 0.0021, top.learning_rate 3.1e-05; trial 4 of 8 (1 pruned), eval
    auc_pr 0.9612 (the config's own values: 0.9433)'."""
    if not tuning:
        return []
    values = values_text(tuning['values'])
    if not searched or 'winner' not in tuning:
        return [f'tuned: {values}, imported from {display_path(tuning.get("from") or "?")} (no search in this run)']
    winner, objective = tuning['winner'], tuning['objective']
    line = (f"tuned: {values}; trial {winner['trial']} of {tuning['trials']} ({tuning['pruned']} pruned), "
            f"eval {objective} {winner['value']:.4f}")
    recipe = tuning.get('recipe')
    if recipe and recipe['trial'] != winner['trial']:
        line += f" (the config's own values: {recipe['value']:.4f})"
    lines = [line]
    tied = tuning.get('not_separable') or []
    if len(tied) > 1:
        lines.append(f"note: trials {', '.join(map(str, tied))} are not separable on eval (95% paired bootstrap); "
                     f"the cheapest, trial {winner['trial']}, was trained")
    return lines


def small_split_notes(config: Config, counts: dict[str, dict[str, int]]) -> list[str]:
    """The eval split's note when it is too small for early stopping or a threshold chosen on it to
    be more than noise (proportions.noisy_split_line): binary, by its positives; multiclass, by
    its smallest class."""
    eval_counts = counts.get('eval') or {}
    if config.task.type == 'binary':
        n, unit = eval_counts.get(str(config.task.positive_class), 0), 'positives'
    else:
        n, label = min((eval_counts.get(str(c), 0), c) for c in config.classes)
        unit = f'examples of class {label} (the smallest)'
    line = proportions.noisy_split_line('eval', n, config.evaluation.confidence or 0.95,
                                            config.evaluation.interval, unit)
    return [line] if line else []


def push_result(pushed, report: dict) -> tuple[int, str]:
    """What the Pusher did, from its PushedModel (an ML Metadata artifact) and the gate report:
    the exit code and the summary's last line."""
    if custom_value(pushed, 'pushed') == 1:
        return EXIT_PUSHED, f"pushed: {display_path(custom_value(pushed, 'pushed_destination'))}"
    served = custom_value(pushed, release_keys.ALREADY_IN_PRODUCTION)
    if served:
        return EXIT_PUSHED, f'already in production: {display_path(served)}'
    changed_to = custom_value(pushed, release_keys.PRODUCTION_CHANGED_TO)
    if changed_to is not None:
        changed = release_keys.ProductionChanged(custom_value(pushed, release_keys.GATED_AGAINST), changed_to)
        return EXIT_PRODUCTION_CHANGED, f'not pushed: {changed}; run again'
    misses = [_miss(check) for check in report['checks'] if not check['passed']]
    return EXIT_NOT_BLESSED, 'not pushed: ' + ('; '.join(misses) or 'the model was not blessed')


def decision_line(decision: dict) -> str:
    """The decision threshold the Trainer chose on the eval split, and what it reached there: with
    a confidence, the lower bound of the targeted metric (recall: on how many positives), e.g.
    'decision threshold: 0.3120, chosen on eval for recall >= 0.9 at 95% confidence: eval recall
    0.9545 (lower bound 0.772 on 22 positives), precision 0.8400'; else '(point rule)'."""
    metric = 'recall' if 'target_recall' in decision else 'precision'
    confidence = decision.get('confidence')
    if confidence is None:
        rule, bounds, best = ' (point rule)', {}, f'the best {metric}'
    else:
        on = f" on {decision['eval_positives']} positives" if metric == 'recall' else ''
        rule, best = f' at {confidence * 100:g}% confidence', 'the highest lower bound'
        bounds = {metric: f" (lower bound {decision['eval_lower_bound']:.3f}{on})"}
    met = '' if decision['target_met'] else f' (target not reached; {best} there)'
    return (f"decision threshold: {decision['value']:.4f}, chosen on eval for {metric} >= "
            f"{decision['target_' + metric]:g}{rule}: eval recall {decision['eval_recall']:.4f}"
            f"{bounds.get('recall', '')}, precision {decision['eval_precision']:.4f}{bounds.get('precision', '')}{met}")


def _where(check: dict) -> str:
    return '' if check['slice'] == 'Overall' else f" on {check['slice']}"


def _miss(check: dict) -> str:
    """One failed check, as the summary's last line names it."""
    if check.get('reason'):
        return f"{check['metric']}{_where(check)}: {check['reason']} (TFMA)"
    interval, comparison = check.get('interval'), check.get('comparison')
    if check['kind'] == 'floor' and interval:
        return (f"{check['metric']}{_where(check)} {gate_report.interval_text(check)}: lower bound "
                f"{proportions.bound_text(interval['low'], check['threshold'])} < floor {check['threshold']:g}")
    if check['kind'] == 'floor':
        return f"{check['metric']}{_where(check)} {proportions.value_text(check['value'])} < {check['threshold']:g}"
    if comparison:
        return f"{check['metric']}{_where(check)} worse than production: " + gate_report.check_line(check)
    drop = None if None in (check['value'], check['baseline']) else check['baseline'] - check['value']
    return (f"{check['metric']}{_where(check)} {proportions.value_text(check['value'])} dropped {proportions.value_text(drop)} below production "
            f"{proportions.value_text(check['baseline'])} (max drop {check['threshold']:g})")


def gate_lines(report: dict) -> list[str]:
    """The gate's checks as decided (each floor's interval, each paired test), on the split it read,
    and what it compared against."""
    if report['baseline'] is None:
        lines = ['gate baseline: no model in production yet; only the floors apply']
    else:
        lines = [f"gate baseline: model in production {display_path(report['baseline']['path'])}"]
    for check in report['checks']:
        verdict = 'pass' if check['passed'] else 'FAIL'
        name = check['metric'] + ('' if check['kind'] == 'floor' else ' vs production')
        lines.append(f"gate {name}{_where(check)}: {gate_report.check_line(check)} {verdict} (split {report['split']})")
    return lines
