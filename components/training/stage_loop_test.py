"""The stage loop: what each stage trains and freezes, its log, its callbacks (NaN, early stopping,
reduce-on-plateau), and a keras.applications backbone through the same stages."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from components.training import backbone as backbone_lib
from components.config import HeadSection, ImageShape, Stage, validate
from components.training import freezing
from components.training import network, stage_loop

SHAPE = ImageShape(height=8, width=8, channels=1)


def _stage(**fields) -> Stage:
    base = {'name': 's', 'epochs': 2, 'unfreeze': 'none', 'optimizer': {'name': 'adam', 'learning_rate': 1e-2}}
    base.update(fields)
    return validate(base, Stage)


def _pixels(rng, n, shape=SHAPE):
    """Random images as the model takes them: [n, H, W, C], pixel values 0-255."""
    return 255 * rng.random((n, shape.height, shape.width, shape.channels), dtype=np.float32)


def _data(n=64, batch=16):
    rng = np.random.default_rng(0)
    x = _pixels(rng, n)
    y = (rng.random(n) < 0.3).astype(np.int64)
    train = tf.data.Dataset.from_tensor_slices(({'image_xf': x}, y)).repeat().batch(batch)
    evaluation = tf.data.Dataset.from_tensor_slices(({'image_xf': x}, y)).batch(batch)
    return train, evaluation


@pytest.fixture
def model_and_backbone():
    keras.utils.set_random_seed(0)
    backbone = backbone_lib.build_digits_cnn(SHAPE)
    return network.build_model(backbone, SHAPE, HeadSection(hidden_units=(8,))), backbone


def _weights(layers):
    return {layer.name: [np.array(w) for w in layer.get_weights()] for layer in layers}


def test_frozen_backbone_is_bit_identical_and_head_changes(model_and_backbone):
    model, backbone = model_and_backbone
    train, evaluation = _data()
    before_backbone = _weights(backbone.layers)
    before_head = _weights([model.get_layer('head_output')])

    entry = stage_loop.train_stage(model, backbone, _stage(unfreeze='none'), train, evaluation,
                                steps_per_epoch=4, decision_threshold=0.5, batch_size=16)

    after_backbone = _weights(backbone.layers)
    for name, weights in before_backbone.items():
        for old, new in zip(weights, after_backbone[name]):
            assert np.array_equal(old, new), f'{name} changed while frozen'
    assert not np.array_equal(before_head['head_output'][0], model.get_layer('head_output').get_weights()[0])
    assert entry['unfrozen_layers'] == []
    assert entry['non_trainable_params'] > entry['trainable_params'] > 0


def test_unfrozen_layers_change_and_the_rest_stay(model_and_backbone):
    model, backbone = model_and_backbone
    train, evaluation = _data()
    before = _weights(backbone.layers)
    entry = stage_loop.train_stage(model, backbone, _stage(unfreeze={'top_layers': 2}), train, evaluation,
                                steps_per_epoch=4, decision_threshold=0.5, batch_size=16)
    # The top two layers with weights are block3_conv and block3_bn; BatchNorm stays frozen.
    assert entry['unfrozen_layers'] == ['block3_conv']
    after = _weights(backbone.layers)
    assert not np.array_equal(before['block3_conv'][0], after['block3_conv'][0])
    # BatchNorm ran in inference mode: neither its parameters nor its moving statistics moved.
    for name in ('block1_conv', 'block1_bn', 'block2_conv', 'block2_bn', 'block3_bn'):
        for old, new in zip(before[name], after[name]):
            assert np.array_equal(old, new), f'{name} changed while frozen'


def test_train_batchnorm_lets_statistics_move(model_and_backbone):
    model, backbone = model_and_backbone
    train, evaluation = _data()
    before = backbone.get_layer('block3_bn').get_weights()
    entry = stage_loop.train_stage(model, backbone, _stage(unfreeze='all', train_batchnorm=True), train, evaluation,
                                steps_per_epoch=2, decision_threshold=0.5, batch_size=16)
    assert 'block3_bn' in entry['unfrozen_layers']
    assert not np.array_equal(before[2], backbone.get_layer('block3_bn').get_weights()[2])


@pytest.mark.slow
def test_stage_log_records_every_step_and_epoch(model_and_backbone, tmp_path, capsys):
    model, backbone = model_and_backbone
    train, evaluation = _data()
    stage = _stage(epochs=3, schedule={'name': 'cosine', 'warmup_steps': 2})
    entry = stage_loop.train_stage(model, backbone, stage, train, evaluation,
                                steps_per_epoch=4, decision_threshold=0.5, batch_size=16, log_dir=str(tmp_path))
    # The console: one line per epoch with the numbers of the log, and nothing from Keras itself.
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    for number, (line, epoch) in enumerate(zip(lines, entry['epochs']), start=1):
        assert line.split()[:3] == ['s', 'epoch', f'{number}/3']
        assert f"lr {epoch['learning_rate']:.3g}" in line
        assert f"  loss {epoch['loss']:.4f}" in line and f"val_recall {epoch['val_recall']:.4f}" in line
    tags = {value.tag
            for path in tf.io.gfile.glob(str(tmp_path / 's' / 'train' / 'events.*'))
            for event in tf.compat.v1.train.summary_iterator(path) for value in event.summary.value}
    assert 'epoch_learning_rate' in tags
    assert len(entry['lr_by_step']) == 12
    assert [e['epoch'] for e in entry['epochs']] == [1, 2, 3]
    for epoch in entry['epochs']:
        assert {'loss', 'val_loss', 'recall', 'val_recall', 'precision', 'val_precision', 'learning_rate'} <= set(epoch)
    # An epoch's learning rate is the one its last step used.
    assert entry['epochs'][0]['learning_rate'] == pytest.approx(entry['lr_by_step'][3])
    assert entry['lr_by_step'][0] == 0.0 and entry['lr_by_step'][2] == pytest.approx(1e-2)
    json.dumps(entry)


def test_nan_loss_stops_with_a_clear_error(model_and_backbone):
    model, backbone = model_and_backbone
    x = _pixels(np.random.default_rng(0), 32)
    y = np.full(32, np.nan, np.float32)
    train = tf.data.Dataset.from_tensor_slices(({'image_xf': x}, y)).repeat().batch(16)
    with pytest.raises(FloatingPointError, match=r"stage 's', epoch 1, step 1: training loss is nan"):
        stage_loop.train_stage(model, backbone, _stage(), train, train.take(1),
                            steps_per_epoch=2, decision_threshold=0.5, batch_size=16)


def test_early_stopping_restores_the_best_weights(model_and_backbone):
    model, backbone = model_and_backbone
    train, evaluation = _data()
    stage = _stage(epochs=30, early_stopping={'monitor': 'val_loss', 'patience': 0, 'min_delta': 10.0})
    entry = stage_loop.train_stage(model, backbone, stage, train, evaluation,
                                steps_per_epoch=2, decision_threshold=0.5, batch_size=16)
    # No epoch improves val_loss by 10, so the stage stops after its first epoch's successor.
    assert entry['epochs_run'] < 30


def test_reduce_on_plateau_lowers_the_rate_when_the_metric_stalls(model_and_backbone):
    model, backbone = model_and_backbone
    train, evaluation = _data()
    # The first epoch sets the reference; with min_delta 10 no later epoch improves on it, so with
    # patience 0 the rate halves after every epoch from the second on.
    stage = _stage(epochs=3, reduce_on_plateau={'monitor': 'val_loss', 'patience': 0, 'factor': 0.5,
                                                'min_delta': 10.0})
    entry = stage_loop.train_stage(model, backbone, stage, train, evaluation,
                                steps_per_epoch=2, decision_threshold=0.5, batch_size=16)
    assert entry['lr_by_step'] == pytest.approx([1e-2, 1e-2, 1e-2, 1e-2, 5e-3, 5e-3])
    assert [e['learning_rate'] for e in entry['epochs']] == pytest.approx([1e-2, 1e-2, 5e-3])


@pytest.mark.slow
def test_keras_application_backbone_goes_through_the_same_stages():
    shape = ImageShape(height=32, width=32, channels=3)
    keras.utils.set_random_seed(0)
    backbone = backbone_lib.build_keras_application('MobileNetV2', None, {'alpha': 0.35}, shape)
    model = network.build_model(backbone, shape, HeadSection())
    rng = np.random.default_rng(0)
    x = _pixels(rng, 32, shape)
    y = (rng.random(32) < 0.5).astype(np.int64)
    train = tf.data.Dataset.from_tensor_slices(({'image_xf': x}, y)).repeat().batch(16)
    evaluation = tf.data.Dataset.from_tensor_slices(({'image_xf': x}, y)).batch(16)
    before = _weights(freezing.leaf_layers(backbone))

    head = stage_loop.train_stage(model, backbone, _stage(epochs=1), train, evaluation,
                               steps_per_epoch=2, decision_threshold=0.5, batch_size=16)
    top = stage_loop.train_stage(model, backbone, _stage(epochs=1, unfreeze={'top_layers': 4}), train, evaluation,
                              steps_per_epoch=2, decision_threshold=0.5, batch_size=16)

    assert head['unfrozen_layers'] == []
    # The top four layers with weights are Conv_1, Conv_1_bn and block_16's project conv and BN;
    # the BatchNorm layers stay frozen.
    assert top['unfrozen_layers'] == ['block_16_project', 'Conv_1']
    after = _weights(freezing.leaf_layers(backbone))
    for name, weights in before.items():
        changed = any(not np.array_equal(old, new) for old, new in zip(weights, after[name]))
        assert changed == (name in top['unfrozen_layers']), name
