import json
import os

import pytest
import tensorflow as tf
from tfx.components.example_gen import utils
from tfx.dsl.components.base import base_beam_executor
from tfx.proto import example_gen_pb2
from tfx.types import standard_artifacts
from tfx.utils import proto_utils

from components.nodes import example_gen
from components.shared import data_checks, input_files


def _write_span(root, span: int, count: int):
    os.makedirs(root / f'span-{span}')
    with tf.io.TFRecordWriter(str(root / f'span-{span}' / 'data.tfrecord')) as writer:
        for i in range(count):
            example = tf.train.Example(features=tf.train.Features(feature={
                'span': tf.train.Feature(int64_list=tf.train.Int64List(value=[span])),
                'i': tf.train.Feature(int64_list=tf.train.Int64List(value=[i]))}))
            writer.write(example.SerializeToString())


def _execute(tmp_path, executor_class, data, pattern, exec_properties_extra=None,
             output_config=None) -> standard_artifacts.Examples:
    """Runs an ExampleGen executor over `data` (default: everything into one `train` split), as without a driver."""
    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / 'examples')
    input_config = example_gen_pb2.Input(splits=[example_gen_pb2.Input.Split(name='single_split', pattern=pattern)])
    output_config = output_config or example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(splits=[
        example_gen_pb2.SplitConfig.Split(name='train', hash_buckets=1)]))
    exec_properties = {'input_base': str(data), 'input_config': proto_utils.proto_to_json(input_config),
                       'output_config': proto_utils.proto_to_json(output_config),
                       'output_data_format': example_gen_pb2.FORMAT_TF_EXAMPLE,
                       'output_file_format': example_gen_pb2.FORMAT_TFRECORDS_GZIP,
                       **(exec_properties_extra or {})}
    executor_class(base_beam_executor.BaseBeamExecutor.Context(beam_pipeline_args=[])).Do(
        {}, {'examples': [examples]}, exec_properties)
    return examples


def _examples_of(uri, split='train'):
    found = []
    for path in tf.io.gfile.glob(os.path.join(uri, f'Split-{split}', '*')):
        for record in tf.data.TFRecordDataset(path, compression_type='GZIP'):
            found.append(tf.train.Example.FromString(record.numpy()))
    return found


def _run(tmp_path, data, exec_properties_extra=None):
    """The TFRecord ExampleGen over span-{SPAN}/*: (the Examples artifact, the spans read)."""
    examples = _execute(tmp_path, example_gen.SpanResolvingImportExecutor, data, 'span-{SPAN}/*',
                        exec_properties_extra)
    return examples, {e.features.feature['span'].int64_list.value[0] for e in _examples_of(examples.uri)}


def test_without_a_driver_the_newest_span_is_read(tmp_path):
    """As on open-source Kubeflow, where ExampleGen's driver (preCacheCheck) never runs."""
    data = tmp_path / 'data'
    for span, count in ((1, 5), (2, 6), (10, 7)):
        _write_span(data, span, count)
    examples, spans = _run(tmp_path, data)
    assert spans == {10}  # numeric, not lexicographic: span 10 is newer than 2
    assert examples.mlmd_artifact.custom_properties[utils.SPAN_PROPERTY_NAME].int_value == 10
    assert examples.mlmd_artifact.custom_properties[utils.FINGERPRINT_PROPERTY_NAME].string_value


def test_a_span_resolved_by_the_driver_is_kept(tmp_path):
    """Locally the driver has run (here: it chose span 1 on a range config): its choice stands."""
    data = tmp_path / 'data'
    for span in (1, 2):
        _write_span(data, span, 4)
    resolved = {'input_config': proto_utils.proto_to_json(example_gen_pb2.Input(
        splits=[example_gen_pb2.Input.Split(name='single_split', pattern='span-1/*')])),
        utils.SPAN_PROPERTY_NAME: 1, utils.VERSION_PROPERTY_NAME: None}
    _, spans = _run(tmp_path, data, resolved)
    assert spans == {1}


def _png(value: int) -> bytes:
    import numpy as np

    from components.training import digits

    return digits.encode_png(np.full((8, 8), value, np.uint8))


def test_image_folders_become_examples_labelled_by_their_folder_newest_span_only(tmp_path):
    data = tmp_path / 'images'
    files = {('span-1', 'nine', 'a.png'): 10, ('span-2', 'nine', 'b.png'): 20, ('span-2', 'nine', 'c.jpg'): 30,
             ('span-2', 'other', 'd.png'): 40, ('span-2', '3', 'e.PNG'): 50}
    for parts, value in files.items():
        os.makedirs(data.joinpath(*parts[:-1]), exist_ok=True)
        data.joinpath(*parts).write_bytes(_png(value))
    (data / 'span-2' / 'nine' / 'notes.txt').write_text('not an image')
    examples = _execute(tmp_path, example_gen.ImageExampleGenExecutor, data, 'span-{SPAN}/*/*', {
        'custom_config': proto_utils.proto_to_json(
            example_gen.custom_config('span-{SPAN}/*/*', layout='folders', image_feature='image',
                                      label_feature='label', class_names={'nine': 1, 'other': 0}))})
    got = sorted((e.features.feature['image'].bytes_list.value[0], e.features.feature['label'].int64_list.value[0])
                 for e in _examples_of(examples.uri))
    assert got == sorted([(_png(20), 1), (_png(30), 1), (_png(40), 0), (_png(50), 3)])
    assert examples.mlmd_artifact.custom_properties[utils.SPAN_PROPERTY_NAME].int_value == 2


def test_csv_rows_name_their_image_and_keep_other_columns(tmp_path):
    (tmp_path / 'img').mkdir()
    (tmp_path / 'img' / 'a.png').write_bytes(_png(1))
    (tmp_path / 'img' / 'b.png').write_bytes(_png(2))
    (tmp_path / 'labels.csv').write_text('file,class,site\nimg/a.png,defect,north\nimg/b.png,0,south\n')
    settings = {'layout': 'csv', 'image_feature': 'file', 'label_feature': 'class', 'class_names': {'defect': 1}}
    rows = list(example_gen.file_examples(str(tmp_path / 'labels.csv'), settings, str(tmp_path)))
    assert [(r.features.feature['file'].bytes_list.value[0], r.features.feature['class'].int64_list.value[0],
             r.features.feature['site'].bytes_list.value[0]) for r in rows] == [
        (_png(1), 1, b'north'), (_png(2), 0, b'south')]

    (tmp_path / 'bad.csv').write_text('file,class\nimg/a.png,scratch\n')
    with pytest.raises(ValueError, match=r"bad.csv line 2: class 'scratch' is neither in data.class_names \['defect'\] nor"):
        list(example_gen.file_examples(str(tmp_path / 'bad.csv'), settings, str(tmp_path)))
    (tmp_path / 'gap.csv').write_text('file,class,site\nimg/a.png,,\n')
    [gap] = example_gen.file_examples(str(tmp_path / 'gap.csv'), settings, str(tmp_path))
    # Missing values are missing features, for validation.
    assert set(gap.features.feature) == {'file', input_files.SOURCE_FILE}
    assert gap.features.feature[input_files.SOURCE_FILE].bytes_list.value == [b'gap.csv line 2: img/a.png']
    (tmp_path / 'lost.csv').write_text('file,class\nimg/zz.png,1\n')
    with pytest.raises(FileNotFoundError, match=r"lost.csv line 2: image 'img/zz.png' not found"):
        list(example_gen.file_examples(str(tmp_path / 'lost.csv'), settings, str(tmp_path)))


def test_a_rolling_window_reads_the_newest_spans_together(tmp_path):
    """rolling_spans 2 over spans 1, 2, 10: spans 2 and 10, with or without a driver having run."""
    data = tmp_path / 'data'
    for span, count in ((1, 5), (2, 6), (10, 7)):
        _write_span(data, span, count)
    assert example_gen.window_patterns(str(data), 'span-{SPAN}/*', 10, 2) == [(2, 'span-2/*'), (10, 'span-10/*')]
    assert example_gen.window_patterns(str(data), 'span-{SPAN}/*', 2, 5) == [(1, 'span-1/*'), (2, 'span-2/*')]
    window = {'custom_config': proto_utils.proto_to_json(example_gen.custom_config('span-{SPAN}/*', rolling_spans=2))}
    examples, spans = _run(tmp_path / 'no-driver', data, window)
    assert spans == {2, 10}
    assert examples.get_string_custom_property('spans') == '[2, 10]'
    # Locally the driver has resolved the newest span and rewritten the pattern: the window still applies.
    resolved = {**window, 'input_config': proto_utils.proto_to_json(example_gen_pb2.Input(
        splits=[example_gen_pb2.Input.Split(name='single_split', pattern='span-10/*')])),
        utils.SPAN_PROPERTY_NAME: 10, utils.VERSION_PROPERTY_NAME: None}
    _, spans = _run(tmp_path / 'driver', data, resolved)
    assert spans == {2, 10}


CSV = {'layout': 'csv', 'image_feature': 'image', 'label_feature': 'label', 'class_names': {}}
FOLDERS = {**CSV, 'layout': 'folders'}


def _refused(path, settings, root) -> str:
    with pytest.raises(ValueError) as error:
        list(example_gen.file_examples(str(path), settings, str(root)))
    return str(error.value)


def test_csv_rows_and_files_outside_data_path_are_refused_with_the_file_and_line(tmp_path):
    data, secret = tmp_path / 'data', tmp_path / 'secret.png'
    (data / 'img').mkdir(parents=True)
    secret.write_bytes(_png(7))
    (data / 'img' / 'ok.png').write_bytes(_png(1))
    (data / 'img' / 'link.png').symlink_to(secret)
    rows = {'absolute.csv': str(secret), 'dotdot.csv': '../secret.png', 'symlink.csv': 'img/link.png'}
    for name, image in rows.items():
        (data / name).write_text(f'image,label\nimg/ok.png,1\n{image},1\n')
    assert _refused(data / 'absolute.csv', CSV, data) == (
        f"data.path: {data / 'absolute.csv'} line 3: image {str(secret)!r} is an absolute path; expected a path "
        f"relative to the CSV file's directory, inside data.path {data}")
    assert _refused(data / 'dotdot.csv', CSV, data) == (
        f"data.path: {data / 'dotdot.csv'} line 3: image '../secret.png' resolves to {secret}, outside data.path {data}")
    assert _refused(data / 'symlink.csv', CSV, data) == (
        f"data.path: {data / 'symlink.csv'} line 3: image 'img/link.png' resolves to {secret}, outside data.path {data}")
    # An image folder's symlink to a file elsewhere.
    (data / '3').mkdir()
    (data / '3' / 'a.png').symlink_to(secret)
    assert _refused(data / '3' / 'a.png', FOLDERS, data) == (
        f"data.path: {data / '3' / 'a.png'} resolves to {secret}, outside data.path {data}")
    # Inside data.path, through `..` or a symlink, is fine.
    (data / 'img' / 'inner.png').symlink_to(data / 'img' / 'ok.png')
    (data / 'fine.csv').write_text('image,label\nimg/../img/ok.png,1\nimg/inner.png,0\n')
    assert len(list(example_gen.file_examples(str(data / 'fine.csv'), CSV, str(data)))) == 2


@pytest.mark.parametrize('folder', ['٣', '0_9', ' 7 ', '10000000000000000000', '+4', '٣٤'])
def test_a_folder_label_must_be_ascii_digits_within_int64(tmp_path, folder):
    (tmp_path / folder).mkdir()
    (tmp_path / folder / 'a.png').write_bytes(_png(1))
    assert _refused(tmp_path / folder / 'a.png', FOLDERS, tmp_path) == (
        f'data.path: folder {tmp_path / folder}: class {folder!r} is neither in data.class_names [] nor a whole '
        f'number in ASCII digits within int64; give its label in data.class_names, e.g. {{{folder!r}: 1}}')
    [example] = example_gen.file_examples(str(tmp_path / folder / 'a.png'), {**FOLDERS, 'class_names': {folder: 4}},
                                          str(tmp_path))
    assert example.features.feature['label'].int64_list.value == [4]


def test_plain_numbers_within_int64_are_labels(tmp_path):
    for folder in ('-9223372036854775808', '9223372036854775807', '007'):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / 'a.png').write_bytes(_png(1))
        [example] = example_gen.file_examples(str(tmp_path / folder / 'a.png'), FOLDERS, str(tmp_path))
        assert example.features.feature['label'].int64_list.value == [int(folder)]
    (tmp_path / 'labels.csv').write_text('image,label\n007/a.png,٣\n')
    assert _refused(tmp_path / 'labels.csv', CSV, tmp_path).startswith(
        f"data.path: {tmp_path / 'labels.csv'} line 2: class '٣' is neither in data.class_names [] nor")


def test_a_csv_that_is_not_utf8_is_named_with_the_byte_offset(tmp_path):
    (tmp_path / 'a.png').write_bytes(_png(1))
    before = b'image,label,site\na.png,1,Z'
    (tmp_path / 'latin1.csv').write_bytes(before + 'ürich\n'.encode('latin-1'))
    assert _refused(tmp_path / 'latin1.csv', CSV, tmp_path) == (
        f"data.path: {tmp_path / 'latin1.csv'} is not UTF-8 text: byte {len(before)} (fc) invalid start byte; "
        'save it as UTF-8')
    (tmp_path / 'excel.csv').write_bytes(b'\xef\xbb\xbfimage,label\na.png,1\n')  # UTF-8 with a byte order mark
    [example] = example_gen.file_examples(str(tmp_path / 'excel.csv'), CSV, str(tmp_path))
    assert example.features.feature['label'].int64_list.value == [1]


def _split_of(examples_uri) -> dict[str, str]:
    """{source file: split} of every example written."""
    return {e.features.feature[input_files.SOURCE_FILE].bytes_list.value[0].decode(): split
            for split in ('train', 'eval', 'test') for e in _examples_of(examples_uri, split)}


def _three_splits():
    return example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(splits=[
        example_gen_pb2.SplitConfig.Split(name=name, hash_buckets=1) for name in ('train', 'eval', 'test')],
        partition_feature_name=input_files.SPLIT_GROUP))


def test_near_duplicate_photos_go_to_one_split_and_skipped_files_are_counted(tmp_path):
    """Each of 12 photos with three copies (re-saved at quality 60, resized by 10%, stripped of its
    metadata): every group lands whole in one split, while the 12 groups spread over the three
    splits; files that are not images are counted by extension."""
    import io

    from PIL import Image

    from components.nodes.data_gate_test import _camera_exif, _photo

    data = tmp_path / 'photos'
    for label in ('ok', 'defect'):
        (data / label).mkdir(parents=True)
    for i in range(12):
        folder = data / ('ok' if i % 2 else 'defect')
        original = _photo(100 + i, size=(120, 90), quality=95, exif=_camera_exif())
        (folder / f'{i}.jpg').write_bytes(original)
        image = Image.open(io.BytesIO(original))
        for suffix, edit, save in (('q60', lambda im: im, {'quality': 60}),
                                   ('small', lambda im: im.resize((108, 81), Image.LANCZOS), {'quality': 90}),
                                   ('stripped', lambda im: im, {'quality': 95})):
            buffer = io.BytesIO()
            edit(image).save(buffer, 'JPEG', **save)
            (folder / f'{i}-{suffix}.jpg').write_bytes(buffer.getvalue())
    for name in ('a.heic', 'b.heic', 'c.webp', 'notes'):
        (data / 'ok' / name).write_bytes(b'not read')
    examples = _execute(tmp_path, example_gen.ImageExampleGenExecutor, data, '*/*', {
        'custom_config': proto_utils.proto_to_json(example_gen.custom_config(
            '*/*', layout='folders', image_feature='image', label_feature='label', class_names={'ok': 0, 'defect': 1},
            max_distance=6, group_feature=None, extra_extensions=[], max_image_pixels=50_000_000))},
        output_config=_three_splits())
    split_of = _split_of(examples.uri)
    assert len(split_of) == 48
    for i in range(12):
        folder = 'ok' if i % 2 else 'defect'
        assert {split_of[f'{folder}/{i}{suffix}.jpg'] for suffix in ('', '-q60', '-small', '-stripped')} == {
            split_of[f'{folder}/{i}.jpg']}, i
    assert set(split_of.values()) == {'train', 'eval', 'test'}
    assert json.loads(examples.get_string_custom_property(data_checks.SKIPPED_FILES)) == {'.heic': 2, '': 1, '.webp': 1}


def test_a_csv_group_column_keeps_a_parts_photos_in_one_split(tmp_path):
    """Different photos of one part (the CSV's part_id) share a split; parts spread over all three."""
    from components.nodes.data_gate_test import _photo

    (tmp_path / 'img').mkdir()
    rows = ['image,label,part_id']
    for i in range(30):
        (tmp_path / 'img' / f'{i}.png').write_bytes(_photo(200 + i, 'PNG'))
        rows.append(f'img/{i}.png,{i % 2},part-{i // 3}')
    (tmp_path / 'labels.csv').write_text('\n'.join(rows) + '\n')
    examples = _execute(tmp_path, example_gen.ImageExampleGenExecutor, tmp_path, '*.csv', {
        'custom_config': proto_utils.proto_to_json(example_gen.custom_config(
            '*.csv', layout='csv', image_feature='image', label_feature='label', class_names={},
            max_distance=6, group_feature='part_id', extra_extensions=[], max_image_pixels=50_000_000))},
        output_config=_three_splits())
    split_of = {name.rsplit(': ', 1)[1]: split for name, split in _split_of(examples.uri).items()}
    for part in range(10):
        assert len({split_of[f'img/{i}.png'] for i in range(3 * part, 3 * part + 3)}) == 1, part
    assert set(split_of.values()) == {'train', 'eval', 'test'}
