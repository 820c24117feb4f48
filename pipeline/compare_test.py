"""compare's report from a hand-made result: the medians table, the per-seed table with intervals
and both verdicts, the count of seeds that clear, and the plot; its collection from a recorded
run's gate report and training log; no pipeline run."""

import copy

from pipeline import compare


def _run(seed, recall, precision, clears, clears_point, recall_interval=None, precision_interval=None):
    return {'seed': seed, 'recall': recall, 'precision': precision,
            'interval': {'recall': recall_interval, 'precision': precision_interval},
            'counts': {'recall': None, 'precision': None},
            'clears': clears, 'clears_point': clears_point, 'epochs': 6, 'train_s': 12.4,
            'test': {'auc_pr': recall}, 'eval': {'auc_pr': precision}}


RESULT = {
    'metrics': ['recall', 'precision'], 'headline': ['auc_pr'], 'seeds': [0, 1], 'split': 'test',
    'floors': {'recall': 0.8, 'precision': 0.8}, 'confidence': 0.95, 'interval_method': 'clopper_pearson',
    'rows': [
        {'strategy': 'staged',
         'runs': [_run(0, 40 / 46, 0.95, True, True, [0.737, 0.951], [0.83, 0.99]),
                  _run(1, 0.84, 0.9, False, True, [0.7, 0.93], [0.79, 0.96])],
         'median': {'recall': 0.8548, 'precision': 0.925, 'epochs': 6, 'train_s': 12.4},
         'test': {'auc_pr': 0.93}, 'eval': {'auc_pr': 0.95}, 'spread': {'auc_pr': [0.91, 0.95]},
         'cleared': 1, 'cleared_point': 2},
        {'strategy': 'scratch',
         'runs': [_run(0, 0.5, None, False, False, [0.35, 0.65], None),
                  _run(1, 0.6, 0.7, False, False, [0.45, 0.74], [0.55, 0.82])],
         'median': {'recall': 0.55, 'precision': 0.7, 'epochs': 6, 'train_s': 12.4},
         'test': {'auc_pr': 0.6}, 'eval': {'auc_pr': None}, 'spread': {'auc_pr': [0.5, 0.7]},
         'cleared': 0, 'cleared_point': 0},
    ],
}


def _tables(text: str) -> list[list[list[str]]]:
    """The Markdown tables of `text`, each as rows of cells (header first, separator left out)."""
    tables, current = [], None
    for line in text.splitlines():
        if line.startswith('| '):
            if current is None:
                current = []
                tables.append(current)
            current.append([cell.strip() for cell in line.strip('|').split('|')])
        elif not line.startswith('|'):
            current = None
    return tables


def test_the_table_gives_medians_then_each_seed_with_its_interval_and_both_verdicts():
    text = compare.table(RESULT)
    medians, seeds = _tables(text)
    assert medians == [['strategy', 'recall', 'precision', 'auc_pr [min, max]', 'eval auc_pr', 'epochs', 'train s'],
                       ['staged', '0.8548', '0.9250', '0.9300 [0.910, 0.950]', '0.9500', '6', '12'],
                       ['scratch', '0.5500', '0.7000', '0.6000 [0.500, 0.700]', 'undefined', '6', '12']]
    assert seeds == [['strategy', 'seed', 'recall', 'precision', 'clears gate', 'clears point rule'],
                     ['staged', '0', '0.8696 [0.737, 0.951]', '0.9500 [0.830, 0.990]', 'yes', 'yes'],
                     ['staged', '1', '0.8400 [0.700, 0.930]', '0.9000 [0.790, 0.960]', 'no', 'yes'],
                     ['scratch', '0', '0.5000 [0.350, 0.650]', 'undefined', 'no', 'no'],
                     ['scratch', '1', '0.6000 [0.450, 0.740]', '0.7000 [0.550, 0.820]', 'no', 'no']]
    lines = text.splitlines()
    assert 'staged: 1 of 2 seeds clear the gate at 95% (lower bound >= floor); 2 of 2 on the point values' in lines
    assert 'scratch: 0 of 2 seeds clear the gate at 95% (lower bound >= floor); 0 of 2 on the point values' in lines


def test_with_confidence_null_the_rule_is_the_point_values_and_there_is_one_verdict_column():
    result = copy.deepcopy(RESULT)
    result.update(confidence=None, interval_method=None)
    for row in result['rows']:
        for run in row['runs']:
            run['interval'] = {m: None for m in result['metrics']}
            run['clears'] = run['clears_point']
        row['cleared'] = row['cleared_point']
    text = compare.table(result)
    _, seeds = _tables(text)
    assert seeds[0] == ['strategy', 'seed', 'recall', 'precision', 'clears gate']
    assert seeds[1] == ['staged', '0', '0.8696', '0.9500', 'yes']
    assert seeds[2] == ['staged', '1', '0.8400', '0.9000', 'yes']
    lines = text.splitlines()
    assert 'staged: 2 of 2 seeds clear the gate on the point values' in lines
    assert 'point values' in text and 'lower bound' not in text


def test_the_plot_draws_each_interval_and_the_floors():
    text = compare.plot(RESULT)
    assert text.startswith('<svg')
    for name in ('staged', 'scratch', 'recall floor', 'precision floor'):
        assert f'>{name}<' in text


def test_the_baselines_bring_their_own_plan_head_and_augmentation():
    from components.config import load_config

    config = load_config('configs/photos.yaml', ('data.path=.',))
    probe = compare.variant_config(config, compare.strategy(config, 'probe'), seed=3)
    [stage] = probe.trainer.stages
    assert stage.unfreeze.mode == 'none' and stage.optimizer.name == 'adamw' and stage.optimizer.weight_decay == 1e-3
    assert stage.early_stopping.monitor == 'val_loss' and stage.epochs == 50
    assert probe.model.head.hidden_units == () and probe.model.head.dropout == 0.0 and probe.model.augmentation is None
    guide = compare.variant_config(config, compare.strategy(config, 'guide'), seed=3)
    head, finetune = guide.trainer.stages
    assert (head.unfreeze.mode, head.epochs, head.optimizer.learning_rate) == ('none', 20, 1e-3)
    assert (finetune.unfreeze.mode, finetune.epochs, finetune.optimizer.learning_rate) == ('all', 10, 1e-5)
    assert finetune.train_batchnorm is False and head.early_stopping is None is finetune.early_stopping
    assert guide.model.head.dropout == 0.2 and guide.model.head.hidden_units == ()
    assert guide.model.augmentation.model_dump(exclude_defaults=True) == {'flip': 'horizontal', 'rotation': 0.1}
    # The rest of the config is the user's: backbone, input size, seed.
    for variant in (probe, guide):
        assert variant.model.backbone == config.model.backbone and variant.model.input == config.model.input
        assert variant.trainer.seed == 3 and variant.trainer.warm_start is None


def test_a_seed_entry_takes_the_headline_metrics_from_test_and_from_the_trainers_eval_figures():
    report = {'blessed': False, 'tfma_blessed': True,
              'checks': [{'slice': 'Overall', 'kind': 'floor', 'metric': 'accuracy', 'value': 0.9,
                          'interval': {'low': 0.85, 'high': 0.94, 'k': 180, 'n': 200}}],
              'metrics': {'Overall': {'candidate': {'accuracy': 0.9, 'macro recall': 0.88, 'recall[class 1]': 0.7}}}}
    log = {'stages': [{'epochs_run': 4, 'wall_time_s': 3.0}, {'epochs_run': 2, 'wall_time_s': 5.5}],
           'eval': {'accuracy': 0.8, 'macro_recall': 0.75, 'examples': 100}}
    entry = compare.run_entry(7, ['accuracy'], report, log, ['accuracy', 'macro recall'])
    assert entry['test'] == {'accuracy': 0.9, 'macro recall': 0.88}
    assert entry['eval'] == {'accuracy': 0.8, 'macro recall': 0.75}
    assert entry['interval'] == {'accuracy': [0.85, 0.94]} and entry['counts'] == {'accuracy': [180, 200]}
    assert (entry['clears'], entry['clears_point'], entry['epochs'], entry['train_s']) == (False, True, 6, 8.5)


def test_the_headline_and_the_gate_metrics_are_named_for_the_task():
    from components.config import load_config

    binary = load_config('configs/photos.yaml', ('data.path=.',))
    assert compare.headline_metrics(binary) == ['auc_pr']
    multiclass = load_config('configs/local.yaml', ('task.type=multiclass', 'task.positive_class=null',
                                                    'evaluation.thresholds.accuracy=0.5'))
    assert compare.headline_metrics(multiclass) == ['accuracy', 'macro recall']
    # The floors as the gate report names them: multiclass recall and precision are macro averages.
    assert compare.gate_metrics(multiclass) == ['macro recall', 'macro precision', 'accuracy']
    assert compare._floors(multiclass, compare.gate_metrics(multiclass)) == {
        'macro recall': 0.65, 'macro precision': 0.65, 'accuracy': 0.5}
    assert compare.gate_metrics(binary) == ['recall', 'precision']


def test_collect_reads_each_seed_s_gate_report_and_training_log_from_its_nodes(tmp_path):
    """On a recorded default run's gate report and training log (components/reporting/testdata),
    laid out as a comparison's Evaluator_<strategy>_seed<N> and Trainer_... outputs; one seed's
    report is edited to miss the gate on its lower bound with a lower recall."""
    import json
    import types

    from components.config import load_config
    from components.reporting.testdata import recorded
    from components.shared.artifact_files import GATE_REPORT_JSON, TRAINING_LOG

    config = load_config('configs/local.yaml')
    report, log = recorded(GATE_REPORT_JSON), recorded(TRAINING_LOG)
    missed = copy.deepcopy(report)
    missed['blessed'] = False
    recall = next(c for c in missed['checks'] if c['metric'] == 'recall')
    recall.update(value=48 / 64, passed=False)
    recall['interval'].update(low=0.626, high=0.85, k=48)
    missed['metrics']['Overall']['candidate']['auc_pr'] = 0.85

    def output(node, key, name, content):
        directory = tmp_path / node / key
        directory.mkdir(parents=True)
        (directory / name).write_text(json.dumps(content))
        return types.SimpleNamespace(outputs={key: [types.SimpleNamespace(uri=str(directory))]})

    strategies = [compare.strategy(config, 'staged'), compare.strategy(config, 'head')]
    records = {}
    for chosen in strategies:
        for seed in (0, 1):
            suffix = compare.node_suffix(chosen.name, seed)
            records[f'Evaluator_{suffix}'] = output(f'Evaluator_{suffix}', 'evaluation', GATE_REPORT_JSON,
                                                    missed if (chosen.name, seed) == ('staged', 1) else report)
            records[f'Trainer_{suffix}'] = output(f'Trainer_{suffix}', 'model_run', TRAINING_LOG, log)

    result = compare.collect(config, strategies, [0, 1], records)
    assert (result['metrics'], result['headline'], result['seeds']) == (['recall', 'precision'], ['auc_pr'], [0, 1])
    assert result['floors'] == {'recall': 0.65, 'precision': 0.65}
    assert (result['confidence'], result['interval_method']) == (0.95, 'clopper_pearson')
    staged, head = result['rows']
    assert [staged['strategy'], head['strategy']] == ['staged', 'head']
    first, second = staged['runs']
    assert (first['seed'], first['recall'], first['precision']) == (0, 54 / 64, 54 / 66)
    recorded = report['checks'][0]['interval']
    assert first['interval']['recall'] == [recorded['low'], recorded['high']]
    assert first['counts'] == {'recall': [54, 64], 'precision': [54, 66]}
    assert (second['recall'], second['counts']['recall'], second['clears'], second['clears_point']) == (
        0.75, [48, 64], False, True)
    assert staged['median']['recall'] == (54 / 64 + 0.75) / 2 and staged['median']['precision'] == 54 / 66
    assert (staged['cleared'], staged['cleared_point'], head['cleared'], head['cleared_point']) == (1, 2, 2, 2)
    test_auc = report['metrics']['Overall']['candidate']['auc_pr']
    assert staged['spread']['auc_pr'] == [0.85, test_auc] and head['spread']['auc_pr'] == [test_auc, test_auc]
    assert staged['eval']['auc_pr'] == log['eval']['auc_pr']
    assert staged['median']['epochs'] == sum(s['epochs_run'] for s in log['stages'])
    assert staged['median']['train_s'] == sum(s['wall_time_s'] for s in log['stages'])
