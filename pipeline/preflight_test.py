import json
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


def _photos(tmp_path, *overrides):
    """A pipeline on image folders, like a config copied from configs/photos.yaml."""
    for folder in ('photos', 'other'):
        (tmp_path / folder).mkdir(exist_ok=True)
    return load_config(LOCAL, (f'pipeline.runs_dir={tmp_path / "runs"}', 'data.source=images',
                               f'data.path={tmp_path / "photos"}', 'data.labels=[5, 6, 7, 8, 9]', *overrides))


def test_the_first_run_records_its_pipeline_and_later_runs_may_change_floors_epochs_rates_and_spans(tmp_path):
    first = _photos(tmp_path)
    assert preflight.reused_name(first) is None
    assert preflight.claim_name(first, 'configs/photos.yaml') is None
    with open(tmp_path / 'runs' / 'digits-finetune' / preflight.PIPELINE_FILE) as f:
        recorded = json.load(f)
    assert recorded == {'config': os.path.abspath('configs/photos.yaml'), 'identity': {
        'data.source': 'images', 'data.path': str(tmp_path / 'photos'), 'task.type': 'binary',
        'task.positive_class': 9, 'task.classes': None}}
    later = _photos(tmp_path, 'evaluation.thresholds={recall: 0.5}', 'trainer.stages.0.epochs=3',
                    'trainer.stages.1.optimizer.learning_rate=1e-4', 'data.pattern=span-{SPAN}/*/*',
                    f'data.path={tmp_path / "photos"}/')
    assert preflight.reused_name(later) is None
    assert preflight.claim_name(later, 'configs/later.yaml') is None
    with open(tmp_path / 'runs' / 'digits-finetune' / preflight.PIPELINE_FILE) as f:
        assert json.load(f) == recorded


def test_another_pipeline_under_the_same_name_is_refused_in_one_line(tmp_path):
    assert preflight.claim_name(_photos(tmp_path), 'configs/photos.yaml') is None
    record = tmp_path / 'runs' / 'digits-finetune' / preflight.PIPELINE_FILE
    first = (f"pipeline.name 'digits-finetune' is already used in {tmp_path / 'runs' / 'digits-finetune'} by a "
             f"pipeline with data.source images, data.path {tmp_path / 'photos'}, task.type binary, "
             f"task.positive_class 9 (first run from {os.path.abspath('configs/photos.yaml')}); this config has ")
    other_data = _photos(tmp_path, f'data.path={tmp_path / "other"}')
    line = f'{first}data.path {tmp_path / "other"}: give it its own pipeline.name (or delete {record} if the data moved)'
    assert preflight.check(other_data)[0] == line
    # Under the lock, a second first run finds the record and records nothing.
    assert preflight.claim_name(other_data, 'configs/copy.yaml') == line
    assert str(tmp_path / 'other') not in record.read_text()
    assert preflight.reused_name(_photos(tmp_path, 'task.positive_class=5')) == (
        f'{first}task.positive_class 5: give it its own pipeline.name')
    multiclass = _photos(tmp_path, 'task.type=multiclass', 'task.positive_class=null', 'task.classes=[5, 9]')
    assert preflight.reused_name(multiclass) == (
        f'{first}task.type multiclass, task.classes [5, 9]: give it its own pipeline.name')


def test_a_record_that_is_not_the_pipelines_stops_the_run(tmp_path):
    config = _photos(tmp_path)
    record = tmp_path / 'runs' / 'digits-finetune' / preflight.PIPELINE_FILE
    record.parent.mkdir(parents=True)
    record.write_text('{"identity": ')
    assert preflight.claim_name(config, 'configs/photos.yaml').startswith(
        f'pipeline.name: {record} does not hold the pipeline that ran here (JSONDecodeError: ')


def test_through_the_cli_a_reused_name_exits_2_before_the_lock_and_the_dag(tmp_path, run_cli):
    runs = tmp_path / 'runs'
    assert preflight.claim_name(load_config(LOCAL, (f'pipeline.runs_dir={runs}',)), LOCAL) is None
    result = run_cli('run', '--config', LOCAL, '--set', f'pipeline.runs_dir={runs}', '--set', 'task.positive_class=5')
    assert (result.returncode, result.stdout) == (2, '')
    assert result.stderr.strip().splitlines() == [
        f"cannot start: pipeline.name 'digits-finetune' is already used in {runs / 'digits-finetune'} by a pipeline "
        f'with data.source digits, data.digits_classes [5, 6, 7, 8, 9], task.type binary, task.positive_class 9 '
        f'(first run from {LOCAL}); this config has task.positive_class 5: give it its own pipeline.name']
    assert not (runs / 'digits-finetune' / 'run.lock').exists()
