"""The model the Trainer fits: its outputs, mixed precision, the multiclass head, class weights and augmentation."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from components.training import backbone as backbone_lib
from components.config import HeadSection, ImageShape
from components.training import freezing
from components.training import network, stage_loop
from components.training.stage_loop_test import SHAPE, _pixels, _stage, model_and_backbone  # noqa: F401 (a fixture)


def test_model_maps_images_to_probabilities(model_and_backbone):
    model, _ = model_and_backbone
    out = model.predict({'image_xf': np.zeros((3, 8, 8, 1), np.float32)}, verbose=0)
    assert out.shape == (3, 1)
    assert np.all((out > 0) & (out < 1)) and not math.isnan(out.sum())


def test_mixed_precision_backbone_computes_in_float16_with_the_same_weights(model_and_backbone):
    _, backbone = model_and_backbone
    mixed = network.with_dtype_policy(backbone, 'mixed_float16')
    assert mixed.get_layer('block1_conv').compute_dtype == 'float16'
    assert mixed.get_layer('block1_conv').kernel.dtype == 'float32'
    for old, new in zip(backbone.get_weights(), mixed.get_weights()):
        assert np.array_equal(old, new)
    model = network.build_model(mixed, SHAPE, HeadSection())
    out = model.predict({'image_xf': np.zeros((2, 8, 8, 1), np.float32)}, verbose=0)
    assert out.dtype == np.float32


def test_mixed_precision_reaches_into_a_nested_keras_application():
    shape = ImageShape(height=32, width=32, channels=3)
    backbone = backbone_lib.build_keras_application('MobileNetV2', None, {'alpha': 0.35}, shape)
    mixed = network.with_dtype_policy(backbone, 'mixed_float16')
    convs = [layer for layer in freezing.leaf_layers(mixed) if layer.name == 'Conv1']
    assert len(convs) == 1 and convs[0].compute_dtype == 'float16' and convs[0].kernel.dtype == 'float32'
    for old, new in zip(backbone.get_weights(), mixed.get_weights()):
        assert np.array_equal(old, new)


@pytest.mark.parametrize('setting, gpus, expected', [
    ('auto', 0, False), ('auto', 1, True), ('auto', 4, True), (True, 0, True), (False, 2, False)])


def test_mixed_precision_switches_on_by_itself_when_gpus_are_present(setting, gpus, expected):
    assert network.use_mixed_precision(setting, gpus) is expected


def test_multiclass_head_is_a_softmax_trained_on_class_indices():
    keras.utils.set_random_seed(0)
    backbone = backbone_lib.build_digits_cnn(SHAPE)
    model = network.build_model(backbone, SHAPE, HeadSection(hidden_units=(8,)), num_classes=3)
    rng = np.random.default_rng(0)
    x = _pixels(rng, 48)
    y = rng.integers(0, 3, 48)
    train = tf.data.Dataset.from_tensor_slices(({'image_xf': x}, y)).repeat().batch(16)
    evaluation = tf.data.Dataset.from_tensor_slices(({'image_xf': x}, y)).batch(16)
    entry = stage_loop.train_stage(model, backbone, _stage(epochs=3), train, evaluation,
                                steps_per_epoch=3, decision_threshold=0.5, batch_size=16)
    assert entry['epochs'][0]['loss'] == pytest.approx(math.log(3), rel=0.2)  # starts near chance
    assert entry['epochs'][-1]['loss'] < entry['epochs'][0]['loss']
    assert {'val_loss', 'val_accuracy'} <= set(entry['epochs'][-1])
    probabilities = model.predict(x[:5], verbose=0)
    assert probabilities.shape == (5, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize('num_classes, class_weight', [(1, {0: 1.0, 1: 4.0}), (3, {0: 0.5, 1: 1.0, 2: 3.0})])
def test_class_weight_scales_each_example_loss_as_keras_reports_it(num_classes, class_weight):
    keras.utils.set_random_seed(0)
    backbone = backbone_lib.build_digits_cnn(SHAPE)
    # No dropout: the training forward pass equals predict(), so the loss can be recomputed by hand.
    model = network.build_model(backbone, SHAPE, HeadSection(hidden_units=(8,), dropout=0.0), num_classes)
    rng = np.random.default_rng(0)
    x = _pixels(rng, 32)
    y = rng.integers(0, max(2, num_classes), 32)
    probabilities = model.predict(x, verbose=0)
    if num_classes == 1:
        per_example = keras.ops.convert_to_numpy(keras.losses.binary_crossentropy(y[:, None].astype(np.float32),
                                                                                 probabilities))
    else:
        per_example = keras.ops.convert_to_numpy(keras.losses.sparse_categorical_crossentropy(y, probabilities))
    weights = np.array([class_weight[t] for t in y])
    data = tf.data.Dataset.from_tensor_slices(({'image_xf': x}, y)).batch(32)

    # One step over one batch: the loss Keras reports is computed before the update.
    entry = stage_loop.train_stage(model, backbone, _stage(epochs=1), data.repeat(), data, steps_per_epoch=1,
                                decision_threshold=0.5, batch_size=32, class_weight=class_weight)

    assert entry['epochs'][0]['loss'] == pytest.approx(float(np.mean(weights * per_example)), rel=1e-5)
    assert entry['epochs'][0]['loss'] != pytest.approx(float(np.mean(per_example)), rel=1e-2)


def test_augmentation_changes_training_images_every_epoch_and_nothing_else():
    from components.config import Augmentation

    assert network.augmentation_layers(None, 0) is None
    assert network.augmentation_layers(Augmentation(), 0) is None
    augment = network.augmentation_layers(
        Augmentation(flip='horizontal', rotation=0.05, zoom=0.1, translation=0.1, contrast=0.2, brightness=0.2), 0)
    assert [type(layer).__name__ for layer in augment.layers] == [
        'RandomFlip', 'RandomRotation', 'RandomZoom', 'RandomTranslation', 'RandomContrast', 'RandomBrightness']
    shape = ImageShape(height=16, width=16, channels=3)
    x = _pixels(np.random.default_rng(0), 8, shape)
    # As the Trainer's input pipeline applies it: in a tf.data map over decoded batches.
    data = tf.data.Dataset.from_tensor_slices(x).batch(8).map(lambda images: augment(images, training=True))
    first, second = (next(iter(data)).numpy() for _ in range(2))
    assert first.shape == x.shape and first.dtype == np.float32
    assert not np.allclose(first, x) and not np.allclose(first, second)
    assert first.min() >= 0.0 and first.max() <= 255.0
    # Outside training the layers change nothing, and the model the Trainer exports never holds them.
    np.testing.assert_array_equal(augment(x, training=False), x)
    model = network.build_model(backbone_lib.build_digits_cnn(shape), shape, HeadSection())
    assert not any(layer.name == 'augmentation' or layer.name.startswith('random_')
                   for layer in freezing.leaf_layers(model))
