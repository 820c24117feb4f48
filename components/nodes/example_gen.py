"""ExampleGen for the data users have (TFRecords of tf.Example, image folders, CSV files naming
images), resolving input spans themselves when no driver has.

TFX resolves `{SPAN}` / `{VERSION}` in an input pattern in ExampleGen's driver. LocalDagRunner runs
that driver; on Kubeflow, TFX compiles it into the `lifecycle.preCacheCheck` hook of the step,
which the open-source Kubeflow Pipelines backend never runs, so the executor would glob for a
literal `{SPAN}` and find nothing. These executors do what the driver does, with TFX's own input
processor, whenever the span is missing from their exec properties; when a driver did run they
keep its choice. With `rolling_spans` N > 1 they then widen the input to the N newest spans
(ExampleGen's RangeConfig names a single span).
"""

import csv
import io
import json
import os
import posixpath
import re
from typing import Any, Iterator, Optional

import apache_beam as beam
import tensorflow as tf
from absl import logging
from google.protobuf import json_format, struct_pb2
from tfx.components.example_gen import base_example_gen_executor, driver, input_processor, utils
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.components.example_gen.import_example_gen import executor as import_executor
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2, range_config_pb2
from tfx.dsl.io import fileio
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import proto_utils

from components.shared import data_checks, input_files, node_ids

# Keys of the CustomConfig both ExampleGens get.
PATTERN = 'pattern'
ROLLING_SPANS = 'rolling_spans'
# Joins the patterns of a rolling window of spans in one split pattern (no file name holds it).
PATTERN_SEPARATOR = '\n'


def resolve_spans(exec_properties: dict[str, Any]) -> dict[str, Any]:
    """exec_properties as ExampleGen's driver leaves them: patterns with the span and version
    filled in (the newest, or the one range_config names), and span/version/fingerprint set."""
    input_config = proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY],
                                             example_gen_pb2.Input())
    range_config = None
    if exec_properties.get(standard_component_specs.RANGE_CONFIG_KEY):
        range_config = proto_utils.json_to_proto(exec_properties[standard_component_specs.RANGE_CONFIG_KEY],
                                                 range_config_pb2.RangeConfig())
    processor = input_processor.FileBasedInputProcessor(
        exec_properties[standard_component_specs.INPUT_BASE_KEY], input_config.splits, range_config)
    span, version = processor.resolve_span_and_version()
    fingerprint = processor.get_input_fingerprint(span, version)
    for split in input_config.splits:
        split.pattern = processor.get_pattern_for_span_version(split.pattern, span, version)
    return {**exec_properties,
            standard_component_specs.INPUT_CONFIG_KEY: proto_utils.proto_to_json(input_config),
            utils.SPAN_PROPERTY_NAME: span, utils.VERSION_PROPERTY_NAME: version,
            utils.FINGERPRINT_PROPERTY_NAME: fingerprint}


def window_patterns(input_base: str, pattern: str, newest: int, count: int) -> list[tuple[int, str]]:
    """(span, pattern with that span) for the `count` newest spans up to `newest` that exist under
    `input_base` (spans need not be consecutive), oldest first."""
    regex = re.compile('^' + re.escape(pattern).replace(re.escape('{SPAN}'), r'(\d+)')
                       .replace(re.escape('*'), '[^/]*').replace(re.escape('?'), '[^/]') + '$')
    base = input_base.rstrip('/') + '/'
    found: dict[int, str] = {}
    for path in fileio.glob(base + pattern.replace('{SPAN}', '*')):
        match = regex.match(path[len(base):] if path.startswith(base) else path)
        if match:
            found.setdefault(int(match.group(1)), match.group(1))
    chosen = sorted(span for span in found if span <= newest)[-count:]
    return [(span, pattern.replace('{SPAN}', found[span])) for span in chosen]


def _rolling_window(exec_properties: dict[str, Any], examples) -> dict[str, Any]:
    """With rolling_spans N > 1 in the custom config: the split pattern becomes the patterns of
    the N newest spans up to the resolved one (joined by PATTERN_SEPARATOR), and the Examples
    artifact records them in its `spans` custom property."""
    settings = _settings(exec_properties)
    count = int(settings.get(ROLLING_SPANS, 1))
    if count <= 1 or '{SPAN}' not in settings.get(PATTERN, ''):
        return exec_properties
    window = window_patterns(exec_properties[standard_component_specs.INPUT_BASE_KEY], settings[PATTERN],
                             exec_properties[utils.SPAN_PROPERTY_NAME], count)
    input_config = proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY],
                                             example_gen_pb2.Input())
    input_config.splits[0].pattern = PATTERN_SEPARATOR.join(p for _, p in window)
    examples.set_string_custom_property('spans', json.dumps([span for span, _ in window]))
    logging.info('Reading spans %s', [span for span, _ in window])
    return {**exec_properties, standard_component_specs.INPUT_CONFIG_KEY: proto_utils.proto_to_json(input_config)}


class _ResolvesSpans:
    """Mixed into an ExampleGen executor: resolve spans when the driver did not, and widen the
    input to a rolling window of spans when configured."""

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        examples = artifact_utils.get_single_instance(output_dict[standard_component_specs.EXAMPLES_KEY])
        if exec_properties.get(utils.SPAN_PROPERTY_NAME) is None:
            exec_properties = resolve_spans(exec_properties)
            driver.update_output_artifact(exec_properties, examples.mlmd_artifact)
            logging.info('No ExampleGen driver ran: resolved span %s, version %s here.',
                         exec_properties[utils.SPAN_PROPERTY_NAME], exec_properties[utils.VERSION_PROPERTY_NAME])
        if exec_properties.get(standard_component_specs.CUSTOM_CONFIG_KEY):
            exec_properties = _rolling_window(exec_properties, examples)
        super().Do(input_dict, output_dict, exec_properties)


def _per_pattern(read: beam.PTransform):
    """`read`(exec_properties, pattern) applied to each of the patterns a rolling window joined."""

    @beam.ptransform_fn
    def _Read(pipeline: beam.Pipeline, exec_properties: dict[str, Any], split_pattern: str):
        patterns = split_pattern.split(PATTERN_SEPARATOR)
        if len(patterns) == 1:
            return pipeline | read(exec_properties, split_pattern)
        return ([pipeline | f'Span[{i}]' >> read(exec_properties, pattern) for i, pattern in enumerate(patterns)]
                | 'Spans' >> beam.Flatten())

    return _Read


class SpanResolvingImportExecutor(_ResolvesSpans, import_executor.Executor):
    """ImportExampleGen's executor (TFRecords of tf.Example), resolving spans without a driver."""

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        return _per_pattern(super().GetInputSourceToExamplePTransform())


class SpanImportExampleGen(FileBasedExampleGen):
    """tfx.components.ImportExampleGen with SpanResolvingImportExecutor (node id ImportExampleGen);
    a FileBasedExampleGen, since ImportExampleGen's constructor takes no custom_config."""

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(SpanResolvingImportExecutor)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.with_id(node_ids.EXAMPLE_GEN)


def custom_config(pattern: str, rolling_spans: int = 1, **settings_for_images):
    """The ExampleGens' CustomConfig: the input pattern as configured and how many of the newest
    spans to read; for ImageExampleGen also how files become examples (layout, image_feature,
    label_feature, class_names)."""
    settings = struct_pb2.Struct()
    settings.update({PATTERN: pattern, ROLLING_SPANS: rolling_spans, **settings_for_images})
    config = example_gen_pb2.CustomConfig()
    config.custom_config.Pack(settings)
    return config


def _settings(exec_properties: dict[str, Any]) -> dict[str, Any]:
    config = proto_utils.json_to_proto(exec_properties[standard_component_specs.CUSTOM_CONFIG_KEY],
                                       example_gen_pb2.CustomConfig())
    settings = struct_pb2.Struct()
    config.custom_config.Unpack(settings)
    return json_format.MessageToDict(settings)


def _example(features: dict[str, Any]) -> tf.train.Example:
    feature = {}
    for name, value in features.items():
        if isinstance(value, int):
            feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
        else:
            feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[value if isinstance(value, bytes) else str(value).encode()]))
    return tf.train.Example(features=tf.train.Features(feature=feature))


def file_examples(path: str, settings: dict[str, Any], root: str) -> Iterator[tf.train.Example]:
    """The examples one input file under data.path `root` holds.

    folders: an image file `<...>/<class>/<name>.<extension>` is one example: its bytes (not decoded
    here; undecodable images are the data validation's to catch) and its folder's label.
    csv: each row is one example; the image column names an image file relative to the CSV file's
    directory, the label column holds a class; every other column is kept as a string feature
    (e.g. for slicing the gate, or a group key).
    Either way the example names its image file relative to `root` (input_files.SOURCE_FILE).
    Every file read stays inside `root`, and labels are plain numbers unless data.class_names
    names them (components.shared.input_files); a ValueError names the file and line otherwise.
    """
    class_names = settings.get('class_names', {})
    image_feature, label_feature = settings['image_feature'], settings['label_feature']
    outside = input_files.file_outside(root, path)
    if outside:
        raise ValueError(outside)
    if settings['layout'] == 'folders':
        if input_files.is_image(path, tuple(settings.get('extra_extensions') or ())):
            with fileio.open(path, 'rb') as f:
                image = f.read()
            folder = os.path.dirname(path)
            label = input_files.label(os.path.basename(folder), class_names, f'data.path: folder {folder}')
            yield _example({image_feature: image, label_feature: label, input_files.SOURCE_FILE: _relative(path, root)})
        return
    with fileio.open(path, 'rb') as f:
        rows = list(csv.DictReader(io.StringIO(input_files.csv_text(path, f.read()), newline='')))
    for number, row in enumerate(rows, start=2):
        where = f'data.path: {path} line {number}'
        reserved = {input_files.SOURCE_FILE, input_files.SPLIT_GROUP} & set(row)
        if reserved:
            raise ValueError(f'{where}: column {sorted(reserved)[0]!r} is a name the pipeline gives its own feature; '
                             'rename the column')
        # An empty cell is a missing feature: data validation reports it against the schema.
        features = {name: value for name, value in row.items() if value not in (None, '')}
        if image_feature in features:
            image_path, outside = input_files.image_path(root, path, number, features[image_feature])
            if outside:
                raise ValueError(outside)
            if not fileio.exists(image_path):
                raise FileNotFoundError(f'{where}: image {features[image_feature]!r} not found ({image_path})')
            with fileio.open(image_path, 'rb') as image:
                features[image_feature] = image.read()
            features[input_files.SOURCE_FILE] = f'{_relative(path, root)} line {number}: {_relative(image_path, root)}'
        if label_feature in features:
            features[label_feature] = input_files.label(features[label_feature], class_names, where)
        yield _example(features)


def _relative(path: str, root: str) -> str:
    return posixpath.relpath(path, root) if '://' in root else os.path.relpath(path, root)


def _hashed(example: tf.train.Example, settings: dict[str, Any]) -> tuple[tf.train.Example, Optional[int]]:
    """(example, its image's perceptual hash or None: no image, no hash wanted, or undecodable)."""
    from components.training import perceptual_hash

    if settings.get('max_distance') is None:
        return example, None
    values = example.features.feature[settings['image_feature']].bytes_list.value
    return example, (perceptual_hash.phash(values[0], int(settings['max_image_pixels'])) if values else None)


def _feature_text(example: tf.train.Example, name: str) -> Optional[str]:
    if name not in example.features.feature:
        return None
    feature = example.features.feature[name]
    values = list(feature.bytes_list.value) or list(feature.int64_list.value)
    return str(values[0] if len(values) == 1 else values) if values else None


def group_keys(rows: list, settings: dict[str, Any]) -> dict[str, str]:
    """{source file: the key of its group}. `rows`: (source file, perceptual hash or None, image
    bytes digest, group feature value or None) for every example. A group is linked by near-duplicate
    hashes (components.statistics.near_duplicates), the user's group feature and identical bytes,
    and its key is its first source file, so that it does not depend on the order of reading."""
    from components.statistics import near_duplicates

    rows = sorted(rows)
    names = [row[0] for row in rows]
    keys = [f'group:{row[3]}' if row[3] is not None else f'bytes:{row[2]}' for row in rows]
    # Without data.duplicates.max_distance every hash is None (_hashed), so no pixels link.
    labels = near_duplicates.component_labels([row[1] for row in rows], settings.get('max_distance') or 0, keys)
    first: dict[int, str] = {}
    for name, label in zip(names, labels):
        first.setdefault(int(label), name)
    return {name: first[int(label)] for name, label in zip(names, labels)}


def _with_group(example_and_hash, keys: dict[str, str]) -> tf.train.Example:
    example, _ = example_and_hash
    key = keys[_feature_text(example, input_files.SOURCE_FILE)]
    example.features.feature[input_files.SPLIT_GROUP].bytes_list.value.append(key.encode())
    return example


def _group_row(example_and_hash, settings: dict[str, Any]) -> tuple:
    import hashlib

    example, phash = example_and_hash
    images = example.features.feature[settings['image_feature']].bytes_list.value
    digest = hashlib.sha256(images[0] if images else b'').hexdigest()
    group = settings.get('group_feature')
    return (_feature_text(example, input_files.SOURCE_FILE), phash, digest,
            _feature_text(example, group) if group else None)


def _FilesToExamples(skipped: dict[str, int]):
    """The PTransform that reads the input files into examples, each with its SPLIT_GROUP feature
    (ExampleGen's output_config partitions on it); counts the files it skips by extension into
    `skipped` as it is built."""

    @beam.ptransform_fn
    @beam.typehints.with_input_types(beam.Pipeline)
    @beam.typehints.with_output_types(tf.train.Example)
    def _Read(pipeline: beam.Pipeline, exec_properties: dict[str, Any], split_pattern: str):
        settings = _settings(exec_properties)
        base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
        patterns = [os.path.join(base, p) for p in split_pattern.split(PATTERN_SEPARATOR)]
        files = sorted(f for pattern in patterns for f in fileio.glob(pattern))
        if not files:
            raise ValueError(f'no input files match {", ".join(patterns)}')
        if settings['layout'] == 'folders':
            skipped.update(input_files.skipped_extensions(files, tuple(settings.get('extra_extensions') or ())))
        hashed = (pipeline
                  | 'Files' >> beam.Create(files)
                  | 'Distribute' >> beam.Reshuffle()
                  | 'ToExamples' >> beam.FlatMap(file_examples, settings, base)
                  | 'Hash' >> beam.Map(_hashed, settings))
        keys = (hashed
                | 'GroupRows' >> beam.Map(_group_row, settings)
                | 'AllRows' >> beam.combiners.ToList()
                | 'GroupKeys' >> beam.Map(group_keys, settings))
        return hashed | 'WithGroup' >> beam.Map(_with_group, beam.pvalue.AsSingleton(keys))

    return _Read


class ImageExampleGenExecutor(_ResolvesSpans, base_example_gen_executor.BaseExampleGenExecutor):
    """Reads image folders or CSV files naming images (on Beam) and writes tf.Examples, keeping
    near-duplicate photos (and examples sharing data.group_feature) in one split."""

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        self._skipped: dict[str, int] = {}
        super().Do(input_dict, output_dict, exec_properties)
        examples = artifact_utils.get_single_instance(output_dict[standard_component_specs.EXAMPLES_KEY])
        examples.set_string_custom_property(data_checks.SKIPPED_FILES, json.dumps(self._skipped))
        if self._skipped:
            logging.warning('Skipped files by extension: %s', self._skipped)

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        return _FilesToExamples(self._skipped)


class ImageExampleGen(FileBasedExampleGen):
    """ExampleGen for image folders and CSV files (node id ImportExampleGen, like the TFRecord one,
    so the DAG and everything reading it do not depend on the source)."""

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(ImageExampleGenExecutor)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.with_id(node_ids.EXAMPLE_GEN)
