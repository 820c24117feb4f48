"""The real pipeline, run through the CLI on the embedded default, once per test session.

First run: pushes. Second run in the same place with unreachable thresholds: not blessed, exit 3,
and the served model is untouched. Many assertions read the outputs of these two runs.
"""

import hashlib
import json
import os
import subprocess
import sys
import types

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, 'configs', 'local.yaml')
PIPELINE_NODES = {
    'ImportExampleGen', 'StatisticsGen', 'SchemaGen', 'ExampleValidator', 'DataValidationGate', 'Transform',
    'backbone_importer', 'Trainer', 'latest_blessed_model_resolver', 'Evaluator', 'Pusher',
}

pytestmark = pytest.mark.e2e


def _run_cli(runs_dir, *overrides):
    args = [sys.executable, '-m', 'pipeline', 'run', '--config', CONFIG, '--set', f'pipeline.runs_dir={runs_dir}']
    for override in overrides:
        args += ['--set', override]
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=1500)


def _records(run_dir):
    from tfx import v1 as tfx

    from pipeline import outcome

    connection = tfx.orchestration.metadata.sqlite_metadata_connection_config(os.path.join(run_dir, 'metadata.sqlite'))
    return outcome.latest_run(connection)


def _tree_digest(path):
    digest = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            digest.update(os.path.relpath(full, path).encode())
            with open(full, 'rb') as f:
                digest.update(f.read())
    return digest.hexdigest()


@pytest.fixture(scope='session')
def first_run(tmp_path_factory):
    runs_dir = tmp_path_factory.mktemp('runs')
    result = _run_cli(runs_dir)
    run_dir = os.path.join(runs_dir, 'digits-finetune')
    return types.SimpleNamespace(result=result, run_dir=run_dir, records=_records(run_dir),
                                 lines=result.stdout.strip().splitlines())


@pytest.fixture(scope='session')
def rejected_run(first_run):
    serving = os.path.join(first_run.run_dir, 'serving')
    before = _tree_digest(serving)
    result = _run_cli(os.path.dirname(first_run.run_dir),
                      'evaluation.thresholds.recall=1.0', 'evaluation.thresholds.precision=1.0')
    return types.SimpleNamespace(result=result, serving_before=before, serving_after=_tree_digest(serving),
                                 records=_records(first_run.run_dir), lines=result.stdout.strip().splitlines())


def _pushed_path(lines):
    assert lines[-1].startswith('pushed: '), lines[-5:]
    return lines[-1][len('pushed: '):]


def test_run_exits_0_and_ends_with_pushed_savedmodel(first_run):
    assert first_run.result.returncode == 0, first_run.result.stdout[-3000:] + first_run.result.stderr[-3000:]
    pushed = _pushed_path(first_run.lines)
    assert pushed.startswith(os.path.join(first_run.run_dir, 'serving'))
    assert os.path.isfile(os.path.join(pushed, 'saved_model.pb'))
    assert first_run.lines[-2].startswith('training log: ')


def test_every_component_executed(first_run):
    states = {node: record.state for node, record in first_run.records.items()}
    assert set(states) == PIPELINE_NODES
    assert set(states.values()) == {'COMPLETE'}, states


def test_trainer_started_from_the_imported_backbone(first_run):
    imported = first_run.records['backbone_importer'].outputs['result'][0]
    trainer_input = first_run.records['Trainer'].inputs['base_model'][0]
    assert trainer_input.id == imported.id
    assert os.path.isfile(os.path.join(imported.uri, 'backbone.keras'))
    with open(os.path.join(imported.uri, 'source_task.json')) as f:
        source_task = json.load(f)
    # The backbone learned its source task (digits 0-4), which the target task never sees.
    assert source_task['classes'] == [0, 1, 2, 3, 4]
    assert source_task['held_out_accuracy'] > 0.9


@pytest.fixture(scope='session')
def training_log(first_run):
    path = first_run.lines[-2][len('training log: '):]
    assert path.startswith(first_run.records['Trainer'].outputs['model_run'][0].uri)
    with open(path) as f:
        return json.load(f)


def test_stage_one_trains_the_head_with_the_backbone_frozen(training_log):
    head = training_log['stages'][0]
    assert head['name'] == 'head'
    assert head['unfrozen_layers'] == []
    assert head['non_trainable_params'] > head['trainable_params'] > 0


def test_stage_two_unfreezes_the_backbone_with_a_smaller_learning_rate(training_log):
    head, finetune = training_log['stages']
    assert finetune['unfrozen_layers'] == ['block1_conv', 'block2_conv', 'block3_conv']
    assert finetune['trainable_params'] > head['trainable_params']
    assert max(finetune['lr_by_step']) < min(head['lr_by_step'])


def test_learning_rate_is_logged_for_every_step_and_epoch(training_log):
    for stage in training_log['stages']:
        assert len(stage['lr_by_step']) == stage['epochs_run'] * stage['steps_per_epoch']
        assert len(stage['epochs']) == stage['epochs_run'] >= 1
        for epoch in stage['epochs']:
            assert {'learning_rate', 'loss', 'val_loss', 'val_recall', 'val_precision'} <= set(epoch)


def test_pushed_model_predicts_from_serialized_examples(first_run):
    import numpy as np
    import tensorflow as tf

    model = tf.saved_model.load(_pushed_path(first_run.lines))
    raw = list(tf.data.TFRecordDataset(os.path.join(first_run.run_dir, 'data', 'digits.tfrecord')).take(200))
    labels = [tf.train.Example.FromString(r.numpy()).features.feature['label'].int64_list.value[0] for r in raw]
    probabilities = model.signatures['serving_default'](examples=tf.constant([r.numpy() for r in raw]))['probabilities']
    probabilities = probabilities.numpy()[:, 0]
    assert probabilities.shape == (200,)
    assert np.all((probabilities >= 0) & (probabilities <= 1))
    predicted = probabilities > 0.5
    actual = np.array(labels) == 9
    assert (predicted == actual).mean() > 0.9


def test_gate_summary_uses_the_held_out_split(first_run):
    import tensorflow as tf

    from components import gate

    evaluation_uri = first_run.records['Evaluator'].outputs['evaluation'][0].uri
    metrics = gate.overall_metrics(evaluation_uri)
    examples_uri = first_run.records['ImportExampleGen'].outputs['examples'][0].uri
    test_files = tf.io.gfile.glob(os.path.join(examples_uri, 'Split-test', '*'))
    test_count = sum(1 for _ in tf.data.TFRecordDataset(test_files, compression_type='GZIP'))
    assert metrics['example_count'] == test_count
    for name in ('recall', 'precision'):
        line = next(line for line in first_run.lines if line.startswith(f'gate {name}: '))
        assert line == f'gate {name}: {metrics[name]:.4f} >= 0.8 pass (split test)'


def test_short_model_is_not_pushed_and_serving_is_untouched(rejected_run):
    assert rejected_run.result.returncode == 3, rejected_run.result.stdout[-3000:] + rejected_run.result.stderr[-3000:]
    assert rejected_run.lines[-1].startswith('not pushed: ')
    assert '< 1.0' in rejected_run.lines[-1]
    assert rejected_run.serving_after == rejected_run.serving_before
    pushed = rejected_run.records['Pusher'].outputs['pushed_model'][0]
    assert pushed.custom_properties['pushed'].int_value == 0
    blessing = rejected_run.records['Evaluator'].outputs['blessing'][0]
    assert blessing.custom_properties['blessed'].int_value == 0
