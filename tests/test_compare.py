"""`python -m pipeline compare` on a tiny budget, through the CLI: one row per strategy with finite
metrics, each seed's intervals and verdicts under the gate's rule, the same test data for all, the
strategies trained as they say."""

import json
import math
import os

import pytest

from components.shared.artifact_files import TRAINING_LOG

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, 'configs', 'local.yaml')
STRATEGIES = ('scratch', 'full', 'head', 'staged', 'probe', 'guide')

pytestmark = pytest.mark.e2e


@pytest.fixture(scope='module')
def compared(tmp_path_factory, run_cli):
    runs_dir = tmp_path_factory.mktemp('runs')
    args = ['compare', '--config', CONFIG, '--strategies', ','.join(STRATEGIES), '--seeds', '1']
    # A tiny budget: 3 + 3 epochs for the staged plan, so 6 for each strategy, and a lower decision
    # threshold, so that even the model trained from scratch predicts some positives (precision
    # is undefined otherwise).
    for override in (f'pipeline.runs_dir={runs_dir}', 'trainer.stages.0.epochs=3', 'trainer.stages.1.epochs=3',
                     'evaluation.decision_threshold=0.3', 'model.backbone.source_task.epochs=5'):
        args += ['--set', override]
    result = run_cli(*args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    paths = {line.split(': ', 1)[0]: line.split(': ', 1)[1] for line in lines if line.startswith(('table: ', 'plot: ', 'data: '))}
    with open(paths['data']) as f:
        data = json.load(f)
    with open(paths['table']) as f:
        table = f.read()
    return lines, paths, data, table, os.path.join(runs_dir, 'digits-finetune', 'compare')


def test_one_row_per_strategy_with_finite_metrics(compared):
    lines, _, data, table, _ = compared
    assert [row['strategy'] for row in data['rows']] == list(STRATEGIES)
    assert data['metrics'] == ['recall', 'precision'] and data['seeds'] == [0]
    for row in data['rows']:
        for metric in data['metrics']:
            value = row['median'][metric]
            assert value is not None and math.isfinite(value) and 0 <= value <= 1, (row['strategy'], metric, value)
        # The headline, AUC-PR, on test (TFMA) and on eval (the Trainer's figure), with its spread.
        assert data['headline'] == ['auc_pr']
        for split in ('test', 'eval'):
            assert 0 < row[split]['auc_pr'] <= 1, (row['strategy'], split, row[split])
        assert row['spread']['auc_pr'] == [row['test']['auc_pr']] * 2
        # The configured plan's budget of 6 epochs, except for the baselines' own plans.
        assert row['median']['epochs'] <= {'probe': 50, 'guide': 30}.get(row['strategy'], 6)
    medians = table.split('\n\n')[0]  # the first table: medians, one row per strategy
    rows = [line for line in medians.splitlines() if line.startswith('| ') and not line.startswith('| strategy')]
    assert [r.split(' | ')[0].strip('| ') for r in rows] == list(STRATEGIES)
    for line in table.splitlines():  # the table is printed, too
        assert line in lines


def test_each_seed_has_its_floors_intervals_and_both_verdicts(compared):
    """The Evaluators decide at the configured 95%: each floor's interval is Clopper-Pearson on the
    counts recorded, a seed clears the gate when every lower bound clears its floor, and the point
    verdict compares the values; the table shows both and counts the seeds per strategy."""
    from statsmodels.stats.proportion import proportion_confint

    lines, _, data, table, _ = compared
    assert data['confidence'] == 0.95 and data['interval_method'] == 'clopper_pearson'
    from components.config import load_config

    floors = load_config(CONFIG).evaluation.thresholds
    assert data['floors'] == {'recall': floors.recall, 'precision': floors.precision}
    for row in data['rows']:
        for run in row['runs']:
            for metric in data['metrics']:
                k, n = run['counts'][metric]
                assert run[metric] == pytest.approx(k / n)
                reference = proportion_confint(k, n, alpha=0.05, method='beta')
                assert run['interval'][metric] == pytest.approx(list(reference))
            assert run['clears'] == all(run['interval'][m][0] >= floor for m, floor in data['floors'].items())
            assert run['clears_point'] == all(run[m] >= floor for m, floor in data['floors'].items())
            low, high = run['interval']['recall']
            cells = [row['strategy'], str(run['seed']), f"{run['recall']:.4f} [{low:.3f}, {high:.3f}]"]
            verdicts = ['yes' if run['clears'] else 'no', 'yes' if run['clears_point'] else 'no']
            assert any(line.startswith('| ' + ' | '.join(cells) + ' | ') and line.endswith(' | '.join(verdicts) + ' |')
                       for line in table.splitlines()), (cells, verdicts)
        assert row['cleared'] == sum(r['clears'] for r in row['runs'])
        assert row['cleared_point'] == sum(r['clears_point'] for r in row['runs'])
        assert (f"{row['strategy']}: {row['cleared']} of 1 seeds clear the gate at 95% (lower bound >= floor); "
                f"{row['cleared_point']} of 1 on the point values") in lines


def test_the_plot_is_an_svg_with_a_bar_group_per_strategy(compared):
    _, paths, _, _, _ = compared
    with open(paths['plot']) as f:
        text = f.read()
    assert text.startswith('<svg')
    for name in (*STRATEGIES, 'recall floor', 'precision floor'):
        assert f'>{name}<' in text


def test_each_strategy_trained_as_it_says_on_the_same_data(compared):
    from tfx.orchestration import metadata

    from components.reporting import run_summary

    _, _, _, _, work = compared
    records = run_summary.latest_run(metadata.sqlite_metadata_connection_config(os.path.join(work, 'metadata.sqlite')))
    logs = {}
    for name in STRATEGIES:
        trainer = records[f'Trainer_{name}_seed0']
        with open(os.path.join(trainer.outputs['model_run'][0].uri, TRAINING_LOG)) as f:
            logs[name] = json.load(f)
        # Every Evaluator read the one test split the data steps made.
        assert records[f'Evaluator_{name}_seed0'].inputs['examples'][0].id == \
            records['ImportExampleGen'].outputs['examples'][0].id
    assert [s['name'] for s in logs['staged']['stages']] == ['head', 'finetune']
    assert logs['head']['stages'][0]['unfrozen_layers'] == []
    assert logs['full']['stages'][0]['unfrozen_layers'] and 'backbone' in logs['full']['started_from']
    assert logs['scratch']['stages'][0]['unfrozen_layers'] and 'scratch' in logs['scratch']['started_from']
    for name in ('scratch', 'full', 'head'):  # one stage, one constant rate
        [stage] = logs[name]['stages']
        assert len(set(stage['lr_by_step'])) == 1
    # The baselines: a linear probe on the frozen backbone (one dense unit on the pooled features,
    # no augmentation), and the Keras guide's two steps (frozen, then everything at 1e-5).
    [probe] = logs['probe']['stages']
    assert probe['unfrozen_layers'] == [] and logs['probe']['augmentation'] is None
    # The default's head has a hidden layer of 32 units; the probe's is one unit on the features.
    assert probe['trainable_params'] < logs['head']['stages'][0]['trainable_params']
    assert probe['epochs_run'] <= 50
    head, finetune = logs['guide']['stages']
    assert head['unfrozen_layers'] == [] and head['epochs_run'] == 20
    assert finetune['unfrozen_layers'] and finetune['epochs_run'] == 10 and max(finetune['lr_by_step']) == pytest.approx(1e-5)
    assert logs['guide']['augmentation'] == {'flip': 'horizontal', 'rotation': 0.1}
    # Nothing of the comparison reaches production.
    assert not os.path.exists(os.path.join(os.path.dirname(work), 'serving'))
