"""The model the Trainer fits: the backbone under a new head, its loss and metrics, augmentation,
mixed precision and the distribution strategy."""

import math
from typing import Optional

import keras
import tensorflow as tf

from components.training import features
from components.config import Augmentation, HeadSection, ImageShape


def deterministic_on_cpu() -> None:
    """With no GPU, TensorFlow's ops deterministic from here on, process-wide: the same data, config
    and seed train the same model. Multi-threaded CPU kernels otherwise add up in no fixed order,
    and early stopping and the decision threshold amplify the differences into different test
    counts; process-wide, the steps after the Trainer in a local run compute deterministically too.
    Not on GPUs: some kernels there (depthwise convolutions' gradients) have no deterministic
    implementation and would raise."""
    if not tf.config.list_logical_devices('GPU'):
        tf.config.experimental.enable_op_determinism()


def use_mixed_precision(setting, gpus: int) -> bool:
    """model.mixed_precision: true/false as given; `auto` when at least one GPU is visible."""
    return gpus > 0 if setting == 'auto' else bool(setting)


def choose_strategy(device_type: str = 'GPU') -> tf.distribute.Strategy:
    """MirroredStrategy across the devices of `device_type` when more than one is visible, else the
    default strategy. Tests pass 'CPU' after splitting the CPU into logical devices."""
    devices = tf.config.list_logical_devices(device_type)
    if len(devices) > 1:
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    return tf.distribute.get_strategy()


def with_dtype_policy(model: keras.Model, policy: str) -> keras.Model:
    """A copy of a functional `model` whose layers compute under `policy` (e.g. mixed_float16),
    with the same weights. Loaded models keep the dtype they were saved with, so the global policy
    alone would leave a loaded backbone in float32."""

    def clone(layer):
        if isinstance(layer, keras.Model):  # nested, e.g. a keras.applications network
            return keras.models.clone_model(layer, clone_function=clone)
        if isinstance(layer, keras.layers.InputLayer):
            return layer.__class__.from_config(layer.get_config())
        return layer.__class__.from_config({**layer.get_config(), 'dtype': policy})

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def build_model(backbone: keras.Model, shape: ImageShape, head: HeadSection, num_classes: int = 1) -> keras.Model:
    """Images [batch, H, W, C] of pixel values 0-255 (`image_xf`, as components.training.images.decode gives
    them) -> probability of the positive class [batch, 1] (num_classes 1: binary), or of each class
    [batch, num_classes] (softmax). The backbone sees pixels scaled to [0, 1].

    BatchNorm inference mode is held by freezing (components.training.freezing), not by training=False.
    """
    inputs = keras.Input((shape.height, shape.width, shape.channels), name=features.IMAGE_KEY)
    x = keras.layers.Rescaling(1.0 / 255, name='to_unit_range')(inputs)
    x = backbone(x)
    for i, units in enumerate(head.hidden_units):
        x = keras.layers.Dense(units, activation='relu', name=f'head_dense_{i}')(x)
    x = keras.layers.Dropout(head.dropout, name='head_dropout')(x)
    # float32 output keeps the loss numerically safe under mixed precision.
    outputs = keras.layers.Dense(num_classes, activation='sigmoid' if num_classes == 1 else 'softmax',
                                 name='head_output', dtype='float32')(x)
    return keras.Model(inputs, outputs, name='finetuned')


def loss_and_metrics(model: keras.Model, decision_threshold: float) -> tuple:
    """Binary (one sigmoid output): cross-entropy, and accuracy/recall/precision at the decision
    threshold with AUC-PR. Multiclass (softmax): sparse cross-entropy on class indices and accuracy."""
    if model.output_shape[-1] > 1:
        return keras.losses.SparseCategoricalCrossentropy(), [keras.metrics.SparseCategoricalAccuracy(name='accuracy')]
    return keras.losses.BinaryCrossentropy(), [
        keras.metrics.BinaryAccuracy(name='accuracy', threshold=decision_threshold),
        keras.metrics.Recall(thresholds=decision_threshold, name='recall'),
        keras.metrics.Precision(thresholds=decision_threshold, name='precision'),
        keras.metrics.AUC(curve='PR', name='auc_pr'),
    ]


def param_count(weights) -> int:
    return int(sum(math.prod(w.shape) for w in weights))


def augmentation_layers(augmentation: Optional[Augmentation], seed: int) -> Optional[keras.Sequential]:
    """model.augmentation as Keras' random preprocessing layers on 0-255 pixels (None: no change)."""
    if augmentation is None:
        return None
    a, layers = augmentation, []
    if a.flip:
        layers.append(keras.layers.RandomFlip(a.flip, seed=seed))
    if a.rotation:
        layers.append(keras.layers.RandomRotation(a.rotation, seed=seed + 1))
    if a.zoom:
        layers.append(keras.layers.RandomZoom(a.zoom, seed=seed + 2))
    if a.translation:
        layers.append(keras.layers.RandomTranslation(a.translation, a.translation, seed=seed + 3))
    if a.contrast:
        layers.append(keras.layers.RandomContrast(a.contrast, seed=seed + 4))
    if a.brightness:
        layers.append(keras.layers.RandomBrightness(a.brightness, value_range=(0, 255), seed=seed + 5))
    return keras.Sequential(layers, name='augmentation') if layers else None
