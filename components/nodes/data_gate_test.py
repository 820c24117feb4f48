import os

import pandas as pd
import pytest
import tensorflow_data_validation as tfdv
from tfx.types.standard_artifacts import ExampleAnomalies

from components.nodes import data_gate
from components.reporting.anomalies import ANOMALIES_FILE, list_anomalies
from components.training.images_test import huge_header_png

LIMIT = 50_000_000


def _anomalies_artifact(tmp_path, anomalies_by_split) -> ExampleAnomalies:
    artifact = ExampleAnomalies()
    artifact.uri = str(tmp_path)
    artifact.splits = list(anomalies_by_split)
    for split, anomalies in anomalies_by_split.items():
        split_dir = os.path.join(tmp_path, f'Split-{split}')
        os.makedirs(split_dir)
        with open(os.path.join(split_dir, ANOMALIES_FILE), 'wb') as f:
            f.write(anomalies.SerializeToString())
    return artifact


def _validate(frame, schema):
    return tfdv.validate_statistics(tfdv.generate_statistics_from_dataframe(frame), schema)


def test_lists_each_anomaly_tfdv_found_by_split_and_feature(tmp_path):
    good = pd.DataFrame({'label': [5, 6, 7, 9], 'source': ['a', 'b', 'a', 'b']})
    schema = tfdv.infer_schema(tfdv.generate_statistics_from_dataframe(good))
    clean = _validate(good, schema)
    dropped_column = _validate(pd.DataFrame({'label': [5, 6]}), schema)
    artifact = _anomalies_artifact(tmp_path, {'train': clean, 'eval': dropped_column})

    problems = list_anomalies(artifact)

    assert len(problems) == 1
    assert problems[0].startswith("split eval, feature 'source': Column dropped (")


def _tfrecord_statistics(tmp_path, rows):
    import tensorflow as tf

    def feature(value):
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode() for v in value]))
        return tf.train.Feature(int64_list=tf.train.Int64List(value=value))

    tmp_path.mkdir()
    path = str(tmp_path / 'data.tfrecord')
    with tf.io.TFRecordWriter(path) as writer:
        for row in rows:
            writer.write(tf.train.Example(features=tf.train.Features(
                feature={k: feature(v) for k, v in row.items()})).SerializeToString())
    return tfdv.generate_statistics_from_tfrecord(path)


_GOOD = [{'label': [5], 'camera': ['a']}, {'label': [6], 'camera': ['b']}, {'label': [7], 'camera': ['a']}]


@pytest.mark.parametrize('kind, rows, feature, named', [
    ('schema drift: a new feature', [{**r, 'lens': ['x']} for r in _GOOD], 'lens', 'New column'),
    ('schema drift: a changed type', [{**r, 'camera': [1]} for r in _GOOD], 'camera', 'Unexpected data type'),
    ('a required feature missing everywhere', [{'label': r['label']} for r in _GOOD], 'camera', 'Column dropped'),
    ('a required feature missing in some examples', _GOOD[:2] + [{'label': [7]}], 'camera', 'Column dropped'),
    ('a required feature present but empty', _GOOD[:2] + [{'label': [7], 'camera': []}], 'camera',
     'Feature shape dropped'),
])
def test_each_kind_of_schema_anomaly_is_reported_by_name(tmp_path, kind, rows, feature, named):
    schema = tfdv.infer_schema(_tfrecord_statistics(tmp_path / 'good', _GOOD))  # as SchemaGen does
    anomalies = tfdv.validate_statistics(_tfrecord_statistics(tmp_path / 'bad', rows), schema)

    problems = list_anomalies(_anomalies_artifact(tmp_path / 'anomalies', {'train': anomalies}))

    assert any(p.startswith(f"split train, feature '{feature}': ") and f'{named} (' in p for p in problems), (kind, problems)


def test_clean_data_lists_nothing(tmp_path):
    good = pd.DataFrame({'label': [5, 6, 7, 9]})
    schema = tfdv.infer_schema(tfdv.generate_statistics_from_dataframe(good))
    assert list_anomalies(_anomalies_artifact(tmp_path, {'train': _validate(good, schema)})) == []


def _example(image: bytes, label: int) -> bytes:
    import tensorflow as tf

    return tf.train.Example(features=tf.train.Features(feature={
        'image': tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
        'label': tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))})).SerializeToString()


def _png() -> bytes:
    import numpy as np

    from components.training import digits

    return digits.encode_png(np.zeros((8, 8), np.uint8))


def test_each_example_is_checked_for_an_image_that_decodes_and_a_known_label():
    known = frozenset({5, 6, 7, 8, 9})
    assert data_gate.example_problems(_example(_png(), 9), 'image', 'label', known, LIMIT) == []
    assert data_gate.example_problems(_example(b'not an image', 9), 'image', 'label', known, LIMIT) == [
        (data_gate.UNDECODABLE, '')]
    # A PNG signature followed by garbage: TFDV's image statistics count this as a PNG.
    truncated = _png()[:8] + b'garbage'
    assert data_gate.example_problems(_example(truncated, 12), 'image', 'label', known, LIMIT) == [
        (data_gate.UNDECODABLE, ''), (data_gate.UNKNOWN_LABEL, '12')]
    assert data_gate.example_problems(_example(_png(), 12), 'image', 'label', None, LIMIT) == []


def test_an_image_over_the_limit_is_measured_from_its_header_and_not_decoded():
    """A real 64x64 photo against a limit of 4095 pixels, and a file whose header announces far
    more pixels than its data hold (decoded, it would count as undecodable)."""
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buffer, format='JPEG')
    known = frozenset({9})
    assert data_gate.example_problems(_example(buffer.getvalue(), 9), 'image', 'label', known, 64 * 64) == []
    assert data_gate.example_problems(_example(buffer.getvalue(), 9), 'image', 'label', known, 64 * 64 - 1) == [
        (data_gate.OVERSIZE, '64x64')]
    assert data_gate.example_problems(_example(huge_header_png(100000, 100000), 9), 'image', 'label', known,
                                      LIMIT) == [(data_gate.OVERSIZE, '100000x100000')]


@pytest.mark.parametrize('progressive', [False, True])
def test_a_jpeg_cut_short_anywhere_is_undecodable(progressive):
    """TensorFlow's decoder does not recover truncated JPEGs (baseline or progressive), so a cut
    file is caught as undecodable, whichever byte it ends at; a whole one, or one with data a
    camera appended after its end, passes."""
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 48, 3), np.uint8)).save(
        buffer, format='JPEG', progressive=progressive)
    whole = buffer.getvalue()
    known = frozenset({9})
    for end in (len(whole) // 2, len(whole) * 9 // 10, len(whole) - 2):
        assert data_gate.example_problems(_example(whole[:end], 9), 'image', 'label', known, LIMIT) == [
            (data_gate.UNDECODABLE, '')], end
    assert data_gate.example_problems(_example(whole, 9), 'image', 'label', known, LIMIT) == []
    assert data_gate.example_problems(_example(whole + b'trailer', 9), 'image', 'label', known, LIMIT) == []


def _feature_example(**features) -> bytes:
    import tensorflow as tf

    def feature(value):
        if isinstance(value, bytes):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
        if isinstance(value, float):
            return tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    return tf.train.Example(features=tf.train.Features(
        feature={k: feature(v) for k, v in features.items()})).SerializeToString()


@pytest.mark.parametrize('features, expected', [
    ({'label': 9}, [(data_gate.MISSING, 'image')]),
    ({'image': 'PNG'}, [(data_gate.MISSING, 'label')]),
    ({'image': 'PNG', 'label': b'9'}, [(data_gate.WRONG_TYPE, 'label|int64|bytes')]),
    ({'image': 'PNG', 'label': 9.0}, [(data_gate.WRONG_TYPE, 'label|int64|float')]),
    ({'image': b'', 'label': 9}, [(data_gate.EMPTY_IMAGE, 'image')]),
    ({'image': 3, 'label': 9}, [(data_gate.WRONG_TYPE, 'image|bytes|int64')]),
    ({'image': 'PNG', 'label': -1}, [(data_gate.UNKNOWN_LABEL, '-1')]),
])
def test_each_example_is_checked_for_present_features_of_the_right_type(features, expected):
    features = {k: _png() if v == 'PNG' else v for k, v in features.items()}
    assert data_gate.example_problems(_feature_example(**features), 'image', 'label',
                                      frozenset({5, 6, 7, 8, 9}), LIMIT) == expected


def test_problem_lines_name_split_feature_expectation_and_count():
    counts = {('train', data_gate.MISSING, 'image'): 12, ('eval', data_gate.WRONG_TYPE, 'label|int64|bytes'): 40,
              ('test', data_gate.EMPTY_IMAGE, 'image'): 1}
    assert data_gate.describe(counts) == [
        "split eval, feature 'label': expected int64, found bytes (40 examples)",
        "split test, feature 'image': empty image bytes in 1 example",
        "split train, feature 'image': missing or empty in 12 examples"]


def test_a_split_without_the_classes_the_task_needs_is_named():
    by_label = {'train': {'5': 3, '9': 2}, 'eval': {'5': 4}, 'test': {'9': 3}}
    assert data_gate.class_coverage(by_label, 9, None) == [
        'split eval: no example of the positive class 9 (labels found: [5])',
        'split test: no negative example (only label 9)']
    assert data_gate.class_coverage(by_label, None, [5, 7, 9]) == [
        'split train: no example of class 7 of task.classes', 'split test: no example of classes 5, 7 of task.classes']
    assert data_gate.class_coverage({'train': {'5': 1, '9': 1}, 'test': {}}, 9, None) == []


_BINARY = {'positive_class': 9, 'floors': {'recall': 0.85, 'precision': 0.85, 'auc_pr': 0.99, 'accuracy': 0.99},
           'confidence': 0.95, 'interval': 'clopper_pearson'}


def test_a_test_split_too_small_for_a_binary_floor_is_named_with_its_count_bound_and_floor():
    """Recall and precision count the 21 positives (a perfect model's precision is 21/21); accuracy
    the 61 examples; auc_pr has no interval. Only the test split is gated."""
    by_label = {'train': {'5': 2, '9': 1}, 'test': {'5': 40, '9': 21}}
    assert data_gate.undecidable_splits(by_label, _BINARY) == [
        'split test: 21 positives; even recall 21/21 has a 95% lower bound of 0.839 < floor 0.85; '
        'needs at least 23 positives (more examples, a larger test share, or a lower floor)',
        'split test: 21 positives; even precision 21/21 has a 95% lower bound of 0.839 < floor 0.85; '
        'needs at least 23 positives (more examples, a larger test share, or a lower floor)',
        'split test: 61 examples; even accuracy 61/61 has a 95% lower bound of 0.941 < floor 0.99; '
        'needs at least 368 examples (more examples, a larger test share, or a lower floor)']


def test_a_test_split_that_can_decide_or_the_point_rule_names_nothing():
    enough = {'train': {'5': 1, '9': 1}, 'test': {'5': 400, '9': 30}}
    assert data_gate.undecidable_splits(enough, {**_BINARY, 'floors': {'recall': 0.85, 'accuracy': 0.99}}) == []
    few = {'test': {'5': 40, '9': 21}}
    assert data_gate.undecidable_splits(few, {**_BINARY, 'confidence': None}) == []
    # No positive at all is class_coverage's line, an empty split empty_splits'.
    assert data_gate.undecidable_splits({'test': {'5': 40}}, {**_BINARY, 'floors': {'recall': 0.85}}) == []
    assert data_gate.undecidable_splits({'test': {}}, _BINARY) == []


def test_a_multiclass_class_too_small_for_its_floors_is_named_and_macro_floors_are_not_checked():
    """Per-class floors count the class's examples; accuracy the split's; macro floors none."""
    settings = {'classes': [5, 7, 9], 'floors': {'recall': 0.99, 'precision': 0.99, 'accuracy': 0.99},
                'class_floors': {'7': {'recall': 0.9, 'precision': 0.8, 'auc_pr': 0.99}, '9': {'recall': 0.5}},
                'confidence': 0.9, 'interval': 'wilson'}
    by_label = {'test': {'5': 40, '7': 20, '9': 10}}
    assert data_gate.undecidable_splits(by_label, settings) == [
        'split test: 20 examples of class 7; even recall[class 7] 20/20 has a 90% lower bound of 0.881 < floor 0.9; '
        'needs at least 25 examples of class 7 (more examples, a larger test share, or a lower floor)',
        'split test: 70 examples; even accuracy 70/70 has a 90% lower bound of 0.963 < floor 0.99; '
        'needs at least 268 examples (more examples, a larger test share, or a lower floor)']
    assert data_gate.undecidable_splits(by_label, {**settings, 'floors': {'accuracy': 0.9}}) == [
        data_gate.undecidable_splits(by_label, settings)[0]]


def test_problems_are_counted_on_beam_over_every_split_and_named(tmp_path):
    import apache_beam as beam
    import tensorflow as tf
    from tfx.types.standard_artifacts import Examples

    examples = Examples()
    examples.uri = str(tmp_path / 'examples')
    examples.splits = ['train', 'eval']
    rows = {'train': [_example(_png(), 5), _example(b'\x00', 6), _example(b'\x01', 7),
                      _example(huge_header_png(20000, 20000), 5), _example(huge_header_png(9000, 8000), 6),
                      _example(huge_header_png(8000, 6000), 9)],  # 48 million pixels: within the limit
            'eval': [_example(_png(), 12), _example(_png(), 12), _example(_png(), 9),
                     _example(huge_header_png(7072, 7071), 9)]}
    for split, records in rows.items():
        os.makedirs(tmp_path / 'examples' / f'Split-{split}')
        with tf.io.TFRecordWriter(str(tmp_path / 'examples' / f'Split-{split}' / 'data.gz'),
                                  options='GZIP') as writer:
            for record in records:
                writer.write(record)
    counts = data_gate.count_example_problems(beam.Pipeline(), examples, 'image', 'label', [5, 6, 7, 8, 9], LIMIT).counts
    problems = {k: v for k, v in counts.items() if k[1] != data_gate.LABEL}
    # The 48-megapixel file decodes no better than the others with a huge header: it counts as
    # undecodable, the ones over the limit do not (they are never decoded).
    assert problems == {('train', data_gate.UNDECODABLE, ''): 3, ('eval', data_gate.UNKNOWN_LABEL, '12'): 2,
                        ('train', data_gate.OVERSIZE, '20000x20000'): 1, ('train', data_gate.OVERSIZE, '9000x8000'): 1,
                        ('eval', data_gate.OVERSIZE, '7072x7071'): 1}
    # The same pass counts the examples of each label, for the run report.
    assert data_gate.counts_by_label(counts, ['train', 'eval', 'test']) == {
        'train': {'5': 2, '6': 2, '7': 1, '9': 1}, 'eval': {'9': 2, '12': 2}, 'test': {}}
    assert data_gate.describe(counts, max_image_pixels=LIMIT) == [
        'split eval: 1 image over data.max_image_pixels 50000000 (largest 7072x7071)',
        'split train: 2 images over data.max_image_pixels 50000000 (largest 20000x20000)',
        'split eval: label outside the known set: 12 (2 examples)',
        'split train: 3 undecodable images (tf.io.decode_image fails, as it would in Transform)']


def test_an_empty_split_is_named(tmp_path):
    from tensorflow_metadata.proto.v0 import statistics_pb2
    from tfx.types.standard_artifacts import ExampleStatistics

    statistics = ExampleStatistics()
    statistics.uri = str(tmp_path)
    statistics.splits = ['train', 'test']
    for split, count in (('train', 40), ('test', 0)):
        stats = statistics_pb2.DatasetFeatureStatisticsList()
        if count:
            dataset = stats.datasets.add(num_examples=count)
            dataset.features.add().path.step.append('image')
            dataset.features.add().path.step.append('class')
        os.makedirs(tmp_path / f'Split-{split}')
        (tmp_path / f'Split-{split}' / data_gate.STATISTICS_FILE).write_bytes(stats.SerializeToString())
    contents = data_gate.split_contents(statistics)
    assert contents == {'train': (40, ['class', 'image']), 'test': (0, [])}
    assert data_gate.empty_splits(contents) == ['split test: no examples']
    # A label feature absent from every example: named as absent, with the features found instead.
    assert data_gate.describe({('train', data_gate.MISSING, 'label'): 40}, contents) == [
        "split train, feature 'label': absent from all 40 examples; features found: class, image"]
    assert data_gate.describe({('train', data_gate.MISSING, 'label'): 39}, contents) == [
        "split train, feature 'label': missing or empty in 39 examples"]


def _written(tmp_path, rows: dict):
    """An Examples artifact with `rows` ({split: [serialized tf.Example]}) written as Transform reads them."""
    import tensorflow as tf
    from tfx.types.standard_artifacts import Examples

    examples = Examples()
    examples.uri = str(tmp_path / 'examples')
    examples.splits = list(rows)
    for split, records in rows.items():
        os.makedirs(tmp_path / 'examples' / f'Split-{split}')
        with tf.io.TFRecordWriter(str(tmp_path / 'examples' / f'Split-{split}' / 'data.gz'), options='GZIP') as writer:
            for record in records:
                writer.write(record)
    return examples


def _photo(seed: int, fmt: str = 'JPEG', mode: str = 'RGB', size=(60, 45), **save) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1] // 5, size[0] // 5, 3), np.uint8)
    image = Image.fromarray(pixels).resize(size, Image.BILINEAR).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


def _named_example(image: bytes, label: int, name: str) -> bytes:
    import tensorflow as tf

    from components.shared import input_files

    return tf.train.Example(features=tf.train.Features(feature={
        'image': tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
        'label': tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        input_files.SOURCE_FILE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[name.encode()]))})).SerializeToString()


@pytest.mark.parametrize('channels', [1, 3])
def test_formats_are_decided_as_transform_decodes_them_for_the_models_channels(channels):
    """TensorFlow decodes a CMYK JPEG, a BMP and a GIF as 3 channels but not as 1: the gate decodes
    each as Transform will for the model's input, whatever the file is named."""
    known = frozenset({0, 1})
    hostile = [_photo(1, 'JPEG', 'CMYK'), _photo(2, 'BMP'), _photo(3, 'GIF', 'P')]
    expected = [(data_gate.UNDECODABLE, '')] if channels == 1 else []
    for image in hostile:
        assert data_gate.example_problems(_example(image, 1), 'image', 'label', known, LIMIT,
                                          shape=(32, 32, channels)) == expected
    assert data_gate.example_problems(_example(_photo(4), 1), 'image', 'label', known, LIMIT, shape=(32, 32, channels)) == []


def test_problem_lines_name_up_to_three_files_and_the_count(tmp_path):
    import apache_beam as beam

    bad = [_named_example(_photo(i, 'BMP'), 0, f'ok/photo{i}.jpg') for i in range(5)]
    examples = _written(tmp_path, {'train': bad + [_named_example(_photo(9), 0, 'ok/fine.jpg')], 'test': bad[:1]})
    findings = data_gate.count_example_problems(beam.Pipeline(), examples, 'image', 'label', [0, 1], LIMIT,
                                                shape=(32, 32, 1))
    lines = data_gate.describe(findings.counts, max_image_pixels=LIMIT, names=findings.names, channels=1)
    assert lines == [
        "split test: 1 undecodable image (tf.io.decode_image fails as the model's 1-channel input, as it would in "
        "Transform): ok/photo0.jpg",
        "split train: 5 undecodable images (tf.io.decode_image fails as the model's 1-channel input, as it would in "
        "Transform): ok/photo0.jpg, ok/photo1.jpg, ok/photo2.jpg and 2 more"]


def test_near_duplicates_across_the_test_split_are_named_with_a_pair(tmp_path):
    """A photo re-saved at another quality, resized by 10% and stripped of its metadata lands
    within the hash distance of its original; different photos do not."""
    import io

    import apache_beam as beam
    from PIL import Image

    original = _photo(0, size=(120, 90), quality=95, exif=_camera_exif())
    image = Image.open(io.BytesIO(original))
    copies = []
    for save in ({'quality': 60}, {'quality': 90, 'resize': (108, 81)}, {'quality': 95}):
        buffer = io.BytesIO()
        (image.resize(save.pop('resize'), Image.LANCZOS) if 'resize' in save else image).save(buffer, 'JPEG', **save)
        copies.append(buffer.getvalue())
    rows = {'train': [_named_example(original, 0, 'ok/a.jpg'), _named_example(_photo(5), 1, 'defect/b.jpg')],
            'eval': [_named_example(copies[0], 0, 'ok/a-q60.jpg')],
            'test': [_named_example(copies[1], 0, 'ok/a-small.jpg'), _named_example(copies[2], 0, 'ok/a-stripped.jpg'),
                     _named_example(_photo(6), 1, 'defect/c.jpg')]}
    findings = data_gate.count_example_problems(beam.Pipeline(), _written(tmp_path, rows), 'image', 'label', [0, 1],
                                                LIMIT, shape=(32, 32, 3), with_hash=True)
    assert len(findings.hashes) == 6
    within, across = data_gate.cross_split_duplicates(findings, max_distance=6)
    assert within == {}
    assert [(a.splits, a.groups, a.example) for a in across] == [
        (('eval', 'test'), 1, ('ok/a-q60.jpg', 'ok/a-small.jpg')), (('eval', 'train'), 1, ('ok/a-q60.jpg', 'ok/a.jpg')),
        (('test', 'train'), 1, ('ok/a-small.jpg', 'ok/a.jpg'))]
    assert data_gate.leak_lines(across) == [
        'split test: 1 near-duplicate group shared with eval (e.g. ok/a-q60.jpg ~ ok/a-small.jpg), so the gate would '
        'measure memory; keep copies in one split (data.group_feature), remove them, or set '
        'data.duplicates.across_splits: warn',
        'split test: 1 near-duplicate group shared with train (e.g. ok/a-small.jpg ~ ok/a.jpg), so the gate would '
        'measure memory; keep copies in one split (data.group_feature), remove them, or set '
        'data.duplicates.across_splits: warn']


def test_a_threshold_target_the_eval_split_can_only_meet_with_every_positive_stops_the_run():
    """46 eval positives and recall >= 0.9 at 95%: 46 of 46 has a lower bound of 0.923, 45 of 46
    of 0.885, so the threshold would be the lowest positive's score; 0.8 tolerates 3 misses."""
    settings = {'positive_class': 1, 'confidence': 0.95, 'interval': None,
                'decision_target': {'metric': 'recall', 'target': 0.9}}
    by_label = {'eval': {'0': 200, '1': 46}}
    [line] = data_gate.fragile_threshold(by_label, settings)
    assert line == ('split eval: 46 positives; a decision threshold for recall >= 0.9 at 95% confidence tolerates 0 '
                    'misses there, so it would rest on the score of a single photo; about 85 eval positives would '
                    'tolerate 3 (a larger eval share, data.splits.eval, or a lower evaluation.decision_threshold target)')
    assert data_gate.fragile_threshold(by_label, {**settings, 'decision_target': {'metric': 'recall', 'target': 0.8}}) == []
    assert data_gate.fragile_threshold(by_label, {**settings, 'confidence': None}) == []
    assert data_gate.fragile_threshold(by_label, {**settings, 'decision_target': None}) == []


def _camera_exif() -> bytes:
    from PIL import Image

    exif = Image.Exif()
    exif[0x010F] = 'PhoneMaker'  # Make: metadata the stripped copy loses
    return exif.tobytes()


def test_images_under_32_pixels_a_side_are_not_hashed():
    """Shrunk to pHash's 32x32 grid, a few pixels become low frequencies that unrelated images
    share: the 8x8 digits hash alike. They are checked, not hashed."""
    known = frozenset({0, 1, 5, 9})
    small = data_gate.example_findings(_example(_png(), 9), 'image', 'label', known, LIMIT, shape=(8, 8, 1),
                                       with_hash=True)
    assert small.problems == [] and small.phash is None
    large = data_gate.example_findings(_example(_photo(7, size=(40, 32)), 1), 'image', 'label', known, LIMIT,
                                       shape=(32, 32, 1), with_hash=True)
    assert large.problems == [] and isinstance(large.phash, int)
