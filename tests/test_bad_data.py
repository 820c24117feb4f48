"""Bad data as a user's own tools write it, through the real data steps: the run stops at the data
gate with exit 4, before Transform and training, and names each problem on one line."""

import re

import pytest

from tests.conftest import _run_args

pytestmark = pytest.mark.e2e


def _write(path, rows) -> None:
    """TFRecord files of tf.Example: rows of {feature: value}, value bytes, int or None (absent)."""
    import tensorflow as tf

    path.mkdir(parents=True)
    with tf.io.TFRecordWriter(str(path / 'data.tfrecord')) as writer:
        for row in rows:
            feature = {}
            for name, value in row.items():
                if isinstance(value, bytes):
                    feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
                elif value is not None:
                    feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


def _digits(n=300):
    from components.training import digits

    images, labels = digits.load_digits_images((5, 6, 7, 8, 9))
    return [(digits.encode_png(image), int(label)) for image, label in zip(images[:n], labels[:n])]


def _run(run_cli, tmp_path, rows, *overrides):
    data = tmp_path / 'data'
    _write(data, rows)
    result = run_cli(*_run_args(tmp_path / 'runs', 'data.source=tfrecord', f'data.path={data}',
                                'data.labels=[5, 6, 7, 8, 9]', *overrides))
    return result, result.stdout.strip().splitlines()


def _stopped_at_the_gate(result, lines):
    """The problems the summary lists, after checking that the run stopped at the gate and that
    its report (the page of a stopped run) lists the same problems."""
    import html

    assert result.returncode == 4, lines[-8:]
    start = lines.index('data failed validation; nothing was trained or pushed:')
    assert not any('Transform: running' in line or 'Trainer' in line for line in lines)
    assert lines[-1].startswith('run report: ') and lines[-1].endswith('report.html'), lines[-3:]
    problems = [line.strip() for line in lines[start + 1:-1]]
    with open(lines[-1].split(': ', 1)[1]) as f:
        page = f.read()
    assert 'stopped by data validation' in page
    listed = [html.unescape(item) for item in re.findall(r'<li>(.*?)</li>', page)]
    assert listed == problems
    return problems


def test_missing_and_empty_images_and_unknown_labels_are_each_named(tmp_path, run_cli):
    rows = []
    for i, (image, label) in enumerate(_digits()):
        if i % 50 == 1:
            rows.append({'label': label})  # no image
        elif i % 50 == 2:
            rows.append({'image': b'', 'label': label})
        elif i % 100 == 3:
            rows.append({'image': image, 'label': -1})
        elif i % 100 == 4:
            rows.append({'image': image, 'label': 12})
        else:
            rows.append({'image': image, 'label': label})
    problems = _stopped_at_the_gate(*_run(run_cli, tmp_path, rows))
    joined = '\n'.join(problems)
    assert "feature 'image': missing or empty in" in joined
    assert "feature 'image': empty image bytes in" in joined
    assert 'label outside the known set: -1' in joined and 'label outside the known set: 12' in joined
    assert all(line.startswith('split ') for line in problems)


def test_a_label_stored_as_bytes_is_named_with_both_types(tmp_path, run_cli):
    rows = [{'image': image, 'label': str(label).encode()} for image, label in _digits()]
    problems = _stopped_at_the_gate(*_run(run_cli, tmp_path, rows))
    assert any("feature 'label': expected int64, found bytes" in line for line in problems), problems


def test_no_label_feature_at_all(tmp_path, run_cli):
    rows = [{'image': image, 'class': label} for image, label in _digits()]
    problems = _stopped_at_the_gate(*_run(run_cli, tmp_path, rows))
    assert any(re.fullmatch(r"split train, feature 'label': absent from all \d+ examples; features found: class, image",
                            line) for line in problems), problems


def test_no_positive_example_stops_before_training(tmp_path, run_cli):
    rows = [{'image': image, 'label': label} for image, label in _digits() if label != 9]
    problems = _stopped_at_the_gate(*_run(run_cli, tmp_path, rows))
    assert any(line.startswith('split train: no example of the positive class 9') for line in problems), problems


def test_a_multiclass_class_absent_from_test_stops_before_training(tmp_path, run_cli):
    """Class 7 of task.classes left out of the data: train and test both lack it, and each says so."""
    rows = [{'image': image, 'label': label} for image, label in _digits() if label != 7]
    problems = _stopped_at_the_gate(*_run(run_cli, tmp_path, rows, 'task.type=multiclass', 'task.classes=[5, 6, 7, 8, 9]',
                                          'task.positive_class=null', 'evaluation.max_drop={}',
                                          'evaluation.thresholds={accuracy: 0.5}'))
    assert 'split train: no example of class 7 of task.classes' in problems, problems
    assert 'split test: no example of class 7 of task.classes' in problems, problems


def test_a_test_split_too_small_for_a_floor_stops_before_training(tmp_path, run_cli):
    """Clean data, but 300 examples leave under 20 positives in test: even a model that finds every
    one has a 95% lower bound on recall below a floor of 0.9, so no model could pass the gate."""
    rows = [{'image': image, 'label': label} for image, label in _digits()]
    problems = _stopped_at_the_gate(*_run(run_cli, tmp_path, rows, 'evaluation.thresholds.recall=0.9'))
    [line] = problems
    found = re.fullmatch(r'split test: (\d+) positives; even recall \1/\1 has a 95% lower bound of (0\.\d+) < floor 0\.9; '
                         r'needs at least 36 positives \(more examples, a larger test share, or a lower floor\)', line)
    assert found and 0 < int(found[1]) < 36 and float(found[2]) < 0.9, line


def test_images_over_the_pixel_limit_are_counted_per_split_from_their_headers(tmp_path, run_cli):
    """The digits are 8x8 images, so a limit of 63 pixels refuses every one, in every split; two
    files of a few dozen bytes whose headers announce 20000x20000 pixels are the largest of theirs."""
    from components.training.images_test import huge_header_png

    rows = [{'image': image, 'label': label} for image, label in _digits()]
    rows[10:12] = [{'image': huge_header_png(20000, 20000), 'label': 9}] * 2
    problems = _stopped_at_the_gate(*_run(run_cli, tmp_path, rows, 'data.max_image_pixels=63'))
    found = [re.fullmatch(r'split (\w+): (\d+) images over data.max_image_pixels 63 \(largest (\d+x\d+)\)', line)
             for line in problems]
    assert all(found) and [m[1] for m in found] == ['eval', 'test', 'train'], problems
    assert sum(int(m[2]) for m in found) == len(rows)
    assert {m[3] for m in found} == {'20000x20000', '8x8'}, problems
