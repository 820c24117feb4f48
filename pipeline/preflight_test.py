import os
import subprocess
import sys
import time

import pytest

from pipeline import preflight
from components.config import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCAL = os.path.join(REPO, 'configs', 'local.yaml')


def _check(tmp_path, *overrides):
    return preflight.check(load_config(LOCAL, (f'pipeline.runs_dir={tmp_path / "runs"}', *overrides)))


def test_the_default_can_start(tmp_path):
    assert _check(tmp_path) == []
    assert not (tmp_path / 'runs').exists()  # the checks create nothing


def test_a_serving_directory_that_is_a_file_stops_the_run_at_once_with_exit_2(tmp_path):
    run_dir = tmp_path / 'runs' / 'digits-finetune'
    run_dir.mkdir(parents=True)
    (run_dir / 'serving').write_text('not a directory')
    code = ('import sys; from pipeline.cli import main; rc = main(sys.argv[1:]); '
            'print("tensorflow imported:", "tensorflow" in sys.modules); sys.exit(rc)')
    started = time.monotonic()
    result = subprocess.run([sys.executable, '-c', code, 'run', '--config', LOCAL, '--set',
                             f'pipeline.runs_dir={tmp_path / "runs"}'], cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert time.monotonic() - started < 20
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f'cannot start: pipeline.runs_dir: {run_dir / "serving"} is a file; expected a directory there '
        f'(for {run_dir / "serving"})']
    assert 'tensorflow imported: False' in result.stdout


def test_a_backbone_file_that_does_not_open_is_named(tmp_path):
    keras_file = tmp_path / 'backbone.keras'
    keras_file.write_bytes(b'\x00' * 96)
    assert _check(tmp_path, 'model.backbone={keras_file: ' + str(keras_file) + '}') == [
        f'model.backbone.keras_file: {keras_file} does not open as a Keras model file (.keras is a zip archive)']
    weights = tmp_path / 'mobilenet_v2_notop.h5'
    weights.write_bytes(b'<html>a proxy error page</html>')
    [line] = _check(tmp_path, 'model.input.channels=3',
                    'model.backbone={keras_application: {name: MobileNetV2, weights: ' + str(weights) + '}}')
    assert line.startswith(f'model.backbone.keras_application.weights: {weights} does not open as a weights file')


@pytest.mark.parametrize('pattern, expected', [
    (None, "no file under {path} matches data.pattern '*/*'"),
    ('span-{SPAN}/*/*', "no file under {path} matches data.pattern 'span-{{SPAN}}/*/*'"),
])
def test_input_files_must_match_the_pattern(tmp_path, pattern, expected):
    data = tmp_path / 'photos'
    (data / 'ok').mkdir(parents=True)  # folders, but no file in them
    overrides = ['data.source=images', f'data.path={data}', 'data.labels=[5, 6, 7, 8, 9]']
    if pattern:
        overrides.append(f'data.pattern={pattern}')
    assert _check(tmp_path, *overrides) == [f'data.path: {expected.format(path=data)}']
    (data / 'span-3' / '9').mkdir(parents=True)
    (data / 'span-3' / '9' / 'a.png').write_bytes(b'x')
    (data / 'ok' / 'b.png').write_bytes(b'x')
    assert _check(tmp_path, *overrides) == []


def _tfrecords(path, n, options=None):
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path), options=options) as writer:
        for i in range(n):
            writer.write(b'record %d ' % i * 20)


@pytest.mark.parametrize('name, options', [('part-1.tfrecord', None), ('part-1.tfrecord.gz', 'GZIP')])
def test_a_truncated_tfrecord_file_among_good_ones_is_named(tmp_path, name, options):
    data = tmp_path / 'data'
    data.mkdir()
    _tfrecords(data / 'part-0.tfrecord', 50)
    _tfrecords(data / name, 50, options)
    overrides = ('data.source=tfrecord', f'data.path={data}', 'data.labels=[5, 6, 7, 8, 9]')
    config = load_config(LOCAL, (f'pipeline.runs_dir={tmp_path / "runs"}', *overrides))
    assert preflight.check(config) == preflight.check_data(config) == []
    whole = (data / name).read_bytes()
    (data / name).write_bytes(whole[:len(whole) * 2 // 3])
    assert preflight.check(config) == []
    [line] = preflight.check_data(config)
    assert line.startswith(f'data.path: {data / name} is not a whole TFRecord file: ')
    assert preflight.truncated_tfrecord(str(data / 'part-0.tfrecord')) is None


def test_the_cli_stops_on_a_truncated_file_with_exit_4_in_seconds(tmp_path):
    data = tmp_path / 'data'
    data.mkdir()
    _tfrecords(data / 'part-0.tfrecord', 50)
    (data / 'part-0.tfrecord').write_bytes((data / 'part-0.tfrecord').read_bytes()[:-7])
    code = ('import sys; from pipeline.cli import main; rc = main(sys.argv[1:]); '
            'print("tensorflow imported:", "tensorflow" in sys.modules); sys.exit(rc)')
    result = subprocess.run([sys.executable, '-c', code, 'run', '--config', LOCAL, '--set',
                             f'pipeline.runs_dir={tmp_path / "runs"}', '--set', 'data.source=tfrecord', '--set',
                             f'data.path={data}', '--set', 'data.labels=[5, 6, 7, 8, 9]'],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 4
    assert result.stdout.splitlines()[:2] == [
        'data failed validation; nothing was trained or pushed:',
        f'  data.path: {data / "part-0.tfrecord"} is not a whole TFRecord file: ends inside record 50 '
        f'({len(b"record 49 " * 20) + 4 - 7} of {len(b"record 49 " * 20) + 4} bytes)']
    assert 'tensorflow imported: False' in result.stdout


def test_csv_rows_naming_images_that_are_not_there_are_counted_per_file(tmp_path):
    data = tmp_path / 'data'
    (data / 'img').mkdir(parents=True)
    (data / 'img' / 'a.png').write_bytes(b'x')
    (data / 'labels.csv').write_text('image,label\nimg/a.png,5\nimg/b.png,9\nimg/c.png,9\n,6\n')
    config = load_config(LOCAL, (f'pipeline.runs_dir={tmp_path / "runs"}', 'data.source=csv', f'data.path={data}',
                                 'data.labels=[5, 6, 7, 8, 9]'))
    assert preflight.check(config) == []
    assert preflight.check_data(config) == [
        f"data.path: {data / 'labels.csv'} names 2 image files that do not exist (first: line 3, 'img/b.png')"]


def test_through_the_cli_no_matching_file_exits_2_and_missing_csv_images_exit_4(tmp_path, run_cli):
    empty = tmp_path / 'photos'
    (empty / 'ok').mkdir(parents=True)
    base = ['run', '--config', LOCAL, '--set', f'pipeline.runs_dir={tmp_path / "runs"}',
            '--set', 'data.labels=[5, 6, 7, 8, 9]']
    result = run_cli(*base, '--set', 'data.source=images', '--set', f'data.path={empty}')
    assert result.returncode == 2 and result.stdout == ''
    assert result.stderr.strip() == f"cannot start: data.path: no file under {empty} matches data.pattern '*/*'"

    data = tmp_path / 'data'
    (data / 'img').mkdir(parents=True)
    (data / 'img' / 'a.png').write_bytes(b'x')
    (data / 'labels.csv').write_text('image,label\nimg/a.png,5\nimg/b.png,9\n')
    result = run_cli(*base, '--set', 'data.source=csv', '--set', f'data.path={data}')
    assert result.returncode == 4
    assert result.stdout.strip().splitlines() == [
        'data failed validation; nothing was trained or pushed:',
        f"  data.path: {data / 'labels.csv'} names 1 image file that does not exist (first: line 3, 'img/b.png')"]
