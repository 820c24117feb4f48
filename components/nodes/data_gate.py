"""Stops a run before Transform and training when the data are bad.

ExampleValidator records anomalies against the schema (missing or empty features, new columns,
changed types, values outside a domain) but lets the pipeline go on. This step fails the run,
naming every problem, when ExampleValidator found any, and adds three checks TFDV does not make
reliably (each measured with TFDV 1.16):

* an empty split: TFDV skips validating data with no examples and reports no anomaly (it sets
  `data_missing`, which ExampleValidator ignores);
* undecodable images: TFDV's image statistics only sniff the format from the first bytes, and
  write nothing below 100 values or when fewer than 80% look like images, so the worse the data
  the less it reports. Here every image is decoded with tf.io.decode_image, on Beam;
* images over data.max_image_pixels, measured from the header (components.training.images.header_size) and
  not decoded: Transform would refuse them too, after the cost of its setup;
* labels outside the known set (data.labels): a schema int_domain holds a range, not a set;
* a `test` split too small for the release gate: with evaluation.confidence set, a floor passes
  only when the lower end of the metric's interval clears it, and even a perfect model's bound
  stays below a high floor on few examples (components.statistics.proportions.undecidable_split_line).

So bad data never reaches training and the CLI exits 4. The same pass counts the examples of
each label in each split (the `label_counts` output, which the run report shows).
"""

import json
import os
import tempfile
from typing import Optional

import apache_beam as beam
from tfx.dsl.component.experimental.annotations import (BeamComponentParameter, InputArtifact, OutputArtifact,
                                                         Parameter)
from tfx.dsl.component.experimental.decorators import component
from tfx.dsl.io import fileio
from tfx.types import artifact_utils
from tfx.types.experimental.simple_artifacts import Statistics
from tfx.types.standard_artifacts import ExampleAnomalies, Examples, ExampleStatistics

from components.reporting.anomalies import list_anomalies
from components.shared.artifact_files import LABEL_COUNTS_FILE
from components.statistics.proportions import DEFAULT_METHOD, undecidable_split_line

# Written by ExampleValidator / StatisticsGen into each split's directory.
STATISTICS_FILE = 'FeatureStats.pb'
UNDECODABLE = 'undecodable image'
UNKNOWN_LABEL = 'label outside the known set'
OVERSIZE = 'image over the pixel limit'  # detail: "WIDTHxHEIGHT"
MISSING = 'missing'          # detail: the feature
EMPTY_IMAGE = 'empty image'  # detail: the feature
WRONG_TYPE = 'wrong type'    # detail: "feature|expected|found"
LABEL = 'label'  # not a problem: one per label value of an example, for label_counts
GATED_SPLIT = 'test'  # the split the release gate reads


class DataValidationError(RuntimeError):
    """The data failed validation; the message lists each problem, one per line."""



def split_contents(statistics: ExampleStatistics) -> dict[str, tuple[int, list[str]]]:
    """{split: (examples, names of the features StatisticsGen found)}."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    contents = {}
    for split in statistics.splits:
        path = os.path.join(artifact_utils.get_split_uri([statistics], split), STATISTICS_FILE)
        with fileio.open(path, 'rb') as f:
            stats = statistics_pb2.DatasetFeatureStatisticsList.FromString(f.read())
        names = sorted({f.path.step[-1] if f.path.step else f.name for d in stats.datasets for f in d.features})
        contents[split] = (sum(d.num_examples for d in stats.datasets), names)
    return contents


def empty_splits(contents: dict[str, tuple[int, list[str]]]) -> list[str]:
    """One line per split with no examples (TFDV does not report it)."""
    return [f'split {split}: no examples' for split, (examples, _) in contents.items() if not examples]


def example_problems(serialized: bytes, image_feature: str, label_feature: str,
                     known_labels: Optional[frozenset], max_image_pixels: int,
                     count_labels: bool = False) -> list[tuple[str, str]]:
    """(kind, detail) for each problem of one serialized tf.Example; with `count_labels`, also
    (LABEL, value) for each of its labels."""
    import tensorflow as tf

    from components.training.images import measure_and_decode

    feature = tf.train.Example.FromString(serialized).features.feature
    problems = []
    for name, expected in ((image_feature, 'bytes_list'), (label_feature, 'int64_list')):
        kind = feature[name].WhichOneof('kind') if name in feature else None
        values = getattr(feature[name], kind).value if kind else ()
        if not values:
            problems.append((MISSING, name))
        elif kind != expected:
            problems.append((WRONG_TYPE, f'{name}|{_TYPES[expected]}|{_TYPES[kind]}'))
    images = feature[image_feature].bytes_list.value if image_feature in feature else ()
    for image in images:
        if not image:
            problems.append((EMPTY_IMAGE, image_feature))
            continue
        try:
            width, height = measure_and_decode(image, max_image_pixels)
            if width * height > max_image_pixels:
                problems.append((OVERSIZE, f'{width}x{height}'))
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
            problems.append((UNDECODABLE, ''))
    labels = feature[label_feature].int64_list.value if label_feature in feature else ()
    if known_labels is not None:
        problems += [(UNKNOWN_LABEL, str(label)) for label in labels if label not in known_labels]
    if count_labels:
        problems += [(LABEL, str(label)) for label in labels]
    return problems


_TYPES = {'bytes_list': 'bytes', 'int64_list': 'int64', 'float_list': 'float'}


def count_example_problems(pipeline: beam.Pipeline, examples: Examples, image_feature: str, label_feature: str,
                           known_labels: Optional[list[int]], max_image_pixels: int) -> dict[tuple[str, str, str], int]:
    """Runs `pipeline` over every split: {(split, kind, detail): number of occurrences}, where kind
    is a problem (UNDECODABLE, OVERSIZE, UNKNOWN_LABEL, ...) or LABEL (detail: the label value)."""
    known = frozenset(known_labels) if known_labels is not None else None
    with tempfile.TemporaryDirectory() as tmp:
        output = os.path.join(tmp, 'problems')
        with pipeline as p:
            counted = []
            for split in examples.splits:
                pattern = os.path.join(artifact_utils.get_split_uri([examples], split), '*')
                counted.append(
                    p
                    | f'Read[{split}]' >> beam.io.ReadFromTFRecord(pattern)
                    | f'Check[{split}]' >> beam.FlatMap(
                        lambda record, s=split: [(s, *found) for found in example_problems(
                            record, image_feature, label_feature, known, max_image_pixels, count_labels=True)])
                    | f'Count[{split}]' >> beam.combiners.Count.PerElement())
            _ = (counted | beam.Flatten()
                 | beam.Map(lambda kv: json.dumps([*kv[0], kv[1]]))
                 | beam.io.WriteToText(output))
        lines = []
        for path in fileio.glob(output + '*'):
            with fileio.open(path, 'r') as f:
                lines += f.read().splitlines()
    return {tuple(row[:3]): row[3] for row in map(json.loads, lines)}


def counts_by_label(counts: dict[tuple[str, str, str], int], splits) -> dict[str, dict[str, int]]:
    """{split: {label: examples}} from count_example_problems' result, every split present."""
    by_split: dict[str, dict[str, int]] = {split: {} for split in splits}
    for (split, kind, detail), count in counts.items():
        if kind == LABEL:
            by_split.setdefault(split, {})[detail] = count
    return {split: dict(sorted(labels.items(), key=lambda kv: int(kv[0]))) for split, labels in by_split.items()}


def _examples(count: int) -> str:
    return f'{count} example{"s" if count > 1 else ""}'


def _oversize(counts: dict[tuple[str, str, str], int], max_image_pixels: Optional[int]) -> list[str]:
    """One line per split with images over the limit: how many, and the largest."""
    by_split: dict[str, list[tuple[int, str]]] = {}
    for (split, kind, detail), count in counts.items():
        if kind == OVERSIZE:
            by_split.setdefault(split, []).extend([(_pixels(detail), detail)] * count)
    return [f'split {split}: {len(found)} image{"s" if len(found) > 1 else ""} over data.max_image_pixels '
            f'{max_image_pixels} (largest {max(found)[1]})' for split, found in sorted(by_split.items())]


def _pixels(size: str) -> int:
    width, height = size.split('x')
    return int(width) * int(height)


def describe(counts: dict[tuple[str, str, str], int],
             contents: Optional[dict[str, tuple[int, list[str]]]] = None,
             max_image_pixels: Optional[int] = None) -> list[str]:
    """e.g. 'split train: 3 undecodable images', 'split eval: label outside the known set: 12 (2 examples)',
    'split train: 2 images over data.max_image_pixels 50000000 (largest 20000x20000)'.
    `contents` (split_contents): a feature missing from every example of a split is said to be
    absent, and the features found are listed (a renamed feature, say)."""
    lines = _oversize(counts, max_image_pixels)
    for (split, kind, detail), count in sorted(counts.items()):
        if kind in (LABEL, OVERSIZE):
            continue
        if kind == MISSING:
            examples, found = (contents or {}).get(split, (None, []))
            if count == examples and detail not in found:
                lines.append(f"split {split}, feature '{detail}': absent from all {_examples(count)}; "
                             f"features found: {', '.join(found) or 'none'}")
                continue
            lines.append(f"split {split}, feature '{detail}': missing or empty in {_examples(count)}")
        elif kind == EMPTY_IMAGE:
            lines.append(f"split {split}, feature '{detail}': empty image bytes in {_examples(count)}")
        elif kind == WRONG_TYPE:
            name, expected, found = detail.split('|')
            lines.append(f"split {split}, feature '{name}': expected {expected}, found {found} ({_examples(count)})")
        elif kind == UNDECODABLE:
            lines.append(f'split {split}: {count} {UNDECODABLE}{"s" if count > 1 else ""} (tf.io.decode_image fails)')
        else:
            lines.append(f'split {split}: {kind}: {detail} ({count} example{"s" if count > 1 else ""})')
    return lines


def class_coverage(by_label: dict[str, dict[str, int]], positive_class: Optional[int],
                   classes: Optional[list[int]]) -> list[str]:
    """Splits a task cannot be trained or gated on: binary, a split with no positive or no negative
    example (recall or precision is undefined there); multiclass, a class of task.classes absent
    from train or test."""
    lines = []
    for split, counts in by_label.items():
        present = {int(label) for label, count in counts.items() if count}
        if not present:
            continue  # an empty split is named by empty_splits
        if positive_class is not None:
            if positive_class not in present:
                lines.append(f'split {split}: no example of the positive class {positive_class} '
                             f'(labels found: {sorted(present)})')
            if not present - {positive_class}:
                lines.append(f'split {split}: no negative example (only label {positive_class})')
        elif classes and split in ('train', 'test'):
            absent = [c for c in classes if c not in present]
            if absent:
                lines.append(f'split {split}: no example of class{"es" if len(absent) > 1 else ""} '
                             f'{", ".join(map(str, absent))} of task.classes')
    return lines


def _floor_checks(counts: dict[str, int], settings: dict) -> list[tuple[int, float, str, str]]:
    """(n, floor, metric, unit) for each floor of the gate whose interval counts n of the split."""
    floors = settings.get('floors') or {}
    checks = []
    positive_class = settings.get('positive_class')
    if positive_class is not None:
        # A perfect model predicts exactly the positives, so precision's best bound is on them too.
        positives = counts.get(str(positive_class), 0)
        checks += [(positives, floors[m], m, 'positives') for m in ('recall', 'precision') if m in floors]
    for label, class_floors in (settings.get('class_floors') or {}).items():
        examples = counts.get(str(label), 0)
        checks += [(examples, class_floors[m], f'{m}[class {label}]', f'examples of class {label}')
                   for m in ('recall', 'precision') if m in class_floors]
    if 'accuracy' in floors:
        checks.append((sum(counts.values()), floors['accuracy'], 'accuracy', 'examples'))
    return checks


def undecidable_splits(by_label: dict[str, dict[str, int]], settings: dict) -> list[str]:
    """One line per floor of the release gate that no model can pass on the `test` split at
    settings['confidence'] (settings['interval'] the method), because even all of its examples
    right gives a lower bound below the floor. `by_label`: counts_by_label's result; settings: the
    `checks` of DataValidationGate.

    What the bound counts: binary, the positives for the recall and precision floors; multiclass,
    the examples of the class for its class_floors; the split's examples for the accuracy floor.
    No check for auc_pr (no interval is used for it), macro floors (the bootstrap bounds of a
    perfect model are 1) or floors within slices (the data gate does not know them). Nothing with
    confidence None (the point rule), and nothing for a count of 0 (empty_splits and
    class_coverage name those)."""
    confidence = settings.get('confidence')
    counts = by_label.get(GATED_SPLIT)
    if confidence is None or not counts:
        return []
    method = settings.get('interval') or DEFAULT_METHOD
    lines = []
    for n, floor, metric, unit in _floor_checks(counts, settings):
        line = undecidable_split_line(GATED_SPLIT, n, floor, metric, confidence, method, unit) if n else None
        if line:
            lines.append(line)
    return lines


@component(use_beam=True)
def DataValidationGate(anomalies: InputArtifact[ExampleAnomalies], statistics: InputArtifact[ExampleStatistics],
                       examples: InputArtifact[Examples], checks: Parameter[str],
                       label_counts: OutputArtifact[Statistics],
                       beam_pipeline: BeamComponentParameter[beam.Pipeline] = None) -> None:
    """Fails when ExampleValidator found anomalies, a split is empty, an image or label is missing,
    empty or of the wrong type, an image does not decode or has more than max_image_pixels pixels,
    a label is outside the known set, a split lacks a class the task needs, or the `test` split is
    too small for a floor at the gate's confidence (undecidable_splits). `checks`: JSON
    {image_feature, label_feature, known_labels, positive_class (binary), classes (multiclass),
    max_image_pixels, floors (evaluation.thresholds: {metric: floor}), class_floors (multiclass:
    {label: {metric: floor}}), confidence (None: the point rule), interval}.
    Writes {split: {label: examples}} to label_counts.json in `label_counts` (a TFX Statistics
    artifact: the Kubeflow compiler accepts TFX's own artifact types only)."""
    settings = json.loads(checks)
    counts = count_example_problems(beam_pipeline, examples, settings['image_feature'], settings['label_feature'],
                                    settings.get('known_labels'), settings['max_image_pixels'])
    by_label = counts_by_label(counts, examples.splits)
    contents = split_contents(statistics)
    problems = (list_anomalies(anomalies) + empty_splits(contents) + describe(counts, contents, settings['max_image_pixels'])
                + class_coverage(by_label, settings.get('positive_class'), settings.get('classes'))
                + undecidable_splits(by_label, settings))
    if problems:
        raise DataValidationError('data failed validation:\n  ' + '\n  '.join(problems))
    fileio.makedirs(label_counts.uri)
    with fileio.open(os.path.join(label_counts.uri, LABEL_COUNTS_FILE), 'w') as f:
        f.write(json.dumps(by_label, indent=1))
