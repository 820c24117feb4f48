import json
import os
import subprocess
import sys

import pytest

from components.config import ConfigError, load_config, validate
from components.config.tuning import SearchRange, apply_values, storage_url, to_trainer_inputs

LOCAL = os.path.join(os.path.dirname(__file__), '..', '..', 'configs', 'local.yaml')
HEAD_LR = 'trainer.stages.head.optimizer.learning_rate'


def _tuning(space: str, **settings) -> str:
    extra = ''.join(f', {k}: {v}' for k, v in settings.items())
    return f'tuning={{space: {{{space}}}{extra}}}'


BAD = [
    (f'{HEAD_LR}: {{space: log_uniform, low: 0, high: 1e-2}}',
     f'tuning.space.{HEAD_LR}: space log_uniform: expected low > 0 (a log scale does not reach 0 or below), got low 0'),
    (f'{HEAD_LR}: {{space: uniform, low: 1e-2, high: 1e-3}}',
     f'tuning.space.{HEAD_LR}: expected low < high, got low 0.01 >= high 0.001'),
    (f'{HEAD_LR}: {{space: log_uniform, low: 1e-4, high: 20}}',
     f'<top level>: tuning.space.{HEAD_LR}: 20 is not a value the field takes (trainer.stages.0.optimizer.'
     "learning_rate = 20.0: expected a finite number > 0 and <= 10, or 'auto')"),
    ('trainer.stages.hed.optimizer.learning_rate: {space: log_uniform, low: 1e-4, high: 1e-2}',
     "<top level>: tuning.space.trainer.stages.hed.optimizer.learning_rate: names no field ('hed' is not one of "
     "['head', 'finetune'])"),
    ('trainer.stages.head.optimizer.lr: {space: log_uniform, low: 1e-4, high: 1e-2}',
     "<top level>: tuning.space.trainer.stages.head.optimizer.lr: names no field ('lr' is not one of ['clipnorm', "
     "'learning_rate', 'momentum', 'name', 'weight_decay'])"),
    ('data.splits.train: {space: int, low: 1, high: 3}',
     "tuning.space: 'data.splits.train': expected a field path under trainer.stages., model.head., "
     'model.augmentation. (e.g. trainer.stages.head.optimizer.learning_rate)'),
    ('trainer.stages.head.epochs: {space: int, low: 0, high: 12}',
     '<top level>: tuning.space.trainer.stages.head.epochs: the first stage cannot be left out (epochs 0); '
     'expected low >= 1'),
    ('model.head.dropout: {space: uniform, low: 0, high: 1}',
     '<top level>: tuning.space.model.head.dropout: 1 is not a value the field takes (model.head.dropout = 1.0: '
     'expected a finite number >= 0 and < 1)'),
    ('trainer.stages.finetune.unfreeze.top_fraction: {space: uniform, low: 0.2, high: 0.8}',
     '<top level>: tuning.space.trainer.stages.finetune.unfreeze.top_fraction: names no field in use: the stage '
     'unfreezes by all, not top_fraction'),
    (f'{HEAD_LR}: {{space: choice, values: [0.001]}}',
     f'tuning.space.{HEAD_LR}.values = [0.001]: expected at least 2 entries, got 1'),
]


@pytest.mark.parametrize('space, line', BAD, ids=[b[1][:60] for b in BAD])
def test_a_bad_search_space_is_one_line_naming_the_path(space, line):
    with pytest.raises(ConfigError) as error:
        load_config(LOCAL, (_tuning(space),))
    assert str(error.value) == line


def test_bad_settings_and_an_objective_of_another_task_are_named():
    space = f'{HEAD_LR}: {{space: log_uniform, low: 1e-4, high: 1e-2}}'
    with pytest.raises(ConfigError, match=r"^<top level>: tuning.objective = 'accuracy': expected an objective of a "
                                          r'binary task \(auc_pr\)$'):
        load_config(LOCAL, (_tuning(space, objective='accuracy'),))
    with pytest.raises(ConfigError, match=r'^tuning: parallel_trials 2: expected storage, a database URL every worker'):
        load_config(LOCAL, (_tuning(space, parallel_trials=2),))
    with pytest.raises(ConfigError, match=r'^tuning.trials = 0: expected an integer >= 1 and <= 1000$'):
        load_config(LOCAL, (_tuning(space, trials=0),))
    with pytest.raises(ConfigError, match=r"tuning.storage: a URL with user:password@ carries a credential"):
        load_config(LOCAL, (_tuning(space, parallel_trials=2, storage='"mysql://u:secret@db/t"'),))


def test_the_cli_refuses_a_bad_space_with_exit_2_before_importing_tensorflow():
    code = ('import sys; from pipeline.cli import main; '
            'rc = main(["run", "--config", sys.argv[1], "--set", sys.argv[2]]); '
            'print("tensorflow imported:", "tensorflow" in sys.modules); sys.exit(rc)')
    result = subprocess.run([sys.executable, '-c', code, LOCAL, _tuning(BAD[0][0])], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f'invalid config: {BAD[0][1]}']
    assert 'tensorflow imported: False' in result.stdout


def test_searched_values_land_in_the_config_and_the_trainer_inputs_and_epochs_0_leaves_a_stage_out():
    config = load_config(LOCAL, (_tuning(f'{HEAD_LR}: {{space: log_uniform, low: 1e-4, high: 1e-2}}, '
                                         'trainer.stages.finetune.epochs: {space: int, low: 0, high: 12, step: 4}'),))
    data = config.model_dump(mode='json', exclude={'tuning'})
    tuned = validate(apply_values(data, {HEAD_LR: 0.004, 'model.head.hidden_units.0': 48}))
    assert tuned.trainer.stages[0].optimizer.learning_rate == 0.004 and tuned.model.head.hidden_units == (48,)
    without = validate(apply_values(data, {'trainer.stages.finetune.epochs': 0}))
    assert [s.name for s in without.trainer.stages] == ['head']
    # The Trainer's inputs hold the head and augmentation at the top level.
    inputs = {'trainer': data['trainer'], 'head': data['model']['head'], 'augmentation': None}
    moved = to_trainer_inputs(inputs, {'model.head.dropout': 0.4, 'trainer.stages.finetune.epochs': 4})
    assert moved['head']['dropout'] == 0.4 and moved['trainer']['stages'][1]['epochs'] == 4
    assert inputs['head']['dropout'] == 0.2  # a copy: the recipe is unchanged


def test_what_a_range_can_draw():
    assert SearchRange(space='int', low=0, high=12, step=4).contains(8)
    assert not SearchRange(space='int', low=0, high=12, step=4).contains(6)
    assert SearchRange(space='log_uniform', low=1e-4, high=1e-2).contains(1e-3)
    assert not SearchRange(space='log_uniform', low=1e-4, high=1e-2).contains(0.1)
    assert SearchRange(space='choice', values=(0, 6, 12)).contains(12)


def test_a_storage_url_from_the_workers_environment():
    assert storage_url('env:TUNING_DB', {'TUNING_DB': 'mysql+pymysql://t@db/x'}) == 'mysql+pymysql://t@db/x'
    assert storage_url('sqlite:///a.db', {}) == 'sqlite:///a.db'
    with pytest.raises(ValueError, match='the environment variable TUNING_DB is not set on this worker'):
        storage_url('env:TUNING_DB', {})


def test_the_photos_template_searches_both_stages_and_can_start_from_its_own_values(tmp_path):
    config = load_config(os.path.join(os.path.dirname(LOCAL), 'photos.yaml'), (f'data.path={tmp_path}',))
    space = config.tuning.space
    assert set(space) == {HEAD_LR, 'trainer.stages.top.optimizer.learning_rate', 'trainer.stages.top.epochs'}
    stages = {s.name: s for s in config.trainer.stages}
    for path, search in space.items():
        _, _, stage, *_, field = path.split('.')
        value = stages[stage].optimizer.learning_rate if field == 'learning_rate' else getattr(stages[stage], field)
        assert search.contains(value), path
    assert json.loads(config.tuning.model_dump_json())['trials'] == 6


def test_reused_values_must_come_from_one_file_that_fits_this_config(tmp_path):
    good, bad, crowded = (tmp_path / name for name in ('good', 'bad', 'crowded'))
    for directory, values in ((good, {HEAD_LR: 0.01}), (bad, {'trainer.stages.top.epochs': 4}), (crowded, {})):
        directory.mkdir()
        (directory / 'best_hyperparameters.txt').write_text(json.dumps({'values': values}))
    (crowded / 'other.txt').write_text('')
    assert load_config(LOCAL, (f'tuning={{reuse: {good}}}',)).tuning.reuse == str(good)
    with pytest.raises(ConfigError) as error:
        load_config(LOCAL, (f'tuning={{reuse: {bad}}}',))
    assert str(error.value) == (f"<top level>: tuning.reuse = '{bad}': its values do not fit this config: names no "
                                "field ('top' is not one of ['head', 'finetune'])")
    with pytest.raises(ConfigError, match=r"expected an earlier search's best_hyperparameters directory, holding one "
                                          r'file \(found 2 entries\)$'):
        load_config(LOCAL, (f'tuning={{reuse: {crowded}}}',))
    with pytest.raises(ConfigError, match=r'^tuning: expected space \(the fields to search'):
        load_config(LOCAL, ('tuning={trials: 3}',))
