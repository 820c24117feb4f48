"""Files that would run code, read what they should not, or cost the machine, given to
`python -m pipeline run`: each stops the run before TensorFlow loads, with its exit code (2: cannot
start, 4: bad data) and one line naming the file (and the CSV line), and no traceback."""

import hashlib
import os
import struct
import subprocess
import sys

import pytest

from components.training.backbone_test import PAYLOADS, crafted_backbone

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCAL = os.path.join(REPO, 'configs', 'local.yaml')
BAD_DATA = 'data failed validation; nothing was trained or pushed:'
BACKBONE_RULE = ("in its config.json; a backbone may hold only Keras' own classes and the project's registered ones "
                 '(staged_finetune>...), no Lambda layer or function')


def _args(tmp_path, *overrides) -> list[str]:
    args = ['run', '--config', LOCAL, '--set', f'pipeline.runs_dir={tmp_path / "runs"}']
    for override in overrides:
        args += ['--set', override]
    return args


def _data(tmp_path, source, *overrides) -> list[str]:
    return _args(tmp_path, f'data.source={source}', f'data.path={tmp_path / "data"}', 'data.labels=[5, 6, 7, 8, 9]',
                 *overrides)


def _bad_data(result) -> list[str]:
    """The problem lines of a run stopped at the preflight's data check."""
    assert (result.returncode, result.stderr) == (4, ''), (result.returncode, result.stderr, result.stdout)
    first, *problems = result.stdout.strip().splitlines()
    assert first == BAD_DATA
    return [line.strip() for line in problems]


@pytest.mark.parametrize('payload', PAYLOADS)
def test_a_backbone_naming_code_is_refused_before_tensorflow_loads_and_never_runs(tmp_path, payload):
    crafted, marker = crafted_backbone(tmp_path, payload)
    code = ('import sys; from pipeline.cli import main; rc = main(sys.argv[1:]); '
            'print("tensorflow imported:", "tensorflow" in sys.modules); sys.exit(rc)')
    result = subprocess.run([sys.executable, '-c', code, *_args(tmp_path, f'model.backbone={{keras_file: {crafted}}}')],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    named = 'keras.layers.Lambda, which carries code' if payload == 'builtins.exec' else payload
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f'cannot start: model.backbone.keras_file: {crafted} names {named} '
                                          f'{BACKBONE_RULE}']
    assert result.stdout == 'tensorflow imported: False\n'
    assert not marker.exists()


def test_a_backbone_that_is_not_the_pinned_file_is_refused(tmp_path, run_cli):
    from components.training import backbone
    from components.config import ImageShape

    path = tmp_path / 'backbone.keras'
    backbone.build_digits_cnn(ImageShape(height=8, width=8, channels=1)).save(str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    expected = hashlib.sha256(b'the file that was reviewed').hexdigest()
    result = run_cli(*_args(tmp_path, f'model.backbone={{keras_file: {path}, sha256: {expected}}}'))
    assert (result.returncode, result.stdout) == (2, '')
    assert result.stderr.splitlines() == [f'cannot start: model.backbone.sha256: {path} has sha256 {digest}; '
                                          f'expected {expected}']
    result = run_cli(*_args(tmp_path, f'model.backbone.sha256={expected}'))  # the default: a source-task backbone
    assert (result.returncode, result.stdout) == (2, '')
    assert result.stderr.splitlines() == [
        'invalid config: model.backbone: sha256 pins a file: it goes with keras_file, or keras_application.weights '
        'given as a path (a source_task backbone is built here, and Keras checks weights: imagenet itself)']


def test_csv_rows_and_symlinks_leading_outside_data_path_are_refused(tmp_path, run_cli):
    data, secret = tmp_path / 'data', tmp_path / 'secret.png'
    (data / 'img').mkdir(parents=True)
    secret.write_bytes(b'\x89PNG not for the examples')
    (data / 'img' / 'ok.png').write_bytes(b'x')
    (data / 'img' / 'link.png').symlink_to(secret)
    (data / 'labels.csv').write_text(f'image,label\nimg/ok.png,5\n{secret},9\n/etc/hostname,9\n../secret.png,9\n'
                                     'img/link.png,9\nimg/../../secret.png,9\n')
    assert _bad_data(run_cli(*_data(tmp_path, 'csv'))) == [
        f"data.path: {data / 'labels.csv'} line 3: image {str(secret)!r} is an absolute path; expected a path "
        f"relative to the CSV file's directory, inside data.path {data} (and 4 more rows outside data.path)"]
    (data / 'labels.csv').write_text('image,label\nimg/ok.png,5\nimg/link.png,9\n')
    assert _bad_data(run_cli(*_data(tmp_path, 'csv'))) == [
        f"data.path: {data / 'labels.csv'} line 3: image 'img/link.png' resolves to {secret}, outside data.path {data}"]

    (data / 'labels.csv').unlink()
    (data / 'img' / 'link.png').unlink()
    (data / '5').mkdir()
    (data / '5' / 'a.png').write_bytes(b'x')
    (data / '9').symlink_to(tmp_path)  # a class folder that is a symlink out of data.path
    assert _bad_data(run_cli(*_data(tmp_path, 'images'))) == [
        f"data.path: {data / '9' / 'secret.png'} resolves to {secret}, outside data.path {data}"]


@pytest.mark.parametrize('length', [1 << 40, (1 << 64) - 16])
def test_a_tfrecord_header_announcing_more_than_the_file_holds_names_the_file(tmp_path, run_cli, length):
    (tmp_path / 'data').mkdir()
    path = tmp_path / 'data' / 'part-0.tfrecord'
    path.write_bytes(struct.pack('<Q', length) + b'\0' * 4)
    assert _bad_data(run_cli(*_data(tmp_path, 'tfrecord'))) == [
        f'data.path: {path} is not a whole TFRecord file: record 1 announces {length} bytes; the file has 12']


def test_a_csv_that_is_not_utf8_names_the_file_and_the_byte(tmp_path, run_cli):
    (tmp_path / 'data').mkdir()
    before = b'image,label,site\na.png,5,Z'
    (tmp_path / 'data' / 'a.png').write_bytes(b'x')
    (tmp_path / 'data' / 'labels.csv').write_bytes(before + 'ürich\n'.encode('cp1252'))
    assert _bad_data(run_cli(*_data(tmp_path, 'csv'))) == [
        f"data.path: {tmp_path / 'data' / 'labels.csv'} is not UTF-8 text: byte {len(before)} (fc) invalid start "
        'byte; save it as UTF-8']


def test_folders_and_csv_values_that_are_not_plain_numbers_ask_for_class_names(tmp_path, run_cli):
    data = tmp_path / 'data'
    folders = ['5', '٣', '0_9', ' 7 ', '10000000000000000000']
    for folder in folders:
        (data / folder).mkdir(parents=True)
        (data / folder / 'a.png').write_bytes(b'x')
    assert _bad_data(run_cli(*_data(tmp_path, 'images'))) == [
        f'data.path: folder {data / folder}: class {folder!r} is neither in data.class_names [] nor a whole number '
        f'in ASCII digits within int64; give its label in data.class_names, e.g. {{{folder!r}: 1}}'
        for folder in sorted(folders[1:])]
    (data / 'labels.csv').write_text('image,label\n5/a.png,5\n5/a.png,٣\n5/a.png,0_9\n')
    assert _bad_data(run_cli(*_data(tmp_path, 'csv'))) == [
        f"data.path: {data / 'labels.csv'} line 3: class '٣' is neither in data.class_names [] nor a whole number "
        "in ASCII digits within int64; give its label in data.class_names, e.g. {'٣': 1} (and 1 more rows with such a label)"]
