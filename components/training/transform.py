"""Transform's preprocessing_fn: raw tf.Example features -> model inputs, the same in training and serving.

Each image is decoded, resized to `model.input` and stored encoded again (components.images says
why and how); one over `data.max_image_pixels` fails the step before it is decoded, in Transform
and in the serving signature, which runs this function's graph. The model scales the pixels
itself. The label becomes 1 for the positive class and 0 otherwise (binary), or the index of its
value in `classes` (multiclass; -1 for a value not among them).
"""

import tensorflow as tf

from components.training import features, images


def _dense(tensor: tf.Tensor, default) -> tf.Tensor:
    """A feature as a dense [batch] tensor, whether Transform hands it over sparse or as [batch, 1]."""
    if isinstance(tensor, tf.sparse.SparseTensor):
        tensor = tf.sparse.to_dense(tf.sparse.reset_shape(tensor, [tensor.dense_shape[0], 1]),
                                    default_value=default)
    return tf.reshape(tensor, [-1])


def preprocessing_fn(inputs, custom_config):
    """Called by TFX Transform. `custom_config` is built by pipeline.pipeline.transform_config."""
    encoded = _dense(inputs[custom_config['image_feature']], default=b'')
    labels = _dense(inputs[custom_config['label_feature']], default=-1)
    return {
        features.IMAGE_KEY: images.resize_and_encode(
            encoded, custom_config['height'], custom_config['width'], custom_config['channels'],
            custom_config['max_image_pixels']),
        features.LABEL_KEY: encode_labels(labels, custom_config),
    }


def encode_labels(labels: tf.Tensor, custom_config: dict) -> tf.Tensor:
    """Raw label values [batch] -> int64 training targets [batch]."""
    if custom_config.get('task', 'binary') == 'binary':
        return tf.cast(tf.equal(labels, custom_config['positive_class']), tf.int64)
    classes = tf.constant(custom_config['classes'], dtype=labels.dtype)
    matches = tf.equal(labels[:, None], classes[None, :])
    return tf.where(tf.reduce_any(matches, axis=1), tf.argmax(tf.cast(matches, tf.int64), axis=1), tf.constant(-1, tf.int64))
