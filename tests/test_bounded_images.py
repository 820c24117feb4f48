"""Images over data.max_image_pixels against the model the session's first run pushed (exported
with the default limit, 50 million pixels): the serving signature refuses them without decoding,
and `predict` names them, as it names anything that is not a regular file, without a traceback."""

import os
import struct
import threading
import time
import zlib

import pytest

from tests.conftest import CONFIG

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group('default_run')]


def _huge_header_png(width: int, height: int) -> bytes:
    from components.training.images_test import huge_header_png

    return huge_header_png(width, height)


def _pushed(first_run) -> str:
    assert first_run.lines[-1].startswith('pushed: '), first_run.lines[-5:]
    return first_run.lines[-1][len('pushed: '):]


def _zero_png(width: int, height: int) -> bytes:
    """A valid all-black 8-bit grey PNG, compressed about 1000:1 (20000x20000: 389 KB, 400 MB decoded)."""
    compressor = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0, then the row
    data = b''.join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack('>I', len(body)) + kind + body + struct.pack('>I', zlib.crc32(kind + body))

    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0))
            + chunk(b'IDAT', data) + chunk(b'IEND', b''))


def _peak_rss_mb_since_reset():
    """Linux: resets this process's peak resident set size (VmHWM); returns a function that gives
    how far the peak has risen above the resident size at the reset, in MB."""
    def status(key):
        with open('/proc/self/status') as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key)) / 1024

    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')
    start = status('VmRSS:')
    return lambda: status('VmHWM:') - start


def test_the_serving_signature_refuses_an_oversize_image_without_decoding_it(first_run):
    """A 73-byte file announcing 20000x20000 pixels, and a valid 389 KB one that decodes to 400 MB
    (as float32 for resizing, 1.6 GB): each is refused at once, naming the limit, and the peak
    memory does not move by the size of the image."""
    import tensorflow as tf

    serve = tf.saved_model.load(_pushed(first_run)).signatures['serving_default']

    def example(image: bytes) -> bytes:
        return tf.train.Example(features=tf.train.Features(feature={
            'image': tf.train.Feature(bytes_list=tf.train.BytesList(value=[image]))})).SerializeToString()

    for image in (_huge_header_png(20000, 20000), _zero_png(20000, 20000)):
        peak = _peak_rss_mb_since_reset()
        started = time.monotonic()
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match=r'20000x20000 pixels is over data\.max_image_pixels 50000000'):
            serve(examples=tf.constant([example(image)]))
        assert time.monotonic() - started < 3
        assert peak() < 100, f'peak memory rose by {peak():.0f} MB'


def _predict(run_cli, first_run, *args):
    return run_cli('predict', '--config', CONFIG, '--set', f'pipeline.runs_dir={os.path.dirname(first_run.run_dir)}',
                   *args)


def test_predict_names_an_oversize_image_with_exit_2_and_no_traceback(first_run, run_cli, tmp_path):
    crafted = tmp_path / 'huge.png'
    crafted.write_bytes(_huge_header_png(20000, 20000))
    result = _predict(run_cli, first_run, str(crafted))
    assert (result.returncode, result.stdout) == (2, '')
    assert result.stderr.splitlines() == [
        f'cannot predict: {crafted}: 20000x20000 pixels is over data.max_image_pixels 50000000']


def test_predict_names_an_image_the_served_model_refuses_when_the_config_allows_more(first_run, run_cli, tmp_path):
    """The model in production was trained, and so serves, with the default limit: a config that
    allows more lets Pillow read a 51-megapixel image, and the model's own refusal is named."""
    large = tmp_path / 'large.png'
    large.write_bytes(_zero_png(7200, 7100))
    result = _predict(run_cli, first_run, '--set', 'data.max_image_pixels=60000000', str(large))
    assert (result.returncode, result.stdout) == (2, '')
    assert result.stderr.splitlines() == [
        f'cannot predict: {large}: the served model refuses it (7200x7100 pixels is over data.max_image_pixels 50000000)']


def test_predict_refuses_a_fifo_and_a_directory_at_once(first_run, run_cli, tmp_path):
    """Opening a FIFO nobody writes to blocks forever: predict must not open it."""
    fifo, folder = tmp_path / 'fifo.png', tmp_path / 'folder.png'
    os.mkfifo(fifo)
    folder.mkdir()
    done = {}
    worker = threading.Thread(target=lambda: done.update(result=_predict(run_cli, first_run, str(fifo), str(folder))),
                              daemon=True)
    worker.start()
    worker.join(timeout=20)
    if worker.is_alive():  # blocked in open(): a writer releases it, and the test fails
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail('predict blocked on the FIFO')
    result = done['result']
    assert (result.returncode, result.stdout) == (2, '')
    assert result.stderr.splitlines() == [
        f'cannot predict: {fifo}: not a regular file (a FIFO); expected an image file',
        f'cannot predict: {folder}: not a regular file (a directory); expected an image file']
