"""Transform's preprocessing_fn: raw tf.Example features -> model inputs, the same in training and serving.

Each image is decoded, resized to `model.input` and stored encoded again (components.training.images says
why and how); one over `data.max_image_pixels` fails the step before it is decoded, in Transform
and in the serving signature, which runs this function's graph. The model scales the pixels
itself. The label becomes 1 for the positive class and 0 otherwise (binary), or the index of its
value in `classes` (multiclass; -1 for a value not among them).
"""

import tensorflow as tf

from components.config import TransformInputs, validate
from components.training import features, images


def _dense(tensor: tf.Tensor, default) -> tf.Tensor:
    """A feature as a dense [batch] tensor, whether Transform hands it over sparse or as [batch, 1]."""
    if isinstance(tensor, tf.sparse.SparseTensor):
        tensor = tf.sparse.to_dense(tf.sparse.reset_shape(tensor, [tensor.dense_shape[0], 1]),
                                    default_value=default)
    return tf.reshape(tensor, [-1])


def preprocessing_fn(inputs, custom_config):
    """Called by TFX Transform. `custom_config`: TransformInputs as JSON data (pipeline.pipeline.transform_config)."""
    settings = validate(custom_config, TransformInputs)
    encoded = _dense(inputs[settings.image_feature], default=b'')
    labels = _dense(inputs[settings.label_feature], default=-1)
    shape = settings.input
    return {
        features.IMAGE_KEY: images.resize_and_encode(encoded, shape.height, shape.width, shape.channels,
                                                     settings.max_image_pixels),
        features.LABEL_KEY: encode_labels(labels, settings),
    }


def encode_labels(labels: tf.Tensor, settings: TransformInputs) -> tf.Tensor:
    """Raw label values [batch] -> int64 training targets [batch]."""
    if settings.task == 'binary':
        return tf.cast(tf.equal(labels, settings.positive_class), tf.int64)
    classes = tf.constant(settings.classes, dtype=labels.dtype)
    matches = tf.equal(labels[:, None], classes[None, :])
    return tf.where(tf.reduce_any(matches, axis=1), tf.argmax(tf.cast(matches, tf.int64), axis=1), tf.constant(-1, tf.int64))
