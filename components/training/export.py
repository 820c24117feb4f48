"""The exported SavedModel: serves from raw serialized tf.Example, the transform graph inside; and
the Keras weights next to it, for the next run to warm-start from."""

import json
import os
import tempfile
from typing import Optional, Sequence

import tensorflow as tf
import tensorflow_transform as tft

from components.training import features, images
from components.shared import storage


def outputs(probabilities: tf.Tensor, classes: Sequence[int] = (), decision_threshold: float = 0.5) -> dict:
    """The serving signature's outputs from the model's probabilities.

    binary: `probabilities` [batch, 1]; `decision` [batch], 1 where the probability exceeds
    `decision_threshold`; and the scores the gate reads (features.GATE_SCORES_KEY).
    multiclass (`classes`, the label values in output order): `probabilities` [batch, classes],
    the most probable class's label value, and the scores the gate reads
    (features.TOP_CLASS_SCORES_KEY).
    """
    result = {features.PREDICTION_KEY: probabilities}
    if not classes:
        p = probabilities
        t = tf.constant(decision_threshold, p.dtype)
        above = p > t
        result[features.DECISION_KEY] = tf.cast(above[:, 0], tf.int64)
        # Monotone in p and exactly on the right side of 0.5: above 0.5 where p > t, at most 0.5
        # elsewhere (the bounds keep float rounding from moving an example across).
        upper = tf.maximum(0.5 + 0.5 * (p - t) / (1.0 - t), tf.constant(0.5 + 2 ** -20, p.dtype))
        lower = tf.minimum(0.5 * p / t, tf.constant(0.5, p.dtype))
        result[features.GATE_SCORES_KEY] = tf.where(above, upper, lower)
    else:
        top = tf.argmax(probabilities, axis=-1)
        result[features.PREDICTED_CLASS_KEY] = tf.gather(tf.constant(list(classes), tf.int64), top)
        result[features.TOP_CLASS_SCORES_KEY] = probabilities * tf.one_hot(top, len(classes), dtype=probabilities.dtype)
    return result


def serving_feature_spec(raw_spec: dict, label_feature: str) -> dict:
    """What the serving signature parses: the raw features without the label, each with an empty
    default: a client sends the image alone, not the features the data carried beside it (a CSV's
    other columns, ImageExampleGen's source file and group), which the transform graph does not
    read. An example without its image gets empty bytes, which do not decode: it is refused."""
    spec = dict(raw_spec)
    spec.pop(label_feature, None)
    for name, feature in spec.items():
        if isinstance(feature, tf.io.FixedLenFeature) and feature.default_value is None:
            default = tf.zeros(feature.shape, feature.dtype) if feature.dtype != tf.string else tf.fill(feature.shape, '')
            spec[name] = tf.io.FixedLenFeature(feature.shape, feature.dtype, default_value=default)
    return spec


def serving_signatures(model, transform_output: tft.TFTransformOutput, label_feature: str,
                       classes: Sequence[int] = (), decision_threshold: float = 0.5) -> dict:
    """`serving_default`: serialized tf.Example [batch] -> {probabilities: [batch, 1]} (binary; see
    `outputs` for multiclass): the transform graph, the image decoded as the Trainer's input
    pipeline decodes it, the model.
    `transform_features`: serialized tf.Example [batch] -> transformed features (the Evaluator
    reads the label from here).
    """
    height, width, channels = model.input_shape[1:]
    # Assigned to the model so that tf.saved_model.save tracks the transform graph's assets.
    model.tft_layer = transform_output.transform_features_layer()

    # No autograph: these functions have no Python control flow, and autograph would convert the
    # transform layer's tf_keras internals (its package is not on autograph's skip list), which
    # took about 5 of the export's 8 seconds.
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name='examples')], autograph=False)
    def serve(serialized):
        spec = serving_feature_spec(transform_output.raw_feature_spec(), label_feature)
        transformed = model.tft_layer(tf.io.parse_example(serialized, spec))
        pixels = images.decode(transformed[features.IMAGE_KEY], height, width, channels)
        return outputs(model({features.IMAGE_KEY: pixels}), classes, decision_threshold)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name='examples')], autograph=False)
    def transform_features(serialized):
        raw = tf.io.parse_example(serialized, transform_output.raw_feature_spec())
        return model.tft_layer(raw)

    return {'serving_default': serve, 'transform_features': transform_features}


# Inside the SavedModel directory, where TF Serving does not look; pushed along with the model.
WARM_START_WEIGHTS = os.path.join('assets.extra', 'warm_start.weights.h5')


# Inside the SavedModel directory too: the binary decision threshold the model serves with, and
# how it was chosen ({"value": t, ...}), for the gate report and for clients.
DECISION_THRESHOLD_FILE = os.path.join('assets.extra', 'decision_threshold.json')


def save_serving_model(model, transform_output: tft.TFTransformOutput, label_feature: str, path: str,
                       classes: Sequence[int] = (), decision: Optional[dict] = None) -> None:
    """`decision` (binary): {'value': threshold, ...how it was chosen}; default 0.5."""
    decision = decision or {'value': 0.5}
    # The weights first: serving_signatures attaches the transform layer to the model.
    save_weights(model, os.path.join(path, WARM_START_WEIGHTS))
    tf.saved_model.save(model, path, signatures=serving_signatures(model, transform_output, label_feature, classes,
                                                                  decision['value']))
    if not classes:
        with tf.io.gfile.GFile(os.path.join(path, DECISION_THRESHOLD_FILE), 'w') as f:
            f.write(json.dumps(decision, indent=2))


def read_decision_threshold(saved_model_path: str) -> Optional[dict]:
    """What save_serving_model recorded of the decision threshold (None: multiclass, or a model
    exported before it was recorded)."""
    path = os.path.join(saved_model_path, DECISION_THRESHOLD_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def save_weights(model, path: str) -> None:
    """model.save_weights to a local path or object storage (h5py needs a local file)."""
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, os.path.basename(path))
        model.save_weights(local)
        tf.io.gfile.makedirs(os.path.dirname(path))
        tf.io.gfile.copy(local, path, overwrite=True)


def load_weights(model, path: str) -> None:
    """model.load_weights from a local path or object storage."""
    with storage.local_copy(path) as local:
        model.load_weights(local)
