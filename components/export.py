"""The exported SavedModel: serves from raw serialized tf.Example, the transform graph inside."""

import tensorflow as tf
import tensorflow_transform as tft

from components import features


def serving_signatures(model, transform_output: tft.TFTransformOutput, label_feature: str) -> dict:
    """`serving_default`: serialized tf.Example [batch] -> {probabilities: [batch, 1]}.
    `transform_features`: serialized tf.Example [batch] -> transformed features (the Evaluator
    reads the label from here).
    """
    # Assigned to the model so that tf.saved_model.save tracks the transform graph's assets.
    model.tft_layer = transform_output.transform_features_layer()

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name='examples')])
    def serve(serialized):
        spec = transform_output.raw_feature_spec()
        spec.pop(label_feature)
        transformed = model.tft_layer(tf.io.parse_example(serialized, spec))
        return {features.PREDICTION_KEY: model({features.IMAGE_KEY: transformed[features.IMAGE_KEY]})}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name='examples')])
    def transform_features(serialized):
        raw = tf.io.parse_example(serialized, transform_output.raw_feature_spec())
        return model.tft_layer(raw)

    return {'serving_default': serve, 'transform_features': transform_features}


def save_serving_model(model, transform_output: tft.TFTransformOutput, label_feature: str, path: str) -> None:
    tf.saved_model.save(model, path, signatures=serving_signatures(model, transform_output, label_feature))
