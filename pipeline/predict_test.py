import os
import warnings

import pytest
from PIL import Image

from components.training.images_test import huge_header_png
from pipeline import predict

LIMIT = 50_000_000


def _png(path, width: int, height: int) -> str:
    Image.new('L', (width, height)).save(path)
    return str(path)


def test_an_image_over_the_limit_is_named_with_its_size_from_the_header_and_pillow_stays_quiet(tmp_path):
    """20000x20000 is over twice Pillow's own limit, where Image.open raises DecompressionBombError;
    here the file gets its line instead, and Pillow's limit is as it was."""
    crafted = tmp_path / 'huge.png'
    crafted.write_bytes(huge_header_png(20000, 20000))
    pillow_limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert predict.unreadable([str(crafted)], LIMIT) == [
            f'{crafted}: 20000x20000 pixels is over data.max_image_pixels 50000000']
        small = _png(tmp_path / 'small.png', 64, 64)
        assert predict.unreadable([small], 64 * 64) == []
        assert predict.unreadable([small], 64 * 64 - 1) == [
            f'{small}: 64x64 pixels is over data.max_image_pixels 4095']
    assert Image.MAX_IMAGE_PIXELS == pillow_limit


def test_anything_but_a_regular_file_is_refused_without_opening_it(tmp_path):
    """A FIFO with no writer would block open() forever; this returns at once."""
    fifo = tmp_path / 'fifo.png'
    os.mkfifo(fifo)
    folder = tmp_path / 'folder.png'
    folder.mkdir()
    files = [str(fifo), str(folder), '/dev/null', str(tmp_path / 'missing.png')]
    assert predict.unreadable(files, LIMIT) == [
        f'{fifo}: not a regular file (a FIFO); expected an image file',
        f'{folder}: not a regular file (a directory); expected an image file',
        '/dev/null: not a regular file (a character device); expected an image file',
        f'{tmp_path / "missing.png"}: cannot read it as an image (no such file)']


@pytest.mark.parametrize('content, reason', [(b'', 'cannot identify image file'), (b'text', 'cannot identify image file')])
def test_a_file_that_is_not_an_image_is_named(tmp_path, content, reason):
    path = tmp_path / 'x.png'
    path.write_bytes(content)
    [line] = predict.unreadable([str(path)], LIMIT)
    assert line.startswith(f'{path}: cannot read it as an image ({reason}')
