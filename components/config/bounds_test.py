"""Every bounded config value: out of bounds, the CLI exits 2 with one line naming the key, the value
and the range expected, before anything runs (the run_cli fixture calls `python -m pipeline` in this
process; loading a config imports no TensorFlow, config_test.py checks that in a process of its own)."""

import os

import pytest

from components import config as config_lib
from components.config import ConfigError

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'configs')
LOCAL = os.path.join(CONFIGS, 'local.yaml')
KUBEFLOW = os.path.join(CONFIGS, 'kubeflow.yaml')

STAGE = '{name: s%d, epochs: 1, unfreeze: none, optimizer: {learning_rate: 0.1}}'
RATE = "expected a finite number > 0 and <= 10, or 'auto'"


def _stages(count: int) -> str:
    return '[' + ', '.join(STAGE % i for i in range(count)) + ']'


def _refusal(run_cli, *overrides, config=LOCAL) -> str:
    """The one line `python -m pipeline run` prints when it refuses the config (exit 2)."""
    args = ['run', '--config', config]
    for override in overrides:
        args += ['--set', override]
    result = run_cli(*args)
    assert (result.returncode, result.stdout) == (2, '')
    [line] = result.stderr.strip().splitlines()
    assert line.startswith('invalid config: ')
    return line[len('invalid config: '):]


@pytest.mark.parametrize('override, line', [
    ('trainer.stages.0.optimizer.learning_rate=.inf', f'trainer.stages.0.optimizer.learning_rate = inf: {RATE}'),
    ('trainer.stages.0.optimizer.learning_rate=.nan', f'trainer.stages.0.optimizer.learning_rate = nan: {RATE}'),
    ('trainer.stages.1.optimizer.learning_rate=11', f'trainer.stages.1.optimizer.learning_rate = 11: {RATE}'),
    ('trainer.stages.0.lr_finder={max_lr: 100}',
     'trainer.stages.0.lr_finder.max_lr = 100: expected a finite number > 0 and <= 10'),
    ('trainer.stages.1.reduce_on_plateau={min_lr: .inf}',
     'trainer.stages.1.reduce_on_plateau.min_lr = inf: expected a finite number >= 0 and <= 10'),
    ('trainer.seed=-1', 'trainer.seed = -1: expected an integer >= 0 and < 4_294_967_296'),
    ('trainer.seed=4294967296', 'trainer.seed = 4294967296: expected an integer >= 0 and < 4_294_967_296'),
    ('model.backbone.source_task.seed=-1',
     'model.backbone.source_task.seed = -1: expected an integer >= 0 and < 4_294_967_296'),
    ('model.backbone.source_task.classes=[0, 10]',
     'model.backbone.source_task.classes.1 = 10: expected an integer >= 0 and <= 9'),
    ('model.head.hidden_units=[0]', 'model.head.hidden_units.0 = 0: expected an integer >= 1 and <= 65_536'),
    ('model.head.hidden_units=[32, 65537]',
     'model.head.hidden_units.1 = 65537: expected an integer >= 1 and <= 65_536'),
    ('model.head.dropout=1', 'model.head.dropout = 1: expected a finite number >= 0 and < 1'),
    ('model.input.height=4097', 'model.input.height = 4097: expected an integer >= 1 and <= 4096'),
    ('model.input.width=0', 'model.input.width = 0: expected an integer >= 1 and <= 4096'),
    ('model.augmentation={zoom: .inf}', 'model.augmentation.zoom = inf: expected a finite number >= 0 and < 1'),
    ('trainer.class_weight={9: 1001}', "trainer.class_weight: weight 1001 for label 9: expected 'balanced' or a "
     'mapping from label value to a weight > 0 and <= 1000, e.g. {1: 4.0}'),
    ('trainer.class_weight={9: .inf}', "trainer.class_weight: weight inf for label 9: expected 'balanced' or a "
     'mapping from label value to a weight > 0 and <= 1000, e.g. {1: 4.0}'),
    ('data.max_image_pixels=1_000_000_001',
     'data.max_image_pixels = 1000000001: expected an integer >= 1 and <= 1_000_000_000'),
    ('data.train_examples_per_class=0',
     'data.train_examples_per_class = 0: expected an integer >= 1 and <= 1_000_000_000'),
    ('data.splits.train=1001', 'data.splits.train = 1001: expected an integer >= 1 and <= 1000'),
    ('data.labels=[9, 9223372036854775808]', 'data.labels.1 = 9223372036854775808: expected an integer '
     '>= -9_223_372_036_854_775_808 and < 9_223_372_036_854_775_808'),
    ('trainer.stages.0.epochs=10001', 'trainer.stages.0.epochs = 10001: expected an integer >= 1 and <= 10_000'),
    ('model.backbone.source_task.epochs=0',
     'model.backbone.source_task.epochs = 0: expected an integer >= 1 and <= 10_000'),
    ('trainer.batch_size=65537', 'trainer.batch_size = 65537: expected an integer >= 1 and <= 65_536'),
    ('trainer.steps_per_epoch=10000001',
     'trainer.steps_per_epoch = 10000001: expected an integer >= 1 and <= 10_000_000'),
    ('trainer.stages.1.schedule.warmup_steps=-1',
     'trainer.stages.1.schedule.warmup_steps = -1: expected an integer >= 0 and <= 10_000_000'),
    ('trainer.stages.1.schedule.t_mul=.inf', 'trainer.stages.1.schedule.t_mul = inf: expected a finite number '
     '>= 1 and <= 100'),
    ('trainer.stages.1.early_stopping.patience=10001',
     'trainer.stages.1.early_stopping.patience = 10001: expected an integer >= 0 and <= 10_000'),
    ('trainer.stages.1.optimizer.weight_decay=2',
     'trainer.stages.1.optimizer.weight_decay = 2: expected a finite number >= 0 and <= 1'),
    ('trainer.stages.1.unfreeze={top_layers: 10001}',
     'trainer.stages.1.unfreeze.top_layers = 10001: expected an integer >= 1 and <= 10_000'),
    ('evaluation.thresholds.recall=.nan',
     'evaluation.thresholds.recall = nan: expected a finite number >= 0 and <= 1'),
])
def test_a_value_out_of_bounds_is_one_line_and_exit_2(run_cli, override, line):
    assert _refusal(run_cli, override) == line


@pytest.mark.parametrize('override, key, count, most', [
    ('model.head.hidden_units=[8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8]', 'model.head.hidden_units', 17, 16),
    (f'trainer.stages={_stages(33)}', 'trainer.stages', 33, 32),
    (f'trainer.warm_start={{stages: {_stages(33)}}}', 'trainer.warm_start.stages', 33, 32),
    ('evaluation.slices=[' + ', '.join(f'{{feature: f{i}}}' for i in range(33)) + ']', 'evaluation.slices', 33, 32),
], ids=['hidden layers', 'stages', 'warm-start stages', 'slices'])
def test_too_many_entries_is_one_line_and_exit_2(run_cli, override, key, count, most):
    line = _refusal(run_cli, override)
    assert line.startswith(f'{key} = [') and line.endswith(f': expected at most {most} entries, got {count}')


def test_kubeflow_accelerators_are_bounded(run_cli):
    assert _refusal(run_cli, 'kubeflow.trainer_resources.accelerator_count=17', config=KUBEFLOW) == (
        'kubeflow.trainer_resources.accelerator_count = 17: expected an integer >= 1 and <= 16')


def test_the_ceilings_themselves_are_accepted():
    config = config_lib.load_config(LOCAL, (
        'trainer.stages.0.optimizer.learning_rate=10', 'trainer.seed=4294967295', 'model.head.hidden_units=[65536]',
        'trainer.class_weight={9: 1000}', 'model.input={height: 4096, width: 4096, channels: 1}',
        'data.max_image_pixels=1_000_000_000', f'trainer.stages={_stages(32)}', 'trainer.batch_size=65536'))
    assert len(config.trainer.stages) == 32 and config.trainer.seed == 2**32 - 1


def test_ten_thousand_stages_are_refused_quickly():
    # Validation alone: PyYAML takes seconds to read 10,000 stages, so the CLI case above has 33.
    data = config_lib.read_config_file(LOCAL)
    data['trainer']['stages'] = [{'name': f's{i}', 'epochs': 1, 'unfreeze': 'none',
                                  'optimizer': {'learning_rate': 0.1}} for i in range(10_000)]
    with pytest.raises(ConfigError, match=r'^trainer\.stages = \[.*\.\.\.: expected at most 32 entries, got 10000$'):
        config_lib.validate(data)


def _nested(kind: str, depth: int) -> str:
    return '[' * depth + ']' * depth if kind == 'lists' else '{a: ' * depth + '1' + '}' * depth


@pytest.mark.parametrize('kind, column', [('lists', 42), ('mappings', 135)])
def test_a_deeply_nested_config_is_refused_in_one_line(run_cli, tmp_path, kind, column):
    deep = tmp_path / 'deep.yaml'
    # The 33rd collection, counting the top-level mapping, is one too deep.
    deep.write_text('pipeline: ' + _nested(kind, 10_000) + '\n')
    assert _refusal(run_cli, config=str(deep)) == (
        f'--config {deep}: line 1, column {column}: nested more than 32 levels deep; expected at most 32 '
        '(a config nests a few)')


def test_nesting_up_to_the_limit_is_read(tmp_path):
    fits = tmp_path / 'fits.yaml'
    fits.write_text('a: ' + _nested('lists', 31) + '\n')
    assert config_lib.read_config_file(str(fits))['a'] is not None
    fits.write_text('a: ' + _nested('lists', 32) + '\n')
    with pytest.raises(ConfigError, match='nested more than 32 levels deep'):
        config_lib.read_config_file(str(fits))


def test_deep_set_values_and_keys_are_refused_in_one_line(run_cli):
    assert _refusal(run_cli, 'model.head=' + _nested('lists', 10_000)) == (
        '--set model.head: line 1, column 31: nested more than 32 levels deep; expected at most 32 '
        '(a config nests a few)')
    # The key's levels count: 30 of them leave room for two more in the value, not three.
    key = 'model.backbone.keras_application.kwargs.' + '.'.join(['a'] * 26)
    assert _refusal(run_cli, f'{key}=[[1]]') == 'model.backbone.keras_application.name: required key is missing'
    assert 'nested more than 32 levels deep' in _refusal(run_cli, f'{key}=[[[1]]]')
    assert _refusal(run_cli, '.'.join(['a'] * 10_000) + '=1') == (
        f'--set {"a." * 20}...: a key 10000 levels deep; expected at most 32')
