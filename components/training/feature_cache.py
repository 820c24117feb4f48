"""A frozen head stage's backbone features, computed once.

A stage that trains only the head on a frozen backbone, on images that are not augmented, fits the
head on the backbone's features, computed once for train and eval: the frozen backbone is
deterministic (its BatchNorm runs in inference mode), so each epoch would recompute the same
features."""

import hashlib
import math
import time
from typing import Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from components.training import features, freezing


# Features of every cached example (training and eval splits) must fit in this many bytes of memory.
FEATURE_CACHE_LIMIT_BYTES = 1 << 30


# Layers whose output in training is random (or augmentation): a backbone holding one has no fixed features.
_RANDOM_IN_TRAINING = (keras.layers.Dropout, keras.layers.SpatialDropout1D, keras.layers.SpatialDropout2D,
                       keras.layers.SpatialDropout3D, keras.layers.GaussianDropout, keras.layers.GaussianNoise,
                       keras.layers.AlphaDropout, keras.layers.RandomFlip, keras.layers.RandomRotation,
                       keras.layers.RandomZoom, keras.layers.RandomTranslation, keras.layers.RandomContrast,
                       keras.layers.RandomBrightness)


def _digest(layers: Sequence[keras.layers.Layer]) -> str:
    """SHA-256 of the layers' weights, in order."""
    digest = hashlib.sha256()
    for layer in layers:
        for weight in layer.get_weights():
            digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()


def _fingerprints(images: tf.Tensor) -> tf.Tensor:
    """One int64 per image of the batch, from the bytes of its pixels (farmhash, tf.fingerprint)."""
    return tf.reshape(tf.bitcast(tf.fingerprint(images), tf.int64), [-1])


class FeatureCache:
    """Trains a stage's head on the frozen backbone's features, computed once.

    `datasets` are finite one-pass datasets of ({image_xf: pixels}, label) batches that together hold
    every image the stage's training and eval datasets yield (the training split once, the eval
    split), `examples` their total count. Each image's features are computed once and looked up by
    the fingerprint of its pixels, so the stage's own datasets keep their order, batches and
    shuffling, and the head's optimizer takes the same steps on the same examples. The features
    must fit in `limit_bytes`; while they are gathered, memory holds them about twice.

    The features of the last backbone are kept: a later stage (or a tuning trial, on a model built
    afresh) whose layers up to the backbone hold the same weights reuses them. `computations`
    counts how often they were computed.
    """

    def __init__(self, datasets: Sequence[tf.data.Dataset], examples: int,
                 limit_bytes: int = FEATURE_CACHE_LIMIT_BYTES, reason: Optional[str] = None):
        self.datasets, self.examples, self.limit_bytes, self.reason = list(datasets), examples, limit_bytes, reason
        self.computations = 0
        # (digest of the weights up to the backbone, fingerprints, features) of the last computation.
        self._kept: Optional[tuple[str, np.ndarray, np.ndarray]] = None

    @classmethod
    def unavailable(cls, reason: str) -> 'FeatureCache':
        """No caching, for `reason` (which the stage's log entry gives)."""
        return cls((), 0, reason=reason)

    def _reason_not(self, model: keras.Model, backbone: keras.Model, unfrozen: list[str],
                    augmented: bool) -> Optional[str]:
        if unfrozen:
            return f'{len(unfrozen)} backbone layers train in this stage, so its features change every step'
        if augmented:
            return ('the training images are augmented (model.augmentation), so they and their features change '
                    'every epoch; a stage with augment: false trains on them as they are')
        if self.reason is not None:
            return self.reason
        random = [layer.name for layer in freezing.leaf_layers(backbone) if isinstance(layer, _RANDOM_IN_TRAINING)]
        if random:
            return f'the backbone holds layers that are random in training ({", ".join(random)})'
        if backbone not in model.layers or len(model.inputs) != 1 or len(model.outputs) != 1:
            return 'the model is not one input, the backbone, then the head'
        needed = self.examples * math.prod(backbone.output_shape[1:]) * np.dtype(backbone.outputs[0].dtype).itemsize
        if needed > self.limit_bytes:
            return (f'the features of {self.examples} examples take {needed / 2**20:.3g} MiB, above the limit of '
                    f'{self.limit_bytes / 2**20:.3g} MiB')
        return None

    def for_stage(self, model: keras.Model, backbone: keras.Model, unfrozen: list[str],
                  train_data: tf.data.Dataset, eval_data: tf.data.Dataset, augmented: bool = False) -> dict:
        """{'cached': False, 'reason': ...}, or {'cached': True, examples, bytes, seconds} with the
        head-only model ('head') and the stage's datasets with features for images ('train', 'eval')."""
        reason = self._reason_not(model, backbone, unfrozen, augmented)
        if reason is not None:
            return {'cached': False, 'reason': reason}
        started = time.monotonic()
        at = model.layers.index(backbone)
        before_backbone = model.layers[1:at]

        @tf.function(reduce_retracing=True)
        def compute(images):
            x = images
            for layer in before_backbone:
                x = layer(x, training=False)
            return _fingerprints(images), backbone(x, training=False)

        weights = _digest(before_backbone + [backbone])
        reused = self._kept is not None and self._kept[0] == weights
        if reused:
            keys, values = self._kept[1], self._kept[2]
        else:
            self._kept = None  # freed before the new features are gathered
            keys, values = [], []
            for dataset in self.datasets:
                for inputs, _ in dataset:
                    key, value = compute(inputs[features.IMAGE_KEY])
                    keys.append(key.numpy())
                    values.append(value.numpy())
            keys, values = np.concatenate(keys), np.concatenate(values)
            # An image met twice (in both splits, or a duplicate) keeps one row: the same pixels, the same features.
            _, first = np.unique(keys, return_index=True)
            if len(first) < len(keys):
                keys, values = keys[first], values[first]
            self.computations += 1
            self._kept = (weights, keys, values)
        table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            tf.constant(keys), tf.range(len(keys), dtype=tf.int64)), default_value=-1)
        stored = tf.constant(values)

        def with_features(inputs, label):
            rows = table.lookup(_fingerprints(inputs[features.IMAGE_KEY]))
            check = tf.debugging.assert_non_negative(rows, message='an image outside the cached datasets')
            with tf.control_dependencies([check]):
                return tf.gather(stored, rows), label

        with model.distribute_strategy.scope():
            head_inputs = keras.Input(values.shape[1:], dtype=values.dtype, name='backbone_features')
            x = head_inputs
            for layer in model.layers[at + 1:]:
                x = layer(x)
            head = keras.Model(head_inputs, x, name='head')
        return {'cached': True, 'reused': reused, 'examples': int(len(keys)), 'bytes': int(values.nbytes),
                'limit_bytes': self.limit_bytes, 'seconds': time.monotonic() - started, 'head': head,
                'train': train_data.map(with_features), 'eval': eval_data.map(with_features)}
