"""`python -m pipeline compare`: is staged fine-tuning worth it on my data?

The same data go through each fine-tuning strategy, with several seeds, in one TFX pipeline: the
data steps run once, then one Trainer and one Evaluator per strategy and seed (the gate's TFMA
metrics on the held-out test split; no baseline, so only the floors apply; nothing pushed). Its own
ML Metadata store and pipeline root (under <run dir>/compare) keep it apart from the production
pipeline, and its cache makes a repeated comparison cheap.

The Evaluators decide the floors as the gate does (evaluation.confidence and evaluation.interval):
each seed's metrics come with their intervals, and whether the seed clears the gate under that rule
and on the point values. The report (comparison.md, .svg and .json): the medians per strategy; each
seed's metrics as value [low, high] with both verdicts; per strategy, how many seeds clear the gate
under each rule; a plot of the medians as bars, each seed as a dot with its interval, and the floors.
Strategies are ranked by their headline metrics (binary: AUC-PR; multiclass: accuracy and macro
recall): the median and spread over the seeds on test, and the median on eval, which is the split
to choose a recipe by.

Strategies; the first four with the same total epoch budget as the configured plan:
  scratch  the backbone's architecture with random weights, everything trained, one rate (the
           first stage's optimizer; a network trained from scratch takes the higher rate);
  full     the pre-trained backbone, everything trained at once, one constant rate (the last
           stage's optimizer);
  head     the backbone frozen throughout: only the new head trains (the first stage's optimizer);
  staged   the configured trainer.stages;
  tuned    the configured trainer.stages with the values the config's `tuning` section finds: a
           tuning step per seed (the search's own seed is the seed too) before its Trainer;
  a path to a YAML config: that file's trainer.stages, named by the file.
The single-stage strategies keep the last stage's early stopping. Two baselines bring their own
plan, head and augmentation (PROBE and GUIDE below), whatever the configured ones:
  probe    a linear probe: the frozen backbone's pooled features and one dense unit (a logistic
           regression; a softmax layer for multiclass), L2-regularized through AdamW's decoupled
           weight decay, trained until the eval loss has not improved for 5 epochs (at most 50),
           the best epoch's weights kept; no augmentation, no dropout;
  guide    the Keras transfer-learning guide's two steps: the head (pooling, dropout 0.2, one
           dense unit) on the frozen backbone for 20 epochs at Adam 1e-3, with horizontal flips and
           rotations of up to 0.1 turn; then the whole backbone for 10 epochs at Adam 1e-5, its
           BatchNorm layers in inference mode.
Every strategy is trained by the same Trainer, exported, and gated by the same Evaluator.
"""

import dataclasses
import json
import os
import statistics
from typing import Optional

from components.config import GATE_METRICS, Config, ConfigError, load_config, validate

BUILT_IN = ('scratch', 'full', 'head', 'staged', 'tuned', 'probe', 'guide')
COMPARISON = 'comparison'

# The baselines' own plans (raw trainer.stages) and model settings (raw model.head, model.augmentation).
PROBE = {
    'stages': ({'name': 'probe', 'epochs': 50, 'unfreeze': 'none',
                'optimizer': {'name': 'adamw', 'learning_rate': 1e-2, 'weight_decay': 1e-3},
                'early_stopping': {'monitor': 'val_loss', 'patience': 5}},),
    'model': {'head': {'hidden_units': [], 'dropout': 0.0}, 'augmentation': None},
}
GUIDE = {
    'stages': ({'name': 'head', 'epochs': 20, 'unfreeze': 'none', 'optimizer': {'name': 'adam', 'learning_rate': 1e-3}},
               {'name': 'finetune', 'epochs': 10, 'unfreeze': 'all', 'train_batchnorm': False,
                'optimizer': {'name': 'adam', 'learning_rate': 1e-5}}),
    'model': {'head': {'hidden_units': [], 'dropout': 0.2},
              'augmentation': {'flip': 'horizontal', 'rotation': 0.1}},
}


@dataclasses.dataclass(frozen=True)
class Strategy:
    name: str
    stages: tuple[dict, ...]  # raw trainer.stages
    from_scratch: bool = False
    # Raw model sections that replace the configured ones (the baselines' head and augmentation).
    model: Optional[dict] = None
    # The stages' values searched first (the config's `tuning` section); other strategies train as written.
    tuned: bool = False


def _single_stage(name: str, template, epochs: int, unfreeze: str, early_stopping) -> dict:
    stage = {'name': name, 'epochs': epochs, 'unfreeze': unfreeze,
             'optimizer': template.optimizer.model_dump(mode='json'), 'schedule': {'name': 'constant'}}
    if early_stopping is not None:
        stage['early_stopping'] = early_stopping.model_dump(mode='json')
    return stage


def strategy(config: Config, name: str) -> Strategy:
    """The strategy called `name` (a built-in or a config file path) for this config."""
    stages = config.trainer.stages
    epochs = sum(s.epochs for s in stages)
    stop = stages[-1].early_stopping
    if name == 'staged':
        return Strategy(name, tuple(s.model_dump(mode='json') for s in stages))
    if name == 'tuned':
        if config.tuning is None or config.tuning.reuse is not None:
            raise ConfigError('--strategies: tuned needs a `tuning` section with a search space (and no '
                              'tuning.reuse) in the config')
        return Strategy(name, tuple(s.model_dump(mode='json') for s in stages), tuned=True)
    if name == 'head':
        return Strategy(name, (_single_stage('head', stages[0], epochs, 'none', stop),))
    if name == 'full':
        return Strategy(name, (_single_stage('full', stages[-1], epochs, 'all', stop),))
    if name == 'scratch':
        return Strategy(name, (_single_stage('scratch', stages[0], epochs, 'all', stop),), from_scratch=True)
    if name in ('probe', 'guide'):
        plan = PROBE if name == 'probe' else GUIDE
        return Strategy(name, tuple(plan['stages']), model=dict(plan['model']))
    if name.endswith(('.yaml', '.yml')):
        other = load_config(name)
        label = os.path.splitext(os.path.basename(name))[0]
        return Strategy(label, tuple(s.model_dump(mode='json') for s in other.trainer.stages))
    raise ConfigError(f'--strategies: {name!r} is not a strategy; expected some of {", ".join(BUILT_IN)} '
                      f'or a path to a YAML config')


def variant_config(config: Config, chosen: Strategy, seed: int) -> Config:
    """`config` with the strategy's stages (and model sections, for a baseline) and the seed; no warm
    start (every strategy starts alike); the tuning section only for `tuned`, searched with the seed."""
    data = config.model_dump(mode='json')
    data['trainer'].update(stages=list(chosen.stages), seed=seed, warm_start=None)
    data['model'].update(chosen.model or {})
    data['tuning'] = dict(data['tuning'], seed=seed) if chosen.tuned else None
    return validate(data)


def node_suffix(strategy_name: str, seed: int) -> str:
    return ''.join(c if c.isalnum() else '_' for c in strategy_name) + f'_seed{seed}'


def create_compare_pipeline(config: Config, strategies: list[Strategy], seeds: list[int], data_uri: str,
                            backbone_uri: str, pipeline_root: str, metadata_connection_config):
    """The data steps once; a Trainer and an Evaluator per strategy and seed."""
    from tfx.orchestration import pipeline as tfx_pipeline

    from pipeline import beam_mode
    from pipeline.pipeline import backbone_node, data_steps, evaluator_node, trainer_config, trainer_node, tuning_nodes

    steps = data_steps(config, data_uri)
    backbone = backbone_node(backbone_uri)
    nodes = steps.nodes + [backbone]
    for chosen in strategies:
        for seed in seeds:
            variant = variant_config(config, chosen, seed)
            suffix = node_suffix(chosen.name, seed)
            search = tuning_nodes(variant, steps, backbone, suffix=f'_{suffix}')
            trainer = trainer_node(steps, backbone, trainer_config(variant, from_scratch=chosen.from_scratch),
                                   node_id=f'Trainer_{suffix}', search=search)
            evaluator = evaluator_node(config, steps, trainer, None, node_id=f'Evaluator_{suffix}')
            nodes += (search.nodes if search else []) + [trainer, evaluator]
    return tfx_pipeline.Pipeline(
        pipeline_name=f'{config.pipeline.name}-compare', pipeline_root=pipeline_root, components=nodes,
        enable_cache=config.pipeline.enable_cache, metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=list(beam_mode.local_beam_args(config, data_uri)))


def gate_metrics(config: Config) -> list[str]:
    """The metrics the comparison reports: the gate's floors, in the gate's order, named as the gate
    report names them (multiclass: 'macro recall', ..., and 'accuracy')."""
    floors = [m for m in GATE_METRICS if getattr(config.evaluation.thresholds, m) is not None]
    return [_reported(config, m) for m in floors or ['recall', 'precision']]


def _reported(config: Config, metric: str) -> str:
    """A floor's metric as the gate report names its Overall value: a multiclass floor is on the
    macro average over classes, except accuracy."""
    return f'macro {metric}' if config.task.type == 'multiclass' and metric != 'accuracy' else metric


# What a comparison ranks by, beside the gate's metrics (TFMA's name -> the training log's eval key):
# binary the area under the PR curve; multiclass accuracy and macro recall.
HEADLINE = {'binary': {'auc_pr': 'auc_pr'}, 'multiclass': {'accuracy': 'accuracy', 'macro recall': 'macro_recall'}}


def headline_metrics(config: Config) -> list[str]:
    """The metrics a comparison ranks strategies by, with their spread over seeds (HEADLINE)."""
    return list(HEADLINE[config.task.type])


def _floors(config: Config, metrics: list[str]) -> dict:
    return {_reported(config, m): v for m, v in config.evaluation.thresholds.items()
            if _reported(config, m) in metrics}


def run_entry(seed: int, metrics: list[str], report: dict, log: dict, headline: list[str] = ()) -> dict:
    """One seed's figures from its gate report and training log: each metric's value (Overall),
    its interval [low, high] and counts [k, n] where the floor was decided on its lower bound (else
    None), whether it clears the gate under the configured rule (`clears`) and under the point rule
    (`clears_point`), its epochs and training time; each `headline` metric on the test split
    (`test`, TFMA) and on the eval split (`eval`, the Trainer's figures for the exported model)."""
    checks = {c['metric']: c for c in report['checks'] if c['slice'] == 'Overall' and c['kind'] == 'floor'}
    overall = report['metrics'].get('Overall', {}).get('candidate', {})
    intervals = {m: (checks[m].get('interval') if m in checks else None) for m in metrics}
    keys = {**HEADLINE['binary'], **HEADLINE['multiclass']}
    tuning = log.get('tuning') or {}
    return {'seed': seed, **{m: checks[m]['value'] if m in checks else overall.get(m) for m in metrics},
            'test': {m: overall.get(m) for m in headline},
            'eval': {m: log.get('eval', {}).get(keys[m]) for m in headline},
            'interval': {m: [i['low'], i['high']] if i else None for m, i in intervals.items()},
            'counts': {m: [i['k'], i['n']] if i and i.get('n') is not None else None for m, i in intervals.items()},
            'clears': bool(report['blessed']), 'clears_point': bool(report['tfma_blessed']),
            'epochs': sum(s['epochs_run'] for s in log['stages']),
            'train_s': sum(s['wall_time_s'] for s in log['stages']),
            # The search's wall time (tuned), trials and how many were pruned; None when not tuned.
            'tune_s': tuning.get('seconds'), 'trials': tuning.get('trials'), 'pruned': tuning.get('pruned')}


def collect(config: Config, strategies: list[Strategy], seeds: list[int], records) -> dict:
    """Per strategy: each seed's gate metrics (Overall) with their intervals, its verdicts and
    training figures (run_entry); the medians, and how many seeds clear the gate under the
    configured rule (`cleared`) and under the point rule (`cleared_point`). Also the floors and
    the rule (`confidence`, `interval_method`; confidence None: the point rule)."""
    from components.shared import artifact_files
    from components.shared.artifact_files import TRAINING_LOG

    metrics, headline = gate_metrics(config), headline_metrics(config)
    rows = []
    for chosen in strategies:
        runs = []
        for seed in seeds:
            suffix = node_suffix(chosen.name, seed)
            evaluation = records[f'Evaluator_{suffix}'].outputs['evaluation'][0].uri
            with open(os.path.join(evaluation, artifact_files.GATE_REPORT_JSON)) as f:
                report = json.load(f)
            with open(os.path.join(records[f'Trainer_{suffix}'].outputs['model_run'][0].uri, TRAINING_LOG)) as f:
                log = json.load(f)
            runs.append(run_entry(seed, metrics, report, log, headline))
        rows.append({'strategy': chosen.name, 'runs': runs,
                     'median': {key: _median([r.get(key) for r in runs])
                                for key in [*metrics, 'epochs', 'train_s', 'tune_s']},
                     **{split: {m: _median([r[split][m] for r in runs]) for m in headline} for split in ('test', 'eval')},
                     'spread': {m: _spread([r['test'][m] for r in runs]) for m in headline},
                     'cleared': sum(r['clears'] for r in runs), 'cleared_point': sum(r['clears_point'] for r in runs)})
    confidence = config.evaluation.confidence
    return {'metrics': metrics, 'headline': headline, 'seeds': seeds, 'split': 'test', 'floors': _floors(config, metrics),
            'confidence': confidence, 'interval_method': config.evaluation.interval if confidence is not None else None,
            'rows': rows}


def _median(values: list) -> Optional[float]:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _spread(values: list) -> Optional[list]:
    present = [v for v in values if v is not None]
    return [min(present), max(present)] if present else None


def _markdown(head: list[str], rows: list[list[str]]) -> list[str]:
    return ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)] + ['| ' + ' | '.join(r) + ' |' for r in rows]


def _yes(flag: bool) -> str:
    return 'yes' if flag else 'no'


def clearance_line(result: dict, row: dict) -> str:
    """How many of a strategy's seeds clear the gate, e.g. 'staged: 3 of 5 seeds clear the gate at
    95% (lower bound >= floor); 4 of 5 on the point values'."""
    total = len(row['runs'])
    if result.get('confidence') is None:
        return f"{row['strategy']}: {row['cleared_point']} of {total} seeds clear the gate on the point values"
    return (f"{row['strategy']}: {row['cleared']} of {total} seeds clear the gate at {result['confidence']:.0%} "
            f"(lower bound >= floor); {row['cleared_point']} of {total} on the point values")


def table(result: dict) -> str:
    """Markdown: a table of medians over the seeds, one row per strategy (with each headline
    metric's lowest and highest seed on test, and its median on eval); a table of each seed's
    metrics with their intervals and whether it clears the gate (under the configured rule and,
    when that is the lower bound, under the point rule); one line per strategy counting the seeds
    that clear. With confidence None the rule is the point values and the second verdict is left out."""
    from components.statistics.proportions import value_text

    metrics, headline = result['metrics'], result.get('headline', [])
    # The search's seconds, when a strategy searched (tuned).
    tuned = any(row['median'].get('tune_s') is not None for row in result['rows'])
    medians = []
    for row in result['rows']:
        m = row['median']
        medians.append([row['strategy'], *(value_text(m[k]) for k in metrics),
                        *(value_text(row['test'][k], *(row['spread'][k] or ())) for k in headline),
                        *(value_text(row['eval'][k]) for k in headline),
                        f"{m['epochs']:g}", f"{m['train_s']:.0f}",
                        *([] if not tuned else ['' if m.get('tune_s') is None else f"{m['tune_s']:.0f}"])])
    lower_bound = result.get('confidence') is not None
    head = ['strategy', 'seed', *metrics, 'clears gate', *(['clears point rule'] if lower_bound else [])]
    seeds = []
    for row in result['rows']:
        for r in row['runs']:
            seeds.append([row['strategy'], str(r['seed']), *(value_text(r[k], *(r['interval'][k] or ())) for k in metrics),
                          _yes(r['clears'] if lower_bound else r['clears_point']),
                          *([_yes(r['clears_point'])] if lower_bound else [])])
    rule = (f"Gate rule: the lower end of each floor's {result['confidence']:.0%} interval clears the floor."
            if lower_bound else 'Gate rule: the point values clear the floors (evaluation.confidence: null).')
    spread = (f"{', '.join(headline)}: the median over the seeds on the test split, [lowest, highest]; eval: the "
              'median on the eval split, which a recipe is chosen by.' if headline else '')
    return '\n'.join([*_markdown(['strategy', *metrics, *(f'{k} [min, max]' for k in headline),
                                   *(f'eval {k}' for k in headline), 'epochs', 'train s',
                                   *(['tune s'] if tuned else [])], medians),
                      *(['', spread] if spread else []), '', rule, '',
                      *_markdown(head, seeds), '', *(clearance_line(result, row) for row in result['rows'])])


def plot(result: dict) -> str:
    """Grouped bars of the median of each metric per strategy; each seed's value as a dot with its
    interval as an error bar; each metric's floor as a dashed line across its bars."""
    from components.gate.plots import COLOURS, pyplot, svg

    plt = pyplot()
    metrics, rows, floors = result['metrics'], result['rows'], result.get('floors', {})
    figure, axis = plt.subplots(figsize=(1.6 + 1.4 * len(rows), 3.4))
    width = 0.8 / len(metrics)
    for j, metric in enumerate(metrics):
        colour = COLOURS[j % len(COLOURS)]
        xs = [i + (j - (len(metrics) - 1) / 2) * width for i in range(len(rows))]
        medians = [row['median'][metric] or 0.0 for row in rows]
        axis.bar(xs, medians, width * 0.9, color=colour, alpha=0.75, label=metric)
        for x, row in zip(xs, rows):
            _seed_points(axis, x, width * 0.6, [r for r in row['runs'] if r[metric] is not None], metric)
        if floors.get(metric) is not None:
            axis.hlines([floors[metric]] * len(xs), [x - width * 0.45 for x in xs], [x + width * 0.45 for x in xs],
                        colors=_darker(colour), linestyles='--', linewidth=1.4, label=f'{metric} floor')
    axis.set_xticks(range(len(rows)), [row['strategy'] for row in rows])
    axis.set_ylim(0, 1.05)
    axis.set_ylabel(f"on the {result['split']} split (median of {len(result['seeds'])} seed(s))")
    axis.legend(fontsize=8, loc='lower right')
    return svg(figure)


def _darker(colour: str) -> tuple:
    """`colour` darkened, so that a line in it shows on a bar of `colour`."""
    from matplotlib.colors import to_rgb

    return tuple(0.55 * c for c in to_rgb(colour))


def _seed_points(axis, centre: float, spread: float, runs: list[dict], metric: str) -> None:
    """Each run's value as a dot, its interval (where it has one) as an error bar, spread across `spread`."""
    for i, r in enumerate(runs):
        x = centre + (i - (len(runs) - 1) / 2) * spread / max(len(runs), 1)
        interval = r['interval'][metric]
        error = [[max(r[metric] - interval[0], 0.0)], [max(interval[1] - r[metric], 0.0)]] if interval else None
        axis.errorbar([x], [r[metric]], yerr=error, fmt='o', color='#222', markersize=3, capsize=2, elinewidth=0.8)


def run(config: Config, names: list[str], seeds: int) -> tuple[int, list[str]]:
    """Runs the comparison; returns (exit code, lines to print)."""
    from tfx.orchestration import metadata
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner

    from components.training import backbone
    from components.shared import storage
    from pipeline import local_runner
    from components.reporting import run_summary

    strategies = [strategy(config, name) for name in names]
    if len({s.name for s in strategies}) != len(strategies):
        raise ConfigError(f'--strategies: expected distinct names, got {[s.name for s in strategies]}')
    seed_list = [config.trainer.seed + i for i in range(seeds)]
    paths = local_runner.LocalPaths(os.path.abspath(config.run_dir))
    work = os.path.join(paths.run_dir, 'compare')
    os.makedirs(work, exist_ok=True)
    data_uri = local_runner.prepare_data(config, paths)
    backbone_uri = backbone.prepare_backbone(config.model.backbone, config.model.input, paths.backbones)
    connection = metadata.sqlite_metadata_connection_config(os.path.join(work, 'metadata.sqlite'))
    dag = create_compare_pipeline(config, strategies, seed_list, data_uri, backbone_uri,
                                  os.path.join(work, 'pipeline'), connection)
    try:
        LocalDagRunner().run(dag)
    except Exception as error:  # noqa: BLE001 - the records say which step failed
        records = run_summary.latest_run(connection)
        failed = [node for node, record in records.items() if record.state == 'FAILED']
        return run_summary.EXIT_FAILED, [f'comparison failed at {", ".join(failed) or "an unknown step"}: '
                                     f'{type(error).__name__}: {error}']
    result = collect(config, strategies, seed_list, run_summary.latest_run(connection))
    directory = os.path.join(work, run_summary.latest_run_id(connection) or 'latest')
    os.makedirs(directory, exist_ok=True)
    written = {}
    for extension, text in (('json', json.dumps(result, indent=1)), ('md', table(result) + '\n'),
                            ('svg', plot(result))):
        written[extension] = os.path.join(directory, f'{COMPARISON}.{extension}')
        storage.write_text_atomically(written[extension], text)
    return 0, [table(result), '', f"table: {run_summary.display_path(written['md'])}",
               f"plot: {run_summary.display_path(written['svg'])}", f"data: {run_summary.display_path(written['json'])}"]
