"""The model: the backbone (trained here or from keras.applications, and its input preprocessing),
the head and augmentation."""

from __future__ import annotations

import re
from typing import Any, Literal, Optional, Union

import pydantic

from components.config.base import Epochs, Seed, _Section, _require_existing_path, bounded
from components.config.data import ImageShape


class SourceTask(_Section):
    """A backbone pre-trained here on a source task: digits `classes`, none of the target's."""

    classes: tuple[bounded(int, ge=0, le=9), ...] = (0, 1, 2, 3, 4)
    epochs: Epochs = 10
    seed: Seed = 0


# What each keras.applications family's weights expect of their input, as its `preprocess_input`
# does it; the backbone applies it to the pipeline's [0, 1] images (components/training/backbone_inputs.py).
#   tf: scaled to [-1, 1]. caffe: 0-255, RGB -> BGR, ImageNet mean subtracted per channel.
#   torch: ImageNet mean subtracted and divided by the std per channel, on [0, 1].
#   raw255: 0-255 (the network rescales inside). none: [0, 1] as given.
PREPROCESSING_MODES = ('tf', 'caffe', 'torch', 'raw255', 'none')
APPLICATION_FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    # keras.applications module: (preprocessing, constructors)
    'convnext': ('raw255', ('ConvNeXtTiny', 'ConvNeXtSmall', 'ConvNeXtBase', 'ConvNeXtLarge', 'ConvNeXtXLarge')),
    'densenet': ('torch', ('DenseNet121', 'DenseNet169', 'DenseNet201')),
    'efficientnet': ('raw255', tuple(f'EfficientNetB{i}' for i in range(8))),
    'efficientnet_v2': ('raw255', ('EfficientNetV2B0', 'EfficientNetV2B1', 'EfficientNetV2B2', 'EfficientNetV2B3',
                                   'EfficientNetV2S', 'EfficientNetV2M', 'EfficientNetV2L')),
    'inception_resnet_v2': ('tf', ('InceptionResNetV2',)),
    'inception_v3': ('tf', ('InceptionV3',)),
    'mobilenet': ('tf', ('MobileNet',)),
    'mobilenet_v2': ('tf', ('MobileNetV2',)),
    'mobilenet_v3': ('raw255', ('MobileNetV3Small', 'MobileNetV3Large')),
    'nasnet': ('tf', ('NASNetMobile', 'NASNetLarge')),
    'resnet': ('caffe', ('ResNet50', 'ResNet101', 'ResNet152')),
    'resnet_v2': ('tf', ('ResNet50V2', 'ResNet101V2', 'ResNet152V2')),
    'vgg16': ('caffe', ('VGG16',)),
    'vgg19': ('caffe', ('VGG19',)),
    'xception': ('tf', ('Xception',)),
}
APPLICATION_PREPROCESSING = {name: mode for mode, names in APPLICATION_FAMILIES.values() for name in names}


class KerasApplication(_Section):
    """A backbone from keras.applications, e.g. MobileNetV2 (its top is always removed)."""

    name: str
    # 'imagenet' (downloaded by Keras) or a path to a weights file; None starts from random weights.
    weights: Optional[str] = None
    kwargs: dict[str, Any] = {}
    # The input preprocessing its weights expect (see PREPROCESSING_MODES). Default: the family's own,
    # for the families in APPLICATION_FAMILIES; required for any other network.
    preprocessing: Optional[Literal['tf', 'caffe', 'torch', 'raw255', 'none']] = None

    @pydantic.model_validator(mode='after')
    def _known_preprocessing(self) -> 'KerasApplication':
        if self.preprocessing is None and self.name not in APPLICATION_PREPROCESSING:
            raise ValueError(
                f'name {self.name!r}: not a keras.applications network whose input preprocessing is known; '
                f'expected one of {", ".join(sorted(APPLICATION_PREPROCESSING))}, or state it with '
                f'preprocessing: {" | ".join(PREPROCESSING_MODES)}')
        return self

    @property
    def input_preprocessing(self) -> str:
        """The preprocessing the backbone applies to [0, 1] images before the network."""
        return self.preprocessing or APPLICATION_PREPROCESSING[self.name]

    @pydantic.field_validator('weights')
    @classmethod
    def _weights(cls, value: Optional[str]) -> Optional[str]:
        if value not in (None, 'imagenet'):
            _require_existing_path(value)
        return value


class BackboneSection(_Section):
    """Exactly one of: a source-task run, a saved Keras model file, a keras.applications model."""

    source_task: Optional[SourceTask] = None
    keras_file: Optional[str] = None
    keras_application: Optional[KerasApplication] = None
    # The SHA-256 (64 hex digits) of the file the backbone is read from (keras_file, or
    # keras_application.weights when that is a path): a file that changed, or was swapped on its
    # way, stops the run instead of being loaded.
    sha256: Optional[str] = None

    _keras_file_exists = pydantic.field_validator('keras_file')(_require_existing_path)

    @pydantic.field_validator('sha256')
    @classmethod
    def _hex_digest(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not re.fullmatch(r'[0-9a-fA-F]{64}', value):
            raise ValueError('expected the file\'s SHA-256 as 64 hex digits (sha256sum prints it)')
        return value

    @pydantic.model_validator(mode='after')
    def _exactly_one(self) -> 'BackboneSection':
        given = [k for k in ('source_task', 'keras_file', 'keras_application') if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError('expected exactly one of source_task, keras_file, keras_application')
        return self

    @pydantic.model_validator(mode='after')
    def _sha256_pins_a_file(self) -> 'BackboneSection':
        if self.sha256 is not None and self.pinned_file is None:
            raise ValueError('sha256 pins a file: it goes with keras_file, or keras_application.weights given as a '
                             'path (a source_task backbone is built here, and Keras checks weights: imagenet itself)')
        return self

    @property
    def pinned_file(self) -> Optional[str]:
        """The file `sha256` is the digest of, when the backbone is read from one."""
        if self.keras_file is not None:
            return self.keras_file
        app = self.keras_application
        return app.weights if app is not None and app.weights not in (None, 'imagenet') else None

    @staticmethod
    def sha256_mismatch(path: str, digest: str, expected: Optional[str]) -> Optional[str]:
        """The error line when `digest` (of the file at `path`) is not `expected` (model.backbone.sha256);
        None when it is, or when nothing is pinned."""
        if expected is None or digest.lower() == expected.lower():
            return None
        return f'model.backbone.sha256: {path} has sha256 {digest}; expected {expected.lower()}'


class HeadSection(_Section):
    """The new classification head put on top of the backbone."""

    # At most 16 dense layers of at most 65,536 units: a head is one or two layers of hundreds; a
    # 65,536 x 65,536 layer is already 17 GB of float32 weights.
    hidden_units: tuple[bounded(int, ge=1, le=65_536), ...] = pydantic.Field(default=(), max_length=16)
    dropout: bounded(float, ge=0, lt=1) = 0.2


class Augmentation(_Section):
    """Random changes to each training image (Keras' preprocessing layers), drawn anew every epoch.

    Training only: the Trainer applies them in its input pipeline, so the eval split, the Evaluator
    and the exported serving model see the images as they are. Factors are fractions: rotation of
    a full turn (0.05 is up to +-18 degrees), zoom and translation of the image's size, contrast
    and brightness of the pixel range.
    """

    flip: Optional[Literal['horizontal', 'vertical', 'horizontal_and_vertical']] = None
    rotation: bounded(float, ge=0, le=0.5) = 0.0
    zoom: bounded(float, ge=0, lt=1) = 0.0
    translation: bounded(float, ge=0, lt=1) = 0.0
    contrast: bounded(float, ge=0, lt=1) = 0.0
    brightness: bounded(float, ge=0, le=1) = 0.0


class ModelSection(_Section):
    backbone: BackboneSection
    head: HeadSection = HeadSection()
    input: ImageShape
    augmentation: Optional[Augmentation] = None
    # float16 compute with float32 variables; worth it on GPUs with tensor cores. `auto`: on when
    # the Trainer sees a GPU, off on CPUs (where float16 is slower).
    mixed_precision: Union[bool, Literal['auto']] = 'auto'

    @pydantic.model_validator(mode='after')
    def _colour_for_colour_preprocessing(self) -> 'ModelSection':
        app = self.backbone.keras_application
        if app is not None and app.input_preprocessing in ('caffe', 'torch') and self.input.channels != 3:
            raise ValueError(f'input.channels = {self.input.channels}: {app.name} takes {app.input_preprocessing}-style '
                             f'preprocessing, which is defined on RGB images; expected channels 3')
        return self
