import os
import subprocess
import sys

import pytest

from components import config as config_lib
from components.config import ConfigError, load_config

LOCAL = os.path.join(os.path.dirname(__file__), '..', '..', 'configs', 'local.yaml')


def _load(*overrides):
    return load_config(LOCAL, overrides)


def test_default_config_is_valid_and_typed():
    config = _load()
    assert config.trainer.stages[0].unfreeze.mode == 'none'
    assert config.trainer.stages[1].unfreeze.mode == 'all'
    # Stage 2 fine-tunes the backbone more gently than stage 1 trains the head.
    assert config.trainer.stages[1].optimizer.learning_rate < config.trainer.stages[0].optimizer.learning_rate
    assert config.run_dir == os.path.join('runs', 'digits-finetune')


def test_exponent_notation_is_a_number():
    assert _load('trainer.stages.0.optimizer.learning_rate=2e-4').trainer.stages[0].optimizer.learning_rate == 2e-4


def test_override_addresses_list_items_and_parses_yaml():
    config = _load('trainer.stages.1.unfreeze={top_layers: 3}', 'model.head.hidden_units=[8, 4]')
    assert config.trainer.stages[1].unfreeze.mode == 'top_layers'
    assert config.trainer.stages[1].unfreeze.top_layers == 3
    assert config.model.head.hidden_units == (8, 4)


@pytest.mark.parametrize('override, key, value, expected', [
    ('evaluation.thresholds.recall=1.01', 'evaluation.thresholds.recall', '1.01', 'expected a finite number >= 0 and <= 1'),
    ('trainer.stages.0.optimizer.learning_rate=-0.1', 'trainer.stages.0.optimizer.learning_rate', '-0.1',
     "expected a finite number > 0 and <= 10, or 'auto'"),
    ('trainer.stages.1.epochs=0', 'trainer.stages.1.epochs', '0', 'expected an integer >= 1 and <= 10_000'),
    ('trainer.batch_size="32"', 'trainer.batch_size', "'32'", 'valid integer'),
    ('model.backbone={keras_file: no/such/backbone.keras}', 'model.backbone.keras_file',
     'no/such/backbone.keras', 'existing file'),
    ('trainer.stages.0.unfreeze=some', 'trainer.stages.0.unfreeze', "'some'", "'none', 'all'"),
    ('trainer.stages.0.optimizer.name=adagrad', 'trainer.stages.0.optimizer.name', 'adagrad', 'adam'),
    ('trainer.stages.1.early_stopping.monitor=loss', 'trainer.stages.1.early_stopping.monitor', 'loss',
     'validation metric'),
    ('task.positive_class=3', '<top level>', '3', 'not among data.digits_classes'),
    ('trainer.stages.0.optimizer.learning_rate=fast', 'trainer.stages.0.optimizer.learning_rate', 'fast',
     "expected a finite number > 0 and <= 10, or 'auto'"),
    ('trainer.stages.1.reduce_on_plateau={factor: 0.5}', 'trainer.stages.1', 'cosine', 'schedule constant'),
    ('trainer.stages.1.layerwise_decay=1.5', 'trainer.stages.1.layerwise_decay', '1.5', 'expected a finite number > 0 and <= 1'),
    ('trainer.stages.1.lr_finder={min_lr: 0.1, max_lr: 0.01}', 'trainer.stages.1.lr_finder', '0.01', 'max_lr > min_lr'),
    ('evaluation.max_drop.recall=-0.01', 'evaluation.max_drop.recall', '-0.01', 'expected a finite number >= 0 and <= 1'),
    ('evaluation.thresholds.auc_pr=1.5', 'evaluation.thresholds.auc_pr', '1.5', 'expected a finite number >= 0 and <= 1'),
    ('evaluation.thresholds={}', 'evaluation', 'thresholds = {}', 'at least one floor'),
    ('evaluation.class_thresholds={9: {recall: 0.9}}', '<top level>', 'class_thresholds', 'multiclass'),
    ('evaluation.slices=[{values: [1]}]', 'evaluation.slices.0.feature', '', 'required'),
    ('task.type=regression', 'task.type', 'regression', "'binary' or 'multiclass'"),
    ('evaluation.slices=[{feature: label}]', '<top level>', "feature 'label' is the label", 'class_thresholds'),
    ('data.pattern=/abs/{SPAN}', 'data.pattern', '/abs/{SPAN}', 'a glob relative to data.path'),
    ('data.pattern=v{VERSION}/*', 'data.pattern', 'v{VERSION}/*', '{VERSION} needs {SPAN}'),
    ('data.source=parquet', 'data.source', 'parquet', "'digits', 'tfrecord', 'images' or 'csv'"),
    ('data.rolling_spans=3', 'data', 'rolling_spans 3', "needs {SPAN} in data.pattern (got '*')"),
    ('data.rolling_spans=0', 'data.rolling_spans', '0', 'expected an integer >= 1 and <= 1000'),
    ('model.augmentation={flip: diagonal}', 'model.augmentation.flip', 'diagonal', "'horizontal', 'vertical' or"),
    ('model.augmentation={rotation: 2}', 'model.augmentation.rotation', '2', 'expected a finite number >= 0 and <= 0.5'),
    ('data.source=images', 'data', 'source', 'expected `path` (the directory holding the data) when source is images'),
    ('data.max_image_pixels=0', 'data.max_image_pixels', '0', 'expected an integer >= 1 and <= 1_000_000_000'),
    ('data.max_image_pixels=1.5', 'data.max_image_pixels', '1.5', 'valid integer'),
    ('data.class_names={no: 0, yes: 1}', 'data.class_names', '[False, True]', "expected folder names in quotes"),
    ('evaluation.confidence=95', 'evaluation.confidence', '95', 'expected a finite number > 0.5 and < 1'),
    ('evaluation.confidence=0.3', 'evaluation.confidence', '0.3', 'expected a finite number > 0.5 and < 1'),
    ('evaluation.interval=wald', 'evaluation.interval', 'wald', "'clopper_pearson' or 'wilson'"),
])
def test_bad_value_names_key_value_and_expectation(override, key, value, expected):
    with pytest.raises(ConfigError) as error:
        _load(override)
    message = str(error.value)
    assert '\n' not in message
    assert message.startswith(key)
    assert value in message
    assert expected in message


@pytest.mark.parametrize('overrides, key, expected', [
    (('task.type=multiclass',), 'task', '`positive_class` is for type binary'),
    (('task.type=multiclass', 'task.positive_class=null', 'evaluation.class_thresholds={3: {recall: 0.9}}'),
     '<top level>', 'names [3], which are not among task.classes [5, 6, 7, 8, 9]'),
    (('task.type=multiclass', 'task.positive_class=null', 'evaluation.class_thresholds={9: {accuracy: 0.9}}'),
     'evaluation.class_thresholds.9.accuracy', 'should be null'),
    (('task.positive_class=null',), 'task', 'expected `positive_class`'),
    (('model.backbone={keras_application: {name: RegNetX002}}', 'model.input.channels=3'),
     'model.backbone.keras_application', "name 'RegNetX002': not a keras.applications network whose input "
     'preprocessing is known; expected one of ConvNeXtBase, '),
    (('trainer.class_weight={9: 4, 5: 1, 6: 2}',), '<top level>',
     'a binary task weighs all negatives alike, got {5: 1.0, 6: 2.0}'),
    (('trainer.class_weight={3: 2}',), '<top level>', 'names labels [3], which are not among the labels [5, 6, 7, 8, 9]'),
    (('trainer.class_weight=heavy',), 'trainer.class_weight', "expected 'balanced' or a mapping"),
    (('trainer.class_weight={9: 0}',), 'trainer.class_weight', "expected 'balanced' or a mapping"),
    (('model.backbone={keras_application: {name: ResNet50}}',), 'model',
     'input.channels = 1: ResNet50 takes caffe-style preprocessing, which is defined on RGB images; expected channels 3'),
    (('model.backbone={keras_application: {name: ResNet50, preprocessing: bgr}}', 'model.input.channels=3'),
     'model.backbone.keras_application.preprocessing', "'tf', 'caffe', 'torch', 'raw255' or 'none'"),
])
def test_bad_task_and_gate_combinations_are_named(overrides, key, expected):
    with pytest.raises(ConfigError) as error:
        config_lib.load_config(LOCAL, overrides)
    assert str(error.value).startswith(key) and expected in str(error.value)


def test_multiclass_gate_with_per_class_floors_and_slices():
    config = config_lib.load_config(LOCAL, (
        'task.type=multiclass', 'task.positive_class=null', 'evaluation.class_thresholds={9: {recall: 0.9}}',
        'evaluation.max_drop={recall: 0.01}', 'evaluation.slices=[{feature: source, values: [a, 2]}]'))
    assert config.classes == (5, 6, 7, 8, 9)
    assert config.evaluation.class_thresholds[9].items() == [('recall', 0.9)]
    assert config.evaluation.max_drop.items() == [('recall', 0.01)]
    assert config.evaluation.slices[0].values == ('a', 2)


def test_input_pattern_defaults_follow_the_source(tmp_path):
    assert _load().data.input_pattern == '*'
    labels = 'data.labels=[0, 9]'
    assert _load('data.source=images', f'data.path={tmp_path}', labels).data.input_pattern == '*/*'
    assert _load('data.source=csv', f'data.path={tmp_path}', labels).data.input_pattern == '*.csv'
    assert _load('data.source=csv', f'data.path={tmp_path}', labels,
                 'data.pattern=span-{SPAN}/*.csv').data.input_pattern == 'span-{SPAN}/*.csv'


def test_known_labels_for_data_validation(tmp_path):
    assert _load().known_labels == (5, 6, 7, 8, 9)  # the digits the data set is made of
    assert _load('data.labels=[1, 9]').known_labels == (1, 9)
    assert _load('data.source=tfrecord', f'data.path={tmp_path}', 'data.labels=[0, 9]').known_labels == (0, 9)
    multiclass = _load('data.source=tfrecord', f'data.path={tmp_path}', 'task.type=multiclass',
                       'task.positive_class=null', 'task.classes=[3, 4]')
    assert multiclass.known_labels == (3, 4)


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r'^trainer\.stages\.0\.learning_rate: unknown key'):
        _load('trainer.stages.0.learning_rate=0.1')


def test_missing_required_key_is_named():
    data = config_lib.read_config_file(LOCAL)
    del data['evaluation']['thresholds']
    with pytest.raises(ConfigError, match=r'^evaluation\.thresholds: required key is missing$'):
        config_lib.validate(data)


def test_keras_application_preprocessing_defaults_to_its_family_unless_stated():
    def app(*overrides):
        return _load('model.input.channels=3', *overrides).model.backbone.keras_application

    assert app('model.backbone={keras_application: {name: MobileNetV2}}').input_preprocessing == 'tf'
    assert app('model.backbone={keras_application: {name: VGG19}}').input_preprocessing == 'caffe'
    assert app('model.backbone={keras_application: {name: DenseNet121}}').input_preprocessing == 'torch'
    assert app('model.backbone={keras_application: {name: EfficientNetV2B0}}').input_preprocessing == 'raw255'
    assert app('model.backbone={keras_application: {name: RegNetX002, preprocessing: raw255}}').input_preprocessing == 'raw255'
    assert app('model.backbone={keras_application: {name: ResNet50, preprocessing: none}}').input_preprocessing == 'none'


def test_class_weight_is_given_to_keras_by_target():
    assert _load('trainer.class_weight=balanced').class_weight == 'balanced'
    assert _load().class_weight is None
    # binary: positive_class 9 -> target 1, the other labels -> target 0.
    assert _load('trainer.class_weight={9: 4, 5: 0.5, 7: 0.5}').class_weight == {0: 0.5, 1: 4.0}
    assert _load('trainer.class_weight={9: 4}').class_weight == {0: 1.0, 1: 4.0}
    multiclass = ('task.type=multiclass', 'task.positive_class=null', 'evaluation.max_drop={}',
                  'task.classes=[9, 5, 6, 7, 8]', 'trainer.class_weight={9: 3, 6: 2}')
    assert _load(*multiclass).class_weight == {0: 3.0, 1: 1.0, 2: 2.0, 3: 1.0, 4: 1.0}


def test_a_binary_task_on_own_data_declares_its_label_values(tmp_path):
    with pytest.raises(ConfigError) as error:
        _load('data.source=tfrecord', f'data.path={tmp_path}')
    assert str(error.value).startswith('<top level>: data.labels: required for a binary task on your own data: '
                                       'the label values it may hold, e.g. [0, 9]')
    with pytest.raises(ConfigError, match=r'task.positive_class 9 is not among data.labels \[0, 1\]'):
        _load('data.source=tfrecord', f'data.path={tmp_path}', 'data.labels=[0, 1]')


def test_two_backbones_are_rejected(tmp_path):
    weights = tmp_path / 'b.keras'
    weights.write_bytes(b'')
    with pytest.raises(ConfigError, match='^model.backbone: expected exactly one of source_task, keras_file, keras_application'):
        _load(f'model.backbone.keras_file={weights}')


def test_malformed_override_is_a_config_error():
    with pytest.raises(ConfigError, match='expected dotted.key=value'):
        _load('trainer.batch_size')


def test_sections_round_trip_through_plain_data():
    config = _load()
    stage = config.trainer.stages[1]
    assert config_lib.validate(stage.model_dump(mode='json'), config_lib.Stage) == stage


def test_photos_example_is_valid_once_its_folder_exists(tmp_path):
    photos = os.path.join(os.path.dirname(LOCAL), 'photos.yaml')
    with pytest.raises(ConfigError, match='^data.path = .data/photos.: expected an existing file or directory'):
        load_config(photos)
    config = load_config(photos, (f'data.path={tmp_path}',))
    assert config.model.backbone.keras_application.input_preprocessing == 'tf'
    assert config.evaluation.decision_target.target_recall == 0.8
    assert config.trainer.class_weight == 'balanced' and config.model.augmentation.flip == 'horizontal'


def test_cli_rejects_bad_value_with_exit_2_before_importing_tensorflow():
    code = ('import sys; from pipeline.cli import main; '
            'rc = main(["run", "--config", sys.argv[1], "--set", "evaluation.thresholds.recall=1.01"]); '
            'print("tensorflow imported:", "tensorflow" in sys.modules); sys.exit(rc)')
    result = subprocess.run([sys.executable, '-c', code, LOCAL], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        'invalid config: evaluation.thresholds.recall = 1.01: expected a finite number >= 0 and <= 1']
    assert 'tensorflow imported: False' in result.stdout


def test_cli_usage_error_exits_2():
    result = subprocess.run([sys.executable, '-m', 'pipeline', 'run'], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert '--config' in result.stderr


KUBEFLOW = os.path.join(os.path.dirname(LOCAL), 'kubeflow.yaml')


@pytest.mark.parametrize('override, key, expected', [
    ('kubeflow.step_resources.accelerator=nvidia.com/gpu', 'kubeflow.step_resources', 'only the Trainer'),
    ('kubeflow.trainer_resources.memory=lots', 'kubeflow.trainer_resources.memory', 'should match pattern'),
    ('kubeflow.schedule.cron=weekly', 'kubeflow.schedule.cron', 'should match pattern'),
    ('kubeflow.schedule.max_concurrency=2', 'kubeflow.schedule.max_concurrency', 'less than or equal to 1'),
    ('data.source=digits', '<top level>', 'kubeflow: expected data.source tfrecord, images or csv'),
])
def test_bad_kubeflow_values_are_named(override, key, expected):
    with pytest.raises(ConfigError) as error:
        config_lib.load_config(KUBEFLOW, (override,))
    assert str(error.value).startswith(key) and expected in str(error.value)


def test_kubeflow_example_is_valid_and_object_storage_paths_are_not_checked_here():
    config = config_lib.load_config(KUBEFLOW)
    assert config.data.path.startswith('gs://')
    assert config.kubeflow.trainer_resources.accelerator == 'nvidia.com/gpu'
    assert config.kubeflow.step_resources.accelerator is None


def _cli(*argv, timeout=60):
    """`python -m pipeline ARGV` in its own process, reporting whether TensorFlow was imported."""
    code = ('import sys; from pipeline.cli import main; rc = main(sys.argv[1:]); '
            'print("tensorflow imported:", "tensorflow" in sys.modules); sys.exit(rc)')
    return subprocess.run([sys.executable, '-c', code, *argv], capture_output=True, text=True, timeout=timeout)


def test_yaml_aliases_are_refused_before_they_expand(tmp_path):
    # 9 levels of 9 aliases: a few hundred bytes that expand to 9**9 strings once validated.
    lines = ['a0: &a0 [x, x, x, x, x, x, x, x, x]']
    lines += [f'a{i}: &a{i} [' + ', '.join([f'*a{i - 1}'] * 9) + ']' for i in range(1, 10)]
    bomb = tmp_path / 'bomb.yaml'
    bomb.write_text('\n'.join(lines) + '\n')
    assert bomb.stat().st_size < 600
    result = _cli('run', '--config', str(bomb), timeout=20)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f'invalid config: --config {bomb}: line 2, column 10: YAML aliases (*name) are not supported in a config; '
        'write the value out']
    assert 'tensorflow imported: False' in result.stdout
    with pytest.raises(ConfigError, match=r'^--set model.head: line 1, column 8: YAML aliases'):
        _load('model.head=[&a 1, *a]')


def test_a_file_larger_than_any_config_is_refused_unread(tmp_path):
    big = tmp_path / 'big.yaml'
    big.write_text('x: ' + 'y' * (config_lib.MAX_CONFIG_BYTES + 10))
    with pytest.raises(ConfigError, match=rf'^--config {big}: larger than 1048576 bytes'):
        load_config(str(big))
    latin1 = tmp_path / 'latin1.yaml'
    latin1.write_bytes(b'pipeline: {name: caf\xe9}\n')
    with pytest.raises(ConfigError, match=rf'^--config {latin1}: not UTF-8 text \(byte 20\)$'):
        load_config(str(latin1))


@pytest.mark.parametrize('name', ['.', '..'])
def test_stage_names_that_are_relative_directories_are_refused(name):
    result = _cli('run', '--config', LOCAL, '--set', f'trainer.stages.0.name={name}')
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"invalid config: trainer.stages.0.name = '{name}': expected a name with a letter, digit, _ or - in it "
        "(it names a directory of the Trainer's output)"]
    assert 'tensorflow imported: False' in result.stdout


SECRET = 'wJalrXUtnFEMIK7MDENGbPxRfiCY'


@pytest.mark.parametrize('command, config, override, line', [
    ('run', LOCAL, f'pipeline.beam_args=[--s3_secret_access_key={SECRET}]',
     "pipeline.beam_args: '--s3_secret_access_key' carries a credential"),
    ('run', LOCAL, f'pipeline.beam_args=[--direct_num_workers=2, --aws_session_token, {SECRET}]',
     "pipeline.beam_args: '--aws_session_token' carries a credential"),
    ('compile', KUBEFLOW, f'kubeflow.beam_args=[--runner=DataflowRunner, --hdfs_password={SECRET}]',
     "kubeflow.beam_args: '--hdfs_password' carries a credential"),
    ('compile', KUBEFLOW, f'kubeflow.beam_args=[--api_key={SECRET}]',
     "kubeflow.beam_args: '--api_key' carries a credential"),
    ('compile', KUBEFLOW, f'data.path=s3://reader:{SECRET}@bucket/photos',
     'data.path: a URL with user:password@ carries a credential'),
    ('run', LOCAL, f'model.backbone.keras_file=https://me:{SECRET}@example.com/b.keras',
     'model.backbone.keras_file: a URL with user:password@ carries a credential'),
])
def test_credentials_in_clear_text_are_refused_at_compile_and_run_without_printing_them(
        tmp_path, command, config, override, line):
    args = [command, '--config', config, '--set', override]
    if command == 'compile':
        args += ['--output', str(tmp_path / 'spec.yaml')]
    result = _cli(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f'invalid config: {line}; ')
    assert 'service account' in lines[0] and 'environment' in lines[0]
    assert SECRET not in result.stdout + result.stderr
    assert not (tmp_path / 'spec.yaml').exists()
    assert 'tensorflow imported: False' in result.stdout


def test_beam_arguments_that_name_a_key_resource_are_not_credentials():
    config = config_lib.load_config(KUBEFLOW, (
        'kubeflow.beam_args=[--runner=DataflowRunner, --dataflow_kms_key=projects/p/locations/l/keyRings/r/cryptoKeys/k]',))
    assert config.kubeflow.beam_args[1].startswith('--dataflow_kms_key=')
