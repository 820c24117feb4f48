"""The input preprocessing a keras.applications network's weights were trained with, as a layer
saved inside the backbone.

The pipeline hands every backbone images in [0, 1]. Each family's ImageNet weights expect their own
input scale (what `keras.applications.<module>.preprocess_input` does to 0-255 pixels); fed
anything else, the pre-trained features degrade without an error. Keras ships those as functions
on arrays, not as a layer a saved model can carry, so this layer applies the same arithmetic
inside the backbone, where the Trainer and the serving signature both go through it. The modes
and which family takes which are listed in components.config (PREPROCESSING_MODES,
APPLICATION_FAMILIES).
"""

import keras

LAYER_NAME = 'input_preprocessing'
# ImageNet channel statistics, as keras.applications.imagenet_utils uses them.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package='staged_finetune')
class InputPreprocessing(keras.layers.Layer):
    """[0, 1] images [batch, H, W, C] -> what the network's weights expect (`mode`)."""

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in ('tf', 'caffe', 'torch', 'raw255', 'none'):
            raise ValueError(f'preprocessing mode {mode!r}: expected tf, caffe, torch, raw255 or none')
        self.mode = mode

    def call(self, inputs):
        x = keras.ops.cast(inputs, self.compute_dtype)
        if self.mode == 'tf':
            return x * 2.0 - 1.0
        if self.mode == 'raw255':
            return x * 255.0
        if self.mode == 'caffe':
            return keras.ops.flip(x, axis=-1) * 255.0 - keras.ops.convert_to_tensor(_CAFFE_MEAN_BGR, x.dtype)
        if self.mode == 'torch':
            return ((x - keras.ops.convert_to_tensor(_TORCH_MEAN, x.dtype))
                    / keras.ops.convert_to_tensor(_TORCH_STD, x.dtype))
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), 'mode': self.mode}
