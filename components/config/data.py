"""Where runs go, the data, the task and the image shape."""

from __future__ import annotations

import re
from typing import Literal, Optional

import pydantic

from components.config.base import Label, _Section, _require_existing_path, bounded


# The largest image the pipeline decodes: 1e9 pixels (31,623 x 31,623) are 3 GB as RGB uint8 and
# 12 GB as the float32 that resizing works in, past the memory of a step on any machine this runs
# on and of any camera (phone sensors reach 200 megapixels); it also keeps width x height within
# TensorFlow's int32.
ImagePixels = bounded(int, ge=1, le=1_000_000_000)
# A cap on examples; any count past the data's size means all of them.
ExamplesPerClass = bounded(int, ge=1, le=1_000_000_000)
# Hash buckets of one split: ratios down to 1:1000 (0.1%).
SplitBuckets = bounded(int, ge=1, le=1000)


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

    train: SplitBuckets = 8
    # Steers early stopping and learning-rate reduction.
    eval: SplitBuckets = 1
    # Held out: only the Evaluator reads it, so the gate is not flattered.
    test: SplitBuckets = 1


class Duplicates(_Section):
    """Near-duplicate photos (re-saved, resized, re-compressed or metadata-stripped copies) found by
    a 64-bit perceptual hash (pHash: the low frequencies of a 32x32 grey DCT, TensorFlow ops) of each
    image as Transform decodes it, EXIF orientation applied."""

    # Two images are near-duplicates when their hashes differ in at most this many of 64 bits.
    # Measured on 4,064 real flower photos: re-saved at JPEG quality 70, resized by 10%, stripped of
    # metadata or saved as PNG, every copy stayed within 2 bits of its original; among the originals
    # 33 pairs were within 6 bits, by eye all but one the same photo (colour-shifted or cropped
    # copies), and pairs at 8 to 10 bits were mostly different photos. null: no grouping, no check.
    max_distance: Optional[int] = pydantic.Field(default=6, ge=0, le=32)
    # A test photo with a near-duplicate in train or eval: `stop` the run at the data gate (exit 4),
    # or `warn` (a note in the summary and the report) and go on.
    across_splits: Literal['stop', 'warn'] = 'stop'


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
    rolling_spans: bounded(int, ge=1, le=1000) = 1
    # images/csv: class (folder name or CSV value) -> label, for classes that are not numbers.
    class_names: dict[str, Label] = {}
    # The label values the data may hold; any other stops the run before training. Required for a
    # binary task on your own data; default: the classes of a multiclass task, the digits of the
    # digits source.
    labels: Optional[tuple[Label, ...]] = None
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
    train_examples_per_class: Optional[ExamplesPerClass] = None
    # The largest image (width x height, read from its header) the data gate, Transform, the
    # serving signature and `predict` accept; a larger one is refused before it is decoded. The
    # default admits a 48-megapixel phone photo (8064x6048); decoded, 50 million pixels are 150 MB
    # of RGB uint8 and 600 MB as the float32 that resizing works in.
    max_image_pixels: ImagePixels = 50_000_000
    # images/csv: near-duplicate photos are grouped, and a group goes to one split; every source:
    # the data gate reports the groups and stops a run whose test split shares one with train or
    # eval. Images under 32 pixels on a side (the 8x8 digits) are not hashed: at that size unrelated
    # images hash alike.
    duplicates: Duplicates = Duplicates()
    # A feature whose examples must share one split, e.g. a CSV column or TFRecord feature holding a
    # part, patient or photo-session id (TFX's partition_feature_name): same object, not same pixels.
    group_feature: Optional[str] = None
    # images: file extensions read besides .jpg, .jpeg, .png, .gif and .bmp (what TensorFlow decodes),
    # e.g. ['.jfif']; the content must still decode. Other files are skipped and counted.
    extra_extensions: tuple[str, ...] = ()

    _path_exists = pydantic.field_validator('path', 'schema_file')(_require_existing_path)

    @pydantic.field_validator('extra_extensions')
    @classmethod
    def _extensions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for extension in value:
            if not re.fullmatch(r'\.[A-Za-z0-9]{1,10}', extension):
                raise ValueError(f'{extension!r}: expected an extension such as .jfif (a dot, then 1-10 letters or digits)')
        return tuple(extension.lower() for extension in value)

    @pydantic.model_validator(mode='after')
    def _group_feature(self) -> 'DataSection':
        if self.group_feature is not None and self.source in ('digits', 'images'):
            raise ValueError(f'group_feature {self.group_feature!r} needs a source whose examples carry features '
                             f'(csv or tfrecord), not {self.source}')
        if self.group_feature in (self.image_feature, self.label_feature):
            raise ValueError(f'group_feature {self.group_feature!r} is the image or the label feature; '
                             'expected a feature naming the object, e.g. part_id')
        return self

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
    positive_class: Optional[Label] = None
    # multiclass: the label values, in output order. Default for source=digits: data.digits_classes.
    classes: Optional[tuple[Label, ...]] = None

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

    # At most 4096: seven times the largest input a keras.applications network was trained at
    # (EfficientNetB7, 600); one 4096 x 4096 RGB image is 200 MB as float32, before any activation.
    height: bounded(int, ge=1, le=4096)
    width: bounded(int, ge=1, le=4096)
    channels: Literal[1, 3] = 1
