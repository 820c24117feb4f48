"""Stops a run before Transform and training when the data are bad.

ExampleValidator records anomalies against the schema (missing or empty features, new columns,
changed types, values outside a domain) but lets the pipeline go on. This step fails the run,
naming every problem, when ExampleValidator found any, and adds the checks TFDV does not make
reliably (each measured with TFDV 1.16):

* an empty split: TFDV skips validating data with no examples and reports no anomaly (it sets
  `data_missing`, which ExampleValidator ignores);
* undecodable images: TFDV's image statistics only sniff the format from the first bytes, and
  write nothing below 100 values or when fewer than 80% look like images, so the worse the data
  the less it reports. Here every image goes through Transform's own per-image function
  (components.training.images.prepare_one: the model's channels and size, EXIF orientation), on
  Beam, so whatever Transform would refuse stops here, named by its file (up to 3 per line);
* images over data.max_image_pixels, measured from the header (components.training.images.header_size) and
  not decoded: Transform would refuse them too, after the cost of its setup;
* labels outside the known set (data.labels): a schema int_domain holds a range, not a set;
* a `test` split too small for the release gate: with evaluation.confidence set, a floor passes
  only when the lower end of the metric's interval clears it, and even a perfect model's bound
  stays below a high floor on few examples (components.statistics.proportions.undecidable_split_line);
* an `eval` split too small for the decision threshold's target: a threshold that meets it only
  with every eval positive (or all but one) on the right side is one photo's score
  (proportions.fragile_threshold_line);
* near-duplicate images in the test split and in train or eval (components.statistics.
  near_duplicates): the gate would measure memory. data.duplicates.across_splits `warn` makes it a
  note instead.

What does not stop a run is recorded in `data_checks.json` beside the label counts
(components.shared.data_checks): near-duplicate groups and warnings.

So bad data never reaches training and the CLI exits 4. The same pass counts the examples of
each label in each split (the `label_counts` output, which the run report shows).
"""

import dataclasses
import functools
import json
import os
import tempfile
from typing import NamedTuple, Optional

import apache_beam as beam
from tfx.dsl.component.experimental.annotations import (BeamComponentParameter, InputArtifact, OutputArtifact,
                                                         Parameter)
from tfx.dsl.component.experimental.decorators import component
from tfx.dsl.io import fileio
from tfx.types import artifact_utils
from tfx.types.experimental.simple_artifacts import Statistics
from tfx.types.standard_artifacts import ExampleAnomalies, Examples, ExampleStatistics

from components.reporting.anomalies import list_anomalies
from components.shared import data_checks, input_files
from components.shared.artifact_files import LABEL_COUNTS_FILE
from components.statistics import near_duplicates
from components.statistics.proportions import DEFAULT_METHOD, fragile_threshold_line, undecidable_split_line

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
THRESHOLD_SPLIT = 'eval'  # the split the Trainer chooses a decision threshold on
# A problem line names at most this many of its files.
NAMED_FILES = 3


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


@functools.cache
def _prepare_and_hash(height: int, width: int, channels: int, with_hash: bool):
    """A tf.function: (encoded image, pixel limit) -> (its [width, height] by the header, its
    perceptual hash or 0, whether it was hashed: perceptual_hash.hash_if_hashable). Within the limit the image goes through Transform's per-image function
    (images.prepare_one), which raises InvalidArgument (or Unimplemented) where Transform would fail."""
    import tensorflow as tf

    from components.training import images, perceptual_hash

    def check(data, max_pixels):
        size = images.header_size(data)

        def decoded():
            prepared = images.prepare_one(data, height, width, channels, max_pixels)
            value, hashed = (perceptual_hash.hash_if_hashable(data, size, max_pixels) if with_hash
                             else (tf.constant(0, tf.int64), tf.constant(False)))
            with tf.control_dependencies([prepared]):
                return tf.identity(value), tf.identity(hashed)

        return size, *tf.cond(size[0] * size[1] <= max_pixels, decoded,
                              lambda: (tf.constant(0, tf.int64), tf.constant(False)))

    return tf.function(check, autograph=False,
                       input_signature=[tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int64)])


class ExampleFindings(NamedTuple):
    """What one example holds for the gate: problems, (kind, detail) each; the file it came from
    (ImageExampleGen's SOURCE_FILE feature; None for TFRecord input); its image's perceptual hash
    (None: not asked for, over the limit, or not decoded)."""

    problems: list
    name: Optional[str]
    phash: Optional[int]


def example_findings(serialized: bytes, image_feature: str, label_feature: str,
                     known_labels: Optional[frozenset], max_image_pixels: int, count_labels: bool = False,
                     shape: Optional[tuple[int, int, int]] = None, with_hash: bool = False) -> ExampleFindings:
    """The findings of one serialized tf.Example; with `count_labels` its problems also hold
    (LABEL, value) for each of its labels. `shape` (height, width, channels): the model's input,
    which the image is prepared for as Transform prepares it; None: decoded only
    (tf.io.decode_image). The hash is computed with `with_hash` and a shape."""
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
    found_hash = None
    for image in images:
        if not image:
            problems.append((EMPTY_IMAGE, image_feature))
            continue
        try:
            if shape is None:
                width, height = measure_and_decode(image, max_image_pixels)
            else:
                size, value, hashed = _prepare_and_hash(*shape, with_hash)(tf.constant(image),
                                                                           tf.constant(max_image_pixels, tf.int64))
                width, height = size.numpy().tolist()
                found_hash = int(value.numpy()) if bool(hashed.numpy()) else None
            if width * height > max_image_pixels:
                problems.append((OVERSIZE, f'{width}x{height}'))
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
            problems.append((UNDECODABLE, ''))
    labels = feature[label_feature].int64_list.value if label_feature in feature else ()
    if known_labels is not None:
        problems += [(UNKNOWN_LABEL, str(label)) for label in labels if label not in known_labels]
    if count_labels:
        problems += [(LABEL, str(label)) for label in labels]
    names = feature[input_files.SOURCE_FILE].bytes_list.value if input_files.SOURCE_FILE in feature else ()
    return ExampleFindings(problems, names[0].decode('utf-8', 'replace') if names else None, found_hash)


def example_problems(serialized: bytes, image_feature: str, label_feature: str,
                     known_labels: Optional[frozenset], max_image_pixels: int, count_labels: bool = False,
                     shape: Optional[tuple[int, int, int]] = None) -> list[tuple[str, str]]:
    """example_findings' problems alone."""
    return example_findings(serialized, image_feature, label_feature, known_labels, max_image_pixels,
                            count_labels, shape).problems


_TYPES = {'bytes_list': 'bytes', 'int64_list': 'int64', 'float_list': 'float'}


class _CountAndName(beam.CombineFn):
    """(count, the NAMED_FILES first names in sorted order) of a key's names (None: unnamed).
    Beam ships Count and Top as separate combiners; one pass keeps both together."""

    def create_accumulator(self):
        return 0, ()

    def add_input(self, accumulator, name):
        count, names = accumulator
        return count + 1, tuple(sorted(set(names + ((name,) if name else ())))[:NAMED_FILES])

    def merge_accumulators(self, accumulators):
        total, names = 0, set()
        for count, some in accumulators:
            total += count
            names.update(some)
        return total, tuple(sorted(names)[:NAMED_FILES])

    def extract_output(self, accumulator):
        return accumulator


def _hash_name(split: str, name: Optional[str], value: int) -> str:
    return name or f'a {split} example with pHash {value & (2 ** 64 - 1):016x}'


def count_example_problems(pipeline: beam.Pipeline, examples: Examples, image_feature: str, label_feature: str,
                           known_labels: Optional[list[int]], max_image_pixels: int,
                           shape: Optional[tuple[int, int, int]] = None, with_hash: bool = False) -> 'Findings':
    """Runs `pipeline` over every split. Findings.counts: {(split, kind, detail): occurrences},
    where kind is a problem (UNDECODABLE, OVERSIZE, UNKNOWN_LABEL, ...) or LABEL (detail: the label
    value); Findings.names: the same keys -> up to NAMED_FILES files; Findings.hashes: (split,
    name, perceptual hash) of each image hashed (with `with_hash`)."""
    known = frozenset(known_labels) if known_labels is not None else None
    with tempfile.TemporaryDirectory() as tmp:
        output = os.path.join(tmp, 'problems')
        hashes_output = os.path.join(tmp, 'hashes')
        with pipeline as p:
            counted, hashed = [], []
            for split in examples.splits:
                pattern = os.path.join(artifact_utils.get_split_uri([examples], split), '*')
                found = (p
                         | f'Read[{split}]' >> beam.io.ReadFromTFRecord(pattern)
                         | f'Check[{split}]' >> beam.Map(example_findings, image_feature, label_feature, known,
                                                         max_image_pixels, True, shape, with_hash))
                counted.append(found
                               | f'Problems[{split}]' >> beam.FlatMap(
                                   lambda f, s=split: [((s, *problem), None if problem[0] == LABEL else f.name)
                                                       for problem in f.problems])
                               | f'Count[{split}]' >> beam.CombinePerKey(_CountAndName()))
                hashed.append(found
                              | f'Hashed[{split}]' >> beam.FlatMap(
                                  lambda f, s=split: [(s, _hash_name(s, f.name, f.phash), f.phash)]
                                  if f.phash is not None else []))
            _ = (counted | 'Problems' >> beam.Flatten()
                 | beam.Map(lambda kv: json.dumps([*kv[0], kv[1][0], list(kv[1][1])]))
                 | 'WriteProblems' >> beam.io.WriteToText(output))
            _ = (hashed | 'Hashes' >> beam.Flatten()
                 | 'HashLines' >> beam.Map(json.dumps)
                 | 'WriteHashes' >> beam.io.WriteToText(hashes_output))
        rows = _read_lines(output)
        hashes = [tuple(row) for row in _read_lines(hashes_output)]
    return Findings({tuple(row[:3]): row[3] for row in rows}, {tuple(row[:3]): tuple(row[4]) for row in rows if row[4]},
                    sorted(hashes))


def _read_lines(prefix: str) -> list:
    lines = []
    for path in fileio.glob(prefix + '*'):
        with fileio.open(path, 'r') as f:
            lines += f.read().splitlines()
    return [json.loads(line) for line in lines]


@dataclasses.dataclass(frozen=True)
class Findings:
    """What the data gate's pass over the examples found (count_example_problems)."""

    counts: dict
    names: dict
    hashes: list


def counts_by_label(counts: dict[tuple[str, str, str], int], splits) -> dict[str, dict[str, int]]:
    """{split: {label: examples}} from count_example_problems' result, every split present."""
    by_split: dict[str, dict[str, int]] = {split: {} for split in splits}
    for (split, kind, detail), count in counts.items():
        if kind == LABEL:
            by_split.setdefault(split, {})[detail] = count
    return {split: dict(sorted(labels.items(), key=lambda kv: int(kv[0]))) for split, labels in by_split.items()}


def _examples(count: int) -> str:
    return f'{count} example{"s" if count > 1 else ""}'


def _named(names: dict, keys, count: int) -> str:
    """': a.jpg, b.jpg, c.jpg and 4 more' for the files `names` holds under `keys`; '' for none."""
    found = sorted({name for key in keys for name in names.get(key, ())})[:NAMED_FILES]
    if not found:
        return ''
    rest = f' and {count - len(found)} more' if count > len(found) else ''
    return ': ' + ', '.join(found) + rest


def _oversize(counts: dict[tuple[str, str, str], int], max_image_pixels: Optional[int], names: dict) -> list[str]:
    """One line per split with images over the limit: how many, the largest, and which files."""
    by_split: dict[str, list[tuple[int, str]]] = {}
    keys: dict[str, list] = {}
    for key, count in counts.items():
        split, kind, detail = key
        if kind == OVERSIZE:
            by_split.setdefault(split, []).extend([(_pixels(detail), detail)] * count)
            keys.setdefault(split, []).append(key)
    return [f'split {split}: {len(found)} image{"s" if len(found) > 1 else ""} over data.max_image_pixels '
            f'{max_image_pixels} (largest {max(found)[1]}){_named(names, keys[split], len(found))}'
            for split, found in sorted(by_split.items())]


def _pixels(size: str) -> int:
    width, height = size.split('x')
    return int(width) * int(height)


def describe(counts: dict[tuple[str, str, str], int],
             contents: Optional[dict[str, tuple[int, list[str]]]] = None,
             max_image_pixels: Optional[int] = None, names: Optional[dict] = None,
             channels: Optional[int] = None) -> list[str]:
    """e.g. 'split train: 3 undecodable images (tf.io.decode_image fails, as it would in Transform): ok/a.jpg,
    ok/b.bmp, ok/c.gif',
    'split eval: label outside the known set: 12 (2 examples)',
    'split train: 2 images over data.max_image_pixels 50000000 (largest 20000x20000)'; each line
    names up to NAMED_FILES of its files where `names` (Findings.names) knows them.
    `contents` (split_contents): a feature missing from every example of a split is said to be
    absent, and the features found are listed (a renamed feature, say). `channels`: the model's,
    which the images were decoded with."""
    names = names or {}
    lines = _oversize(counts, max_image_pixels, names)
    for key, count in sorted(counts.items()):
        split, kind, detail = key
        if kind in (LABEL, OVERSIZE):
            continue
        named = _named(names, [key], count)
        if kind == MISSING:
            examples, found = (contents or {}).get(split, (None, []))
            if count == examples and detail not in found:
                lines.append(f"split {split}, feature '{detail}': absent from all {_examples(count)}; "
                             f"features found: {', '.join(found) or 'none'}")
                continue
            lines.append(f"split {split}, feature '{detail}': missing or empty in {_examples(count)}{named}")
        elif kind == EMPTY_IMAGE:
            lines.append(f"split {split}, feature '{detail}': empty image bytes in {_examples(count)}{named}")
        elif kind == WRONG_TYPE:
            name, expected, found = detail.split('|')
            lines.append(f"split {split}, feature '{name}': expected {expected}, found {found} ({_examples(count)}){named}")
        elif kind == UNDECODABLE:
            how = f" as the model's {channels}-channel input" if channels else ''
            lines.append(f'split {split}: {count} {UNDECODABLE}{"s" if count > 1 else ""} '
                         f'(tf.io.decode_image fails{how}, as it would in Transform){named}')
        else:
            lines.append(f'split {split}: {kind}: {detail} ({count} example{"s" if count > 1 else ""}){named}')
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


def fragile_threshold(by_label: dict[str, dict[str, int]], settings: dict) -> list[str]:
    """The line when the decision threshold's target (settings['decision_target']: {metric, target})
    at settings['confidence'] could only be met with every positive of the eval split, or all but
    one, on the right side (proportions.fragile_threshold_line); binary tasks only, and nothing on
    the point rule."""
    target, confidence = settings.get('decision_target'), settings.get('confidence')
    positive = settings.get('positive_class')
    counts = by_label.get(THRESHOLD_SPLIT)
    if not target or confidence is None or positive is None or not counts:
        return []
    n = counts.get(str(positive), 0)
    line = fragile_threshold_line(THRESHOLD_SPLIT, n, target['metric'], target['target'], confidence,
                                  settings.get('interval') or DEFAULT_METHOD) if n else None
    return [line] if line else []


def cross_split_duplicates(findings: Findings, max_distance: int) -> tuple[dict, list[data_checks.CrossSplitDuplicates]]:
    """({split: (groups within it, images in them)}, groups shared between two splits)."""
    splits, names, hashes = zip(*findings.hashes) if findings.hashes else ((), (), ())
    groups = near_duplicates.split_groups(list(names), list(splits), list(hashes), max_distance)
    return groups.within, [data_checks.CrossSplitDuplicates(pair, count, example)
                           for pair, count, example in groups.across]


def leak_lines(across: list[data_checks.CrossSplitDuplicates]) -> list[str]:
    """One line per split pair that puts near-duplicates on both sides of the test split."""
    lines = []
    for shared in across:
        if GATED_SPLIT not in shared.splits:
            continue
        other = next(split for split in shared.splits if split != GATED_SPLIT)
        first, second = shared.example
        lines.append(f'split {GATED_SPLIT}: {shared.groups} near-duplicate group{"s" if shared.groups != 1 else ""} '
                     f'shared with {other} (e.g. {first} ~ {second}), so the gate would measure memory; keep copies '
                     'in one split (data.group_feature), remove them, or set data.duplicates.across_splits: warn')
    return lines


@component(use_beam=True)
def DataValidationGate(anomalies: InputArtifact[ExampleAnomalies], statistics: InputArtifact[ExampleStatistics],
                       examples: InputArtifact[Examples], checks: Parameter[str],
                       label_counts: OutputArtifact[Statistics],
                       beam_pipeline: BeamComponentParameter[beam.Pipeline] = None) -> None:
    """Fails when ExampleValidator found anomalies, a split is empty, an image or label is missing,
    empty or of the wrong type, an image does not go through Transform's decoding or has more than
    max_image_pixels pixels, a label is outside the known set, a split lacks a class the task
    needs, the `test` split is too small for a floor at the gate's confidence (undecidable_splits),
    the `eval` split too small for the decision threshold's target (fragile_threshold), or the test
    split shares near-duplicates with train or eval (leak_lines). `checks`: JSON
    {image_feature, label_feature, known_labels, positive_class (binary), classes (multiclass),
    max_image_pixels, input ({height, width, channels}), max_distance (None: no near-duplicate
    check), across_splits ('stop' or 'warn'), floors (evaluation.thresholds: {metric: floor}),
    class_floors (multiclass: {label: {metric: floor}}), decision_target ({metric, target} or None),
    confidence (None: the point rule), interval}.
    Writes {split: {label: examples}} to label_counts.json and what did not stop the run
    (data_checks.DataChecks) to data_checks.json in `label_counts` (a TFX Statistics artifact: the
    Kubeflow compiler accepts TFX's own artifact types only)."""
    settings = json.loads(checks)
    shape = settings['input']
    max_distance = settings.get('max_distance')
    findings = count_example_problems(beam_pipeline, examples, settings['image_feature'], settings['label_feature'],
                                      settings.get('known_labels'), settings['max_image_pixels'],
                                      (shape['height'], shape['width'], shape['channels']),
                                      with_hash=max_distance is not None)
    by_label = counts_by_label(findings.counts, examples.splits)
    contents = split_contents(statistics)
    within, across = cross_split_duplicates(findings, max_distance) if max_distance is not None else ({}, [])
    leaks = leak_lines(across)
    problems = (list_anomalies(anomalies) + empty_splits(contents)
                + describe(findings.counts, contents, settings['max_image_pixels'], findings.names, shape['channels'])
                + class_coverage(by_label, settings.get('positive_class'), settings.get('classes'))
                + undecidable_splits(by_label, settings) + fragile_threshold(by_label, settings)
                + (leaks if settings.get('across_splits', 'stop') == 'stop' else []))
    if problems:
        raise DataValidationError('data failed validation:\n  ' + '\n  '.join(problems))
    found = data_checks.DataChecks(duplicate_groups=within,
                                   across_splits=tuple(across), max_distance=max_distance,
                                   warnings=tuple(f'warning: {line}' for line in leaks))
    fileio.makedirs(label_counts.uri)
    with fileio.open(os.path.join(label_counts.uri, LABEL_COUNTS_FILE), 'w') as f:
        f.write(json.dumps(by_label, indent=1))
    with fileio.open(os.path.join(label_counts.uri, data_checks.DATA_CHECKS_FILE), 'w') as f:
        f.write(found.to_json())
