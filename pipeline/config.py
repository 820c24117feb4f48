"""The pipeline's single configuration: one YAML file, overridden by `--set`, validated once.

This module imports nothing heavy, so that a bad value is reported in well under a second,
before TensorFlow is imported. Relative paths are resolved against the working directory.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Literal, Optional, Union

import pydantic
import yaml

class ConfigError(ValueError):
    """An invalid configuration. Its message is one line: the key, the value, what was expected."""


class _Section(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra='forbid', frozen=True, strict=True)


def _require_existing_path(value: Optional[str]) -> Optional[str]:
    """Local paths must exist; URIs (gs://, s3://, ...) are checked by the step that reads them."""
    if value is not None and '://' not in value and not os.path.exists(value):
        raise ValueError('expected an existing file or directory')
    return value


class PipelineSection(_Section):
    """Where runs go and how the data steps run."""

    name: str = pydantic.Field(pattern=r'^[A-Za-z0-9][A-Za-z0-9_.-]*$')
    # Everything a run writes lands under <runs_dir>/<name>/.
    runs_dir: str = 'runs'
    # Beam arguments of the data steps and the Evaluator on this machine. Unset: chosen from the
    # input's size (pipeline/beam_mode.py), in this process for small data, one worker process per
    # core for large data.
    beam_args: Optional[tuple[str, ...]] = None
    enable_cache: bool = True


class Splits(_Section):
    """Hash buckets per split: the ratio train:eval:test."""

    train: int = pydantic.Field(default=8, ge=1)
    # Steers early stopping and learning-rate reduction.
    eval: int = pydantic.Field(default=1, ge=1)
    # Held out: only the Evaluator reads it, so the gate is not flattered.
    test: int = pydantic.Field(default=1, ge=1)


class DataSection(_Section):
    """Where the examples come from and which features hold the image and the label."""

    # digits: scikit-learn's handwritten digits (no download), written as TFRecords of tf.Example.
    # tfrecord: TFRecord files of tf.Example under `path`.
    # images: image folders, `<path>/<class>/<name>.png|jpg`; the folder names the class.
    # csv: CSV files with a header; the image column names an image file (relative to the CSV's
    #   folder), the label column the class; other columns become string features.
    source: Literal['digits', 'tfrecord', 'images', 'csv']
    path: Optional[str] = None
    # Which files under `path` to read (a glob; default `*` for tfrecord, `*/*` for images, `*.csv`
    # for csv). With `{SPAN}` (and optionally `{VERSION}`) in it, e.g. `span-{SPAN}/*/*`, each run
    # reads the newest span.
    pattern: Optional[str] = None
    # With {SPAN} in the pattern: read the newest N spans together (a rolling window), not only the newest.
    rolling_spans: int = pydantic.Field(default=1, ge=1)
    # images/csv: class (folder name or CSV value) -> label, for classes that are not numbers.
    class_names: dict[str, int] = {}
    # The label values the data may hold; any other stops the run before training. Required for a
    # binary task on your own data; default: the classes of a multiclass task, the digits of the
    # digits source.
    labels: Optional[tuple[int, ...]] = None
    # A curated schema (schema.pbtxt, e.g. from a previous run's SchemaGen, edited) that the data
    # are validated against, instead of one inferred from the data of the same run.
    schema_file: Optional[str] = None
    # For source=digits: which digits make up the data set.
    digits_classes: tuple[int, ...] = (5, 6, 7, 8, 9)
    image_feature: str = 'image'
    label_feature: str = 'label'
    splits: Splits = Splits()
    # Few labels: the Trainer keeps at most this many training examples of each class (binary:
    # positives and negatives), drawn with trainer.seed; eval and test stay whole. None: all.
    train_examples_per_class: Optional[int] = pydantic.Field(default=None, ge=1)
    # The largest image (width x height, read from its header) the data gate, Transform, the
    # serving signature and `predict` accept; a larger one is refused before it is decoded. The
    # default admits a 48-megapixel phone photo (8064x6048); decoded, 50 million pixels are 150 MB
    # of RGB uint8 and 600 MB as the float32 that resizing works in.
    max_image_pixels: int = pydantic.Field(default=50_000_000, ge=1)

    _path_exists = pydantic.field_validator('path', 'schema_file')(_require_existing_path)

    @pydantic.field_validator('pattern')
    @classmethod
    def _pattern(cls, value: Optional[str]) -> Optional[str]:
        if value is None:
            return value
        if not value or value.startswith('/'):
            raise ValueError('expected a glob relative to data.path, e.g. span-{SPAN}/*')
        if '{VERSION}' in value and '{SPAN}' not in value:
            raise ValueError('{VERSION} needs {SPAN} in the same pattern')
        return value

    @pydantic.field_validator('digits_classes')
    @classmethod
    def _digits(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(not 0 <= d <= 9 for d in value) or len(set(value)) != len(value):
            raise ValueError('expected distinct digits between 0 and 9')
        return value

    @pydantic.model_validator(mode='after')
    def _path_for_files(self) -> 'DataSection':
        if self.source != 'digits' and self.path is None:
            raise ValueError(f'expected `path` (the directory holding the data) when source is {self.source}')
        return self

    @pydantic.model_validator(mode='after')
    def _window_needs_spans(self) -> 'DataSection':
        if self.rolling_spans > 1 and '{SPAN}' not in self.input_pattern:
            raise ValueError(f'rolling_spans {self.rolling_spans} needs {{SPAN}} in data.pattern '
                             f'(got {self.input_pattern!r})')
        if self.rolling_spans > 1 and '{VERSION}' in self.input_pattern:
            raise ValueError('rolling_spans > 1 reads the newest spans whole; {VERSION} in data.pattern is not supported with it')
        return self

    @property
    def input_pattern(self) -> str:
        """`pattern`, or the default for the source."""
        return self.pattern or {'images': '*/*', 'csv': '*.csv'}.get(self.source, '*')


class TaskSection(_Section):
    """What the model predicts.

    binary: label == positive_class, against everything else; the model outputs P(positive).
    multiclass: one of `classes` (label values); the model outputs one probability per class,
    in the order of `classes`, and predicts the most probable one.
    """

    type: Literal['binary', 'multiclass'] = 'binary'
    positive_class: Optional[int] = None
    # multiclass: the label values, in output order. Default for source=digits: data.digits_classes.
    classes: Optional[tuple[int, ...]] = None

    @pydantic.model_validator(mode='after')
    def _fields_for_type(self) -> 'TaskSection':
        if self.type == 'binary' and self.positive_class is None:
            raise ValueError('expected `positive_class` (the label value of the positive class) when type is binary')
        if self.type == 'multiclass' and self.positive_class is not None:
            raise ValueError('`positive_class` is for type binary; multiclass gates every class (evaluation.class_thresholds)')
        if self.classes is not None and (len(self.classes) < 2 or len(set(self.classes)) != len(self.classes)):
            raise ValueError(f'expected `classes` to be at least two distinct label values, got {list(self.classes)}')
        return self


class ImageShape(_Section):
    """Images are decoded and resized to this shape (pixels) before the backbone."""

    height: int = pydantic.Field(ge=1)
    width: int = pydantic.Field(ge=1)
    channels: Literal[1, 3] = 1


class SourceTask(_Section):
    """A backbone pre-trained here on a source task: digits `classes`, none of the target's."""

    classes: tuple[int, ...] = (0, 1, 2, 3, 4)
    epochs: int = pydantic.Field(default=10, ge=1)
    seed: int = 0


# What each keras.applications family's weights expect of their input, as its `preprocess_input`
# does it; the backbone applies it to the pipeline's [0, 1] images (components/input_preprocessing.py).
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

    hidden_units: tuple[int, ...] = ()
    dropout: float = pydantic.Field(default=0.2, ge=0.0, lt=1.0)


class Augmentation(_Section):
    """Random changes to each training image (Keras' preprocessing layers), drawn anew every epoch.

    Training only: the Trainer applies them in its input pipeline, so the eval split, the Evaluator
    and the exported serving model see the images as they are. Factors are fractions: rotation of
    a full turn (0.05 is up to +-18 degrees), zoom and translation of the image's size, contrast
    and brightness of the pixel range.
    """

    flip: Optional[Literal['horizontal', 'vertical', 'horizontal_and_vertical']] = None
    rotation: float = pydantic.Field(default=0.0, ge=0.0, le=0.5)
    zoom: float = pydantic.Field(default=0.0, ge=0.0, lt=1.0)
    translation: float = pydantic.Field(default=0.0, ge=0.0, lt=1.0)
    contrast: float = pydantic.Field(default=0.0, ge=0.0, lt=1.0)
    brightness: float = pydantic.Field(default=0.0, ge=0.0, le=1.0)


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


class Unfreeze(_Section):
    """Which backbone layers train in a stage; the head always trains.

    Given as `none`, `all`, or a mapping with exactly one of the keys below.
    """

    mode: Literal['none', 'all', 'top_layers', 'top_fraction', 'from_layer', 'pattern']
    top_layers: Optional[int] = pydantic.Field(default=None, ge=1)
    top_fraction: Optional[float] = pydantic.Field(default=None, gt=0.0, le=1.0)
    from_layer: Optional[str] = None
    pattern: Optional[str] = None

    @pydantic.model_validator(mode='before')
    @classmethod
    def _from_yaml(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value not in ('none', 'all'):
                raise ValueError(
                    "expected 'none', 'all' or one of {top_layers: N}, {top_fraction: F}, "
                    '{from_layer: NAME}, {pattern: REGEX}')
            return {'mode': value}
        if isinstance(value, dict) and 'mode' not in value:
            if len(value) != 1:
                raise ValueError('expected exactly one of top_layers, top_fraction, from_layer, pattern')
            return {'mode': next(iter(value)), **value}
        return value

    @pydantic.field_validator('pattern')
    @classmethod
    def _regex(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            try:
                re.compile(value)
            except re.error as e:
                raise ValueError(f'expected a regular expression ({e})') from None
        return value

    @pydantic.model_validator(mode='after')
    def _value_for_mode(self) -> 'Unfreeze':
        if self.mode not in ('none', 'all') and getattr(self, self.mode) is None:
            raise ValueError(f'expected a value for {self.mode}')
        return self


class Schedule(_Section):
    """Step-based learning-rate schedule; steps count optimizer updates from the start of the stage.

    constant; cosine (to alpha * rate at the end of the stage); cosine_restarts (period
    decay_steps, each next period t_mul times longer and m_mul times lower); exponential
    (rate * decay_rate ** (step / decay_steps)); step (the same, dropping once per decay_steps);
    one_cycle (rises from rate / div_factor to rate over pct_start of the stage, then anneals to
    rate / (div_factor * final_div_factor)). Any of them may follow a linear warm-up.
    """

    name: Literal['constant', 'cosine', 'cosine_restarts', 'exponential', 'step', 'one_cycle'] = 'constant'
    # Linear warm-up from 0 to the stage's learning rate over this many optimizer steps.
    warmup_steps: int = pydantic.Field(default=0, ge=0)
    alpha: float = pydantic.Field(default=0.0, ge=0.0, le=1.0)
    # exponential, step, cosine_restarts; None means one epoch.
    decay_steps: Optional[int] = pydantic.Field(default=None, ge=1)
    decay_rate: float = pydantic.Field(default=0.5, gt=0.0, le=1.0)
    t_mul: float = pydantic.Field(default=2.0, ge=1.0)
    m_mul: float = pydantic.Field(default=1.0, gt=0.0, le=1.0)
    pct_start: float = pydantic.Field(default=0.25, gt=0.0, lt=1.0)
    div_factor: float = pydantic.Field(default=25.0, ge=1.0)
    final_div_factor: float = pydantic.Field(default=1e4, ge=1.0)


class LearningRateFinder(_Section):
    """The LR range test run for `learning_rate: auto`: the rate grows exponentially from min_lr to
    max_lr over `steps` optimizer steps (fewer if the loss diverges); the choice is the rate at the
    lowest smoothed loss divided by `divisor` (fastai's lr_find rule of thumb)."""

    min_lr: float = pydantic.Field(default=1e-7, gt=0.0)
    max_lr: float = pydantic.Field(default=1.0, gt=0.0)
    steps: int = pydantic.Field(default=200, ge=10)
    divisor: float = pydantic.Field(default=10.0, ge=1.0)

    @pydantic.model_validator(mode='after')
    def _range(self) -> 'LearningRateFinder':
        if self.max_lr <= self.min_lr:
            raise ValueError(f'expected max_lr > min_lr, got {self.max_lr} <= {self.min_lr}')
        return self


class Optimizer(_Section):
    name: Literal['adam', 'adamw', 'sgd', 'rmsprop'] = 'adam'
    # A positive number, or 'auto' to pick it by an LR range test (see LearningRateFinder).
    learning_rate: Union[float, Literal['auto']]
    momentum: float = pydantic.Field(default=0.0, ge=0.0, lt=1.0)
    weight_decay: Optional[float] = pydantic.Field(default=None, ge=0.0)
    clipnorm: Optional[float] = pydantic.Field(default=None, gt=0.0)

    @pydantic.field_validator('learning_rate', mode='before')
    @classmethod
    def _rate(cls, value: Any) -> Any:
        if value == 'auto':
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError("expected a positive number or 'auto'")
        return float(value)


class EarlyStopping(_Section):
    """Stops a stage when the validation metric stalls; the best weights are restored."""

    monitor: str = 'val_loss'
    patience: int = pydantic.Field(default=2, ge=0)
    min_delta: float = pydantic.Field(default=0.0, ge=0.0)

    @pydantic.field_validator('monitor')
    @classmethod
    def _validation_metric(cls, value: str) -> str:
        if not value.startswith('val_'):
            raise ValueError('expected a validation metric (val_loss, val_recall, val_precision, val_auc_pr, ...)')
        return value


class ReduceOnPlateau(EarlyStopping):
    """Multiplies the learning rate by `factor` when the validation metric stalls for `patience` epochs."""

    patience: int = pydantic.Field(default=1, ge=0)
    factor: float = pydantic.Field(default=0.5, gt=0.0, lt=1.0)
    min_lr: float = pydantic.Field(default=0.0, ge=0.0)


class Stage(_Section):
    # Names a directory of the Trainer's output (its TensorBoard logs), so never '.' or '..'.
    name: str = pydantic.Field(pattern=r'^[A-Za-z0-9_.-]+$')
    epochs: int = pydantic.Field(ge=1)
    unfreeze: Unfreeze
    # Let unfrozen BatchNormalization layers train (and so run in training mode); off by default.
    train_batchnorm: bool = False
    optimizer: Optimizer
    schedule: Schedule = Schedule()
    lr_finder: LearningRateFinder = LearningRateFinder()
    reduce_on_plateau: Optional[ReduceOnPlateau] = None
    # Discriminative rates: each unfrozen backbone layer (with weights) learns at this fraction of
    # the rate of the layer above it; the top unfrozen layer and the head learn at the full rate.
    layerwise_decay: Optional[float] = pydantic.Field(default=None, gt=0.0, le=1.0)
    early_stopping: Optional[EarlyStopping] = None
    # Whether model.augmentation changes this stage's training images. false: the stage trains on
    # them as they are, and a stage that trains only the head on a frozen backbone then computes the
    # backbone's features once and reuses them every epoch (README "Speed").
    augment: bool = True

    @pydantic.field_validator('name')
    @classmethod
    def _not_a_relative_directory(cls, value: str) -> str:
        if set(value) == {'.'}:
            raise ValueError('expected a name with a letter, digit, _ or - in it (it names a directory of the '
                             "Trainer's output)")
        return value

    @pydantic.model_validator(mode='after')
    def _plateau_needs_a_settable_rate(self) -> 'Stage':
        if self.reduce_on_plateau is not None and (self.schedule.name != 'constant' or self.schedule.warmup_steps):
            raise ValueError(
                f'reduce_on_plateau needs schedule constant without warm-up (it sets the rate directly), '
                f'got schedule {self.schedule.name!r} with warmup_steps {self.schedule.warmup_steps}')
        return self


def _distinct_stage_names(value: tuple[Stage, ...]) -> tuple[Stage, ...]:
    names = [s.name for s in value]
    if len(set(names)) != len(names):
        raise ValueError(f'expected distinct stage names, got {names}')
    return value


class WarmStart(_Section):
    """Retraining from the model in production instead of the backbone: when a model has been
    pushed, the Trainer loads its weights and runs these stages (typically one short stage at a
    low rate); the first run, with nothing in production, runs `trainer.stages` from the backbone.
    The model architecture (model.backbone, model.head, model.input) must not change in between."""

    stages: tuple[Stage, ...] = pydantic.Field(min_length=1)

    _names = pydantic.field_validator('stages')(_distinct_stage_names)


class TrainerSection(_Section):
    batch_size: int = pydantic.Field(default=32, ge=1)
    # None: one pass over the training split per epoch.
    steps_per_epoch: Optional[int] = pydantic.Field(default=None, ge=1)
    seed: int = 0
    # Weights of each class in the training loss (Keras' fit class_weight). `balanced`: n / (k * n_c)
    # from the training split's counts, as scikit-learn's compute_class_weight. Or label value ->
    # weight (unlisted labels weigh 1); binary tasks weigh positives and negatives, so every negative
    # label listed must have the same weight.
    class_weight: Union[Literal['balanced'], dict[int, float], None] = None
    stages: tuple[Stage, ...] = pydantic.Field(min_length=1)
    warm_start: Optional[WarmStart] = None

    _names = pydantic.field_validator('stages')(_distinct_stage_names)

    @pydantic.field_validator('class_weight', mode='before')
    @classmethod
    def _class_weight(cls, value: Any) -> Any:
        if value is None or value == 'balanced':
            return value
        if not isinstance(value, dict) or not value or any(
                isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0 for w in value.values()
        ) or not all(re.fullmatch(r'-?\d+', str(k)) for k in value):
            raise ValueError("expected 'balanced' or a mapping from label value to a positive weight, e.g. {1: 4.0}")
        # Keys arrive as text from JSON.
        return {int(k): float(w) for k, w in value.items()}


GATE_METRICS = ('recall', 'precision', 'auc_pr', 'accuracy')


class Floors(_Section):
    """Absolute floors: the gate passes only if each metric set here is >= its value.

    Metrics left unset are still computed and reported, for information only.
    binary: of the positive class at the decision threshold (auc_pr: area under its PR curve).
    multiclass: the macro average over classes; accuracy: the share whose most probable class is right.
    """

    recall: Optional[float] = pydantic.Field(default=None, ge=0.0, le=1.0)
    precision: Optional[float] = pydantic.Field(default=None, ge=0.0, le=1.0)
    auc_pr: Optional[float] = pydantic.Field(default=None, ge=0.0, le=1.0)
    accuracy: Optional[float] = pydantic.Field(default=None, ge=0.0, le=1.0)

    def items(self) -> list[tuple[str, float]]:
        return [(k, v) for k in GATE_METRICS if (v := getattr(self, k)) is not None]


class ClassFloors(Floors):
    """Floors for one class of a multiclass task (accuracy is not per class)."""

    accuracy: None = None


class MaxDrop(_Section):
    """Regression limits against the model in production (the latest pushed one): the candidate's
    metric may be at most this much below production's on the same split. First run: no limits apply.
    """

    recall: Optional[float] = pydantic.Field(default=None, ge=0.0, le=1.0)
    precision: Optional[float] = pydantic.Field(default=None, ge=0.0, le=1.0)
    auc_pr: Optional[float] = pydantic.Field(default=None, ge=0.0, le=1.0)
    accuracy: Optional[float] = pydantic.Field(default=None, ge=0.0, le=1.0)

    items = Floors.items


class Slice(_Section):
    """A feature of the raw examples; the floors apply again within each of its values."""

    feature: str = pydantic.Field(min_length=1)
    # Only these values (default: every value found in the split).
    values: Optional[tuple[Union[int, str], ...]] = pydantic.Field(default=None, min_length=1)


class DecisionTarget(_Section):
    """A binary decision threshold chosen on data: after training, on the `eval` split (never
    `test`), the Trainer takes the threshold with the best precision among those whose eval
    recall's lower bound at evaluation.confidence (two-sided evaluation.interval) reaches
    `target_recall`, so its recall on new data falls short with probability at most
    (1 - confidence) / 2 (or the best recall among those whose precision's lower bound reaches
    `target_precision`); with confidence null, the point rule: the eval value itself reaches the
    target. The exported model carries it and serves the decision with it; the gate applies it on
    `test`."""

    target_recall: Optional[float] = pydantic.Field(default=None, gt=0.0, le=1.0)
    target_precision: Optional[float] = pydantic.Field(default=None, gt=0.0, le=1.0)

    @pydantic.model_validator(mode='after')
    def _exactly_one(self) -> 'DecisionTarget':
        if (self.target_recall is None) == (self.target_precision is None):
            raise ValueError('expected exactly one of target_recall, target_precision')
        return self


class EvaluationSection(_Section):
    """The release gate, read on the held-out `test` split (training never saw it, and early
    stopping and learning-rate reduction watched `eval`, so it does not flatter the model)."""

    thresholds: Floors
    # multiclass: floors per class, keyed by label value.
    class_thresholds: dict[int, ClassFloors] = {}
    max_drop: MaxDrop = MaxDrop()
    slices: tuple[Slice, ...] = ()
    # binary: probability above which an example is predicted positive: a number, or
    # {target_recall: R} / {target_precision: P} to have the Trainer choose it on the eval split
    # (DecisionTarget). (multiclass: the most probable class is the prediction.)
    decision_threshold: Union[DecisionTarget, float] = 0.5
    # How sure the gate must be (README "Choosing the gate"): a floor passes only when the lower
    # end of the metric's two-sided interval at this level clears it; the candidate is worse than
    # production only when the interval for its drop lies above max_drop; a decision threshold
    # chosen on eval meets its target at this level. null: the point rule (the value itself).
    confidence: Optional[float] = pydantic.Field(default=0.95, gt=0.5, lt=1.0)
    # The binomial interval of recall, precision and accuracy (components.gate_statistics).
    interval: Literal['clopper_pearson', 'wilson'] = 'clopper_pearson'

    @pydantic.field_validator('decision_threshold', mode='before')
    @classmethod
    def _threshold(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise ValueError('expected a number between 0 and 1 (exclusive), or {target_recall: R} or '
                             '{target_precision: P}')
        return float(value)

    @property
    def fixed_threshold(self) -> float:
        """The threshold the Trainer's metrics use: the number given, or 0.5 until one is chosen."""
        return self.decision_threshold if isinstance(self.decision_threshold, float) else 0.5

    @property
    def decision_target(self) -> Optional[DecisionTarget]:
        return self.decision_threshold if isinstance(self.decision_threshold, DecisionTarget) else None

    @pydantic.model_validator(mode='after')
    def _something_gated(self) -> 'EvaluationSection':
        if not self.thresholds.items() and not any(f.items() for f in self.class_thresholds.values()):
            raise ValueError('thresholds = {} and no class_thresholds: expected at least one floor '
                             '(a gate without floors would bless any model)')
        return self


class Resources(_Section):
    """Kubernetes requests for one step. `accelerator` is the resource name, e.g. nvidia.com/gpu."""

    cpu: Optional[str] = pydantic.Field(default=None, pattern=r'^\d+(\.\d+)?m?$')
    memory: Optional[str] = pydantic.Field(default=None, pattern=r'^\d+(\.\d+)?([KMGT]i?)?$')
    accelerator: Optional[str] = None
    accelerator_count: int = pydantic.Field(default=1, ge=1)


class Images(_Section):
    """Container images: `default` for every step (CPU); `trainer` for the Trainer (GPU)."""

    default: str = pydantic.Field(min_length=1)
    trainer: Optional[str] = None


class KubeflowSchedule(_Section):
    """Recurring runs: a cron expression with seconds, as Kubeflow Pipelines reads it."""

    cron: str = pydantic.Field(pattern=r'^\S+( \S+){5}$')
    # One run at a time: two overlapping runs would gate against the same production model. No lock
    # spans pods, so this and the Pusher's compare-and-swap are what keep releases one at a time.
    max_concurrency: int = pydantic.Field(default=1, ge=1, le=1)


class KubeflowSection(_Section):
    """Where the pipeline runs on a cluster: object-storage locations, images, resources, schedule."""

    pipeline_root: str = pydantic.Field(min_length=1)
    # The pre-trained backbone the Importer brings in: a .keras file or a directory holding backbone.keras.
    backbone_uri: str = pydantic.Field(min_length=1)
    serving_dir: str = pydantic.Field(min_length=1)
    images: Images
    trainer_resources: Resources = Resources()
    step_resources: Resources = Resources()
    # Beam arguments of the data steps on the cluster (e.g. --runner=DataflowRunner ...).
    beam_args: tuple[str, ...] = ()
    schedule: Optional[KubeflowSchedule] = None

    @pydantic.field_validator('step_resources')
    @classmethod
    def _no_accelerator_for_other_steps(cls, value: Resources) -> Resources:
        if value.accelerator is not None:
            raise ValueError('only the Trainer gets an accelerator (set kubeflow.trainer_resources.accelerator)')
        return value


class Config(_Section):
    pipeline: PipelineSection
    data: DataSection
    task: TaskSection
    model: ModelSection
    trainer: TrainerSection
    evaluation: EvaluationSection
    # Only for `python -m pipeline compile` / `schedule`.
    kubeflow: Optional[KubeflowSection] = None

    @pydantic.model_validator(mode='after')
    def _cluster_data(self) -> 'Config':
        if self.kubeflow is not None and self.data.source == 'digits':
            raise ValueError('kubeflow: expected data.source tfrecord, images or csv with data.path on object storage '
                             f'(got data.source {self.data.source!r}, which is written on this machine)')
        return self

    @pydantic.model_validator(mode='after')
    def _consistent(self) -> 'Config':
        for s in self.evaluation.slices:
            if s.feature == self.data.label_feature:
                raise ValueError(
                    f'evaluation.slices: feature {s.feature!r} is the label; recall and precision are undefined on '
                    f'slices without positives, which fails the gate. For per-class floors use task.type '
                    f'multiclass with evaluation.class_thresholds')
        digits = self.data.digits_classes if self.data.source == 'digits' else None
        if self.task.type == 'binary':
            if self.data.source != 'digits' and self.data.labels is None:
                raise ValueError(
                    f'data.labels: required for a binary task on your own data: the label values it may hold, '
                    f'e.g. [0, {self.task.positive_class}]. Every value but task.positive_class '
                    f'{self.task.positive_class} is a negative, so an undeclared value (a typo, -1 for '
                    f'"unknown") would silently train as one; with data.labels it stops the run before training')
            if self.data.labels is not None and self.task.positive_class not in self.data.labels:
                raise ValueError(f'task.positive_class {self.task.positive_class} is not among data.labels '
                                 f'{list(self.data.labels)}')
            if digits and self.task.positive_class not in digits:
                raise ValueError(f'task.positive_class {self.task.positive_class} is not among data.digits_classes '
                                 f'{list(digits)}')
            if self.evaluation.class_thresholds:
                raise ValueError('evaluation.class_thresholds is for task.type multiclass; binary floors go in '
                                 'evaluation.thresholds')
            return self
        if self.evaluation.decision_target is not None:
            raise ValueError('evaluation.decision_threshold: a target recall or precision is for binary tasks; '
                             'a multiclass model predicts its most probable class')
        if self.task.classes is None and digits is None:
            raise ValueError('task.classes: expected the label values (in output order) for a multiclass task')
        classes = self.classes
        if digits and set(classes) != set(digits):
            raise ValueError(f'task.classes {list(classes)} differ from data.digits_classes {list(digits)}')
        unknown = sorted(set(self.evaluation.class_thresholds) - set(classes))
        if unknown:
            raise ValueError(f'evaluation.class_thresholds names {unknown}, which are not among task.classes '
                             f'{list(classes)}')
        return self

    @pydantic.model_validator(mode='after')
    def _class_weights_known(self) -> 'Config':
        self._check_class_weight()
        return self

    @property
    def class_weight(self) -> Union[str, dict[int, float], None]:
        """trainer.class_weight as Keras' fit takes it: 'balanced' (resolved by the Trainer from the
        training split), None, or the model's target (0/1 for binary, the class index for multiclass)
        -> weight."""
        weights = self.trainer.class_weight
        if not isinstance(weights, dict):
            return weights
        if self.task.type == 'multiclass':
            return {i: weights.get(label, 1.0) for i, label in enumerate(self.classes)}
        negatives = {w for label, w in weights.items() if label != self.task.positive_class}
        return {0: negatives.pop() if negatives else 1.0, 1: weights.get(self.task.positive_class, 1.0)}

    def _check_class_weight(self) -> None:
        weights = self.trainer.class_weight
        if not isinstance(weights, dict):
            return
        known = self.known_labels if self.task.type == 'binary' else self.classes
        unknown = sorted(set(weights) - set(known)) if known is not None else []
        if unknown:
            raise ValueError(f'trainer.class_weight names labels {unknown}, which are not among the labels '
                             f'{list(known)}')
        if self.task.type == 'binary':
            negatives = {label: w for label, w in weights.items() if label != self.task.positive_class}
            if len(set(negatives.values())) > 1:
                raise ValueError(f'trainer.class_weight: a binary task weighs all negatives alike, got '
                                 f'{negatives} for the labels that are not positive_class '
                                 f'{self.task.positive_class}')

    @property
    def classes(self) -> tuple[int, ...]:
        """multiclass: the label values in the order of the model's outputs."""
        return self.task.classes or self.data.digits_classes

    @property
    def known_labels(self) -> Optional[tuple[int, ...]]:
        """The label values data validation accepts (None: any)."""
        if self.data.labels is not None:
            return self.data.labels
        if self.task.type == 'multiclass':
            return self.classes
        return self.data.digits_classes if self.data.source == 'digits' else None

    @property
    def run_dir(self) -> str:
        return os.path.join(self.pipeline.runs_dir, self.pipeline.name)


# A config is a page of settings; anything far larger is not one (and would cost memory to read).
MAX_CONFIG_BYTES = 1 << 20


class _Loader(yaml.SafeLoader):
    """SafeLoader with two changes. YAML 1.1 reads `1e-3` as a string; learning rates are written
    that way, so it reads as a float. Aliases (`*name`) are refused: a few hundred bytes of nested
    aliases expand to gigabytes once the config is validated (a "billion laughs" document), and a
    config has no need to share nodes."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise _AliasRefused(f'line {mark.line + 1}, column {mark.column + 1}: YAML aliases (*name) are not '
                                'supported in a config; write the value out')
        return super().compose_node(parent, index)


class _AliasRefused(yaml.YAMLError):
    """An alias in a config; its message is the whole line to print."""


_Loader.add_implicit_resolver(
    'tag:yaml.org,2002:float',
    re.compile(r'^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$'),
    list('-+0123456789'),
)


def parse_value(text: str) -> Any:
    """A `--set` value, read as YAML: `0.5` is a number, `[1, 2]` a list, `abc` a string."""
    return yaml.load(text, Loader=_Loader) if text.strip() else ''


def apply_override(data: dict, assignment: str) -> None:
    """Applies `dotted.key=value` to the raw config; list items are addressed by index."""
    key, sep, text = assignment.partition('=')
    if not sep or not key:
        raise ConfigError(f'--set {assignment!r}: expected dotted.key=value')
    parts = key.split('.')
    node: Any = data
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = '.'.join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f'{where}: expected a list index below {len(node)}')
            part = int(part)
        elif not isinstance(node, dict):
            raise ConfigError(f'{where}: {".".join(parts[:depth])} is not a mapping')
        if last:
            try:
                node[part] = parse_value(text)
            except _AliasRefused as e:
                raise ConfigError(f'--set {key}: {e}') from None
            except yaml.YAMLError as e:
                raise ConfigError(f'--set {key}: not a YAML value ({" ".join(str(e).split())})') from None
        else:
            if isinstance(node, dict) and node.get(part) is None:
                node[part] = {}
            node = node[part]


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + '...'


def _section_names(cls=None) -> set[str]:
    names = set()
    for sub in (cls or _Section).__subclasses__():
        names |= {sub.__name__} | _section_names(sub)
    return names


def _is_key(part) -> bool:
    """Whether a part of pydantic's error location is a config key, not a validator or union tag
    (`function-after[...]`, `literal['balanced']`, `float`, a section's class name)."""
    text = str(part)
    return not (re.match(r'^(function-\w+|literal|dict|tuple)\[', text) or text in ('function-after', 'float', 'int')
                or text in _section_names())


def _error_line(error: dict) -> str:
    location = '.'.join(str(p) for p in error['loc'] if _is_key(p))
    message = error['msg']
    if message.startswith('Value error, '):
        message = message[len('Value error, '):]
    if error['type'] == 'extra_forbidden':
        return f'{location}: unknown key (value {_describe(error["input"])})'
    if error['type'] == 'missing':
        return f'{location}: required key is missing'
    message = message[0].lower() + message[1:]
    if isinstance(error['input'], dict):
        # A check across several keys of a section: the message names them.
        return f'{location or "<top level>"}: {message}'
    return f'{location or "<top level>"} = {_describe(error["input"])}: {message}'


def _refuse_boolean_folder_names(data: Any) -> None:
    """YAML reads an unquoted yes/no/on/off/true/false as a boolean; as a data.class_names key it
    would become the text 'true' or 'false' (JSON has no other keys) and match no folder."""
    names = data.get('data', {}).get('class_names') if isinstance(data, dict) and isinstance(data.get('data'), dict) else None
    booleans = [k for k in names if isinstance(k, bool)] if isinstance(names, dict) else []
    if booleans:
        raise ConfigError(f'data.class_names = {_describe(names)}: the folder names {booleans} were read as booleans '
                          "(YAML reads unquoted yes/no/on/off/true/false so); expected folder names in quotes, "
                          "e.g. {'no': 0, 'yes': 1}")


def validate(data: Any, section: type[_Section] = None) -> Any:
    """Validates raw config data (by default a whole Config); raises ConfigError naming the first bad key.

    Sections travel to components as plain data (`section.model_dump(mode='json')`) and are
    validated again there with this function.
    """
    _refuse_boolean_folder_names(data if section is None else None)
    try:
        # JSON mode: strict about types (no '3' for 3), yet lists may fill tuples.
        return (section or Config).model_validate_json(json.dumps(data, default=str))
    except pydantic.ValidationError as e:
        raise ConfigError(_error_line(e.errors()[0])) from None


def read_config_file(path: str) -> dict:
    """The raw mapping in a YAML config file, not yet validated."""
    try:
        with open(path, 'rb') as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f'--config {path}: larger than {MAX_CONFIG_BYTES} bytes; expected a YAML config '
                              f'of a few kilobytes')
        data = yaml.load(raw.decode('utf-8'), Loader=_Loader)
    except OSError as e:
        raise ConfigError(f'--config {path}: cannot read it ({e.strerror})') from None
    except UnicodeDecodeError as e:
        raise ConfigError(f'--config {path}: not UTF-8 text (byte {e.start})') from None
    except _AliasRefused as e:
        raise ConfigError(f'--config {path}: {e}') from None
    except yaml.YAMLError as e:
        raise ConfigError(f'--config {path}: not valid YAML ({" ".join(str(e).split())})') from None
    if not isinstance(data, dict):
        raise ConfigError(f'--config {path}: expected a mapping at the top level')
    return data


# Words in a Beam argument's name that say it carries a credential.
_CREDENTIAL_WORDS = ('secret', 'key', 'token', 'password')
# Beam arguments with one of those words that name a resource, not a credential.
_NOT_CREDENTIALS = ('dataflow_kms_key',)
# user:password@ in a URL.
_URL_CREDENTIALS = re.compile(r'[A-Za-z][A-Za-z0-9+.-]*://[^/\s@:]+:[^/\s@]*@')
_WHERE_CREDENTIALS_GO = ("give the pods (or this machine) a service account with access, or set the credential "
                         "in the environment (e.g. AWS_SECRET_ACCESS_KEY), where the filesystem reads it")


def _beam_credential(arg: Any) -> Optional[str]:
    """The name of a Beam argument (`--name=value` or `--name`) that carries a credential, or None."""
    if not isinstance(arg, str) or not arg.startswith('-'):
        return None
    name = arg.lstrip('-').split('=', 1)[0]
    if name.lower() in _NOT_CREDENTIALS:
        return None
    return name if any(word in name.lower() for word in _CREDENTIAL_WORDS) else None


def _credentials(data: Any, where: str = '') -> list[str]:
    """One line per place in the raw config that holds a credential in clear text (never the value).

    A config travels into the compiled Kubeflow spec, the ML Metadata store and the run report,
    which the Kubeflow UI displays: a credential there is readable by anyone who can see a run.
    """
    if isinstance(data, dict):
        return [line for key, value in data.items() for line in _credentials(value, f'{where}.{key}'.lstrip('.'))]
    if isinstance(data, (list, tuple)):
        lines = [line for i, value in enumerate(data) for line in _credentials(value, f'{where}.{i}')]
        if where.endswith('beam_args'):
            lines += [f"{where}: '--{name}' carries a credential; {_WHERE_CREDENTIALS_GO}"
                      for name in filter(None, map(_beam_credential, data))]
        return lines
    if isinstance(data, str) and _URL_CREDENTIALS.search(data):
        return [f'{where}: a URL with user:password@ carries a credential; {_WHERE_CREDENTIALS_GO}']
    return []


def load_config(path: str, overrides: tuple[str, ...] = ()) -> Config:
    """Reads the YAML file at `path`, applies `key=value` overrides and validates the result."""
    data = read_config_file(path)
    for assignment in overrides:
        apply_override(data, assignment)
    credentials = _credentials(data)
    if credentials:
        raise ConfigError(credentials[0])
    return validate(data)
