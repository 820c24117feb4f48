import io
import struct
import time
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from components.training import digits, images

LIMIT = 50_000_000


def huge_header_png(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose header announces width x height 8-bit grey pixels: a
    valid signature and IHDR, then one tiny IDAT (far too little data for that size)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))

    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0))
            + chunk(b'IDAT', zlib.compress(bytes(64))) + chunk(b'IEND', b''))


def _jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format='JPEG', quality=quality)
    return buffer.getvalue()


def _photo(size: int) -> np.ndarray:
    """A crop of one of scikit-learn's sample photographs, RGB uint8 [size, size, 3]."""
    from sklearn.datasets import load_sample_images

    return load_sample_images().images[0][100:100 + size, 200:200 + size]


def test_a_png_at_the_model_size_comes_back_pixel_for_pixel():
    pictures, _ = digits.load_digits_images((3,))
    encoded = images.resize_and_encode(tf.constant([digits.encode_png(p) for p in pictures[:4]]), 8, 8, 1, LIMIT)
    assert all(tf.io.is_jpeg(e) == False for e in encoded)  # noqa: E712 - lossless sources stay PNG
    decoded = images.decode(encoded, 8, 8, 1).numpy()
    assert decoded.shape == (4, 8, 8, 1) and decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded[..., 0], pictures[:4])


def test_a_jpeg_is_resized_and_stays_a_jpeg_close_to_the_source():
    photo = _photo(160)
    encoded = images.resize_and_encode(tf.constant([_jpeg(photo)]), 96, 96, 3, LIMIT)
    assert bool(tf.io.is_jpeg(encoded[0]))
    decoded = images.decode(encoded, 96, 96, 3).numpy()[0]
    assert decoded.shape == (96, 96, 3) and 0 <= decoded.min() and decoded.max() <= 255
    # Against the source decoded and resized in float (what the model would see without storage):
    # 37.9 dB on this textured crop at quality 95; quality 75 would give 29.8 dB.
    expected = tf.image.resize(tf.io.decode_jpeg(_jpeg(photo)), [96, 96]).numpy()
    assert 10 * np.log10(255 ** 2 / np.mean((decoded - expected) ** 2)) > 35


def test_grayscale_becomes_rgb_and_rgb_grayscale_when_the_model_asks():
    pictures, _ = digits.load_digits_images((3,))
    rgb = images.decode(images.resize_and_encode(tf.constant([digits.encode_png(pictures[0])]), 16, 16, 3, LIMIT),
                                                 16, 16, 3)
    assert rgb.shape == (1, 16, 16, 3)
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
    gray = images.decode(images.resize_and_encode(tf.constant([_jpeg(_photo(64))]), 32, 32, 1, LIMIT), 32, 32, 1)
    assert gray.shape == (1, 32, 32, 1)


def test_a_stored_photo_stays_well_below_three_times_its_source_jpeg():
    photo = _photo(224)
    source = _jpeg(photo)
    stored = images.resize_and_encode(tf.constant([source]), 224, 224, 3, LIMIT).numpy()[0]
    assert len(stored) < 2 * len(source)


_header_size = tf.function(images.header_size, input_signature=[tf.TensorSpec([], tf.string)], autograph=False)


def _size(data: bytes) -> tuple[int, int]:
    width, height = _header_size(tf.constant(data)).numpy().tolist()
    return width, height


def _encoded(width: int, height: int, mode: str, **save) -> bytes:
    shape = (height, width, 3) if mode == 'RGB' else (height, width)
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(width * height).integers(0, 255, shape, np.uint8), mode).save(buffer, **save)
    return buffer.getvalue()


@pytest.mark.parametrize('save', [{'format': 'PNG'}, {'format': 'JPEG'}, {'format': 'JPEG', 'progressive': True},
                                  {'format': 'GIF'}, {'format': 'BMP'}], ids=lambda save: '-'.join(map(str, save.values())))
def test_the_header_gives_the_size_pillow_writes_and_tensorflow_decodes(save):
    for width, height in ((1, 1), (37, 5), (3, 700), (640, 480)):
        for mode in ('L', 'RGB'):
            data = _encoded(width, height, mode, **save)
            decoded = tf.io.decode_image(data, expand_animations=False).shape
            assert _size(data) == (width, height) == (decoded[1], decoded[0]), (width, height, mode)


def test_a_bmp_stored_top_down_has_its_height_read_positive():
    data = bytearray(_encoded(20, 10, 'RGB', format='BMP'))
    data[22:26] = struct.pack('<i', -10)
    assert _size(bytes(data)) == (20, 10) == tf.io.decode_image(bytes(data)).shape[1::-1]


def _gif_blocks(data: bytes) -> tuple[bytes, list[bytes]]:
    """(header with its colour table, [each block up to the trailer]) of a GIF."""
    table = 3 * 2 ** ((data[10] & 7) + 1) if data[10] & 0x80 else 0
    position, blocks = 13 + table, []
    while data[position] != 0x3B:
        start = position
        if data[position] == 0x21:
            position += 2
        else:
            flags = data[position + 9]
            position += 11 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
        while data[position]:
            position += data[position] + 1
        blocks.append(data[start:position + 1])
        position += 1
    return data[:13 + table], blocks


def test_a_gif_s_size_is_its_largest_frame_as_tensorflow_decodes_it_not_its_screen():
    """TensorFlow decodes a GIF onto a canvas as large as its largest frame, whatever its header's
    logical screen says and even when it returns the first frame only."""
    small = _encoded(30, 20, 'L', format='GIF', optimize=False)  # one grey palette in both
    large = _encoded(300, 200, 'L', format='GIF', optimize=False)
    header, small_blocks = _gif_blocks(small)
    _, large_blocks = _gif_blocks(large)
    two = header + b''.join(small_blocks + large_blocks) + b';'
    assert tf.io.decode_image(two, expand_animations=False).shape == (200, 300, 3)
    assert _size(two) == (300, 200)
    screen_says_huge = bytearray(small)
    screen_says_huge[6:10] = struct.pack('<HH', 60000, 60000)
    assert _size(bytes(screen_says_huge)) == (30, 20)
    # A frame's offset does not enlarge the canvas either: 300x200 placed at (60000, 60000).
    moved = bytearray(large_blocks[-1])
    moved[1:5] = struct.pack('<HH', 60000, 60000)
    offset = header + b''.join(small_blocks) + bytes(moved) + b';'
    assert _size(offset) == (300, 200) == tf.io.decode_image(offset, expand_animations=False).shape[1::-1]


def _small(save_format: str, mode: str = 'L') -> bytes:
    """A 8x6 image (width x height) in `save_format`."""
    pixels = np.arange(48 * len(mode), dtype=np.uint8).reshape((6, 8, len(mode))[:2 if mode == 'L' else 3])
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, format=save_format)
    return buffer.getvalue()


def _gif_of_one_byte_comments(count: int) -> bytes:
    """A 8x6 GIF with one comment extension of `count` 1-byte sub-blocks before its image."""
    header, blocks = _gif_blocks(_small('GIF'))
    return header + b'\x21\xfe' + b'\x01x' * count + b'\x00' + b''.join(blocks) + b';'


def _png_of_many_chunks(count: int) -> bytes:
    """A 8x6 PNG with `count` tEXt chunks between IHDR and IDAT."""
    png = _small('PNG')
    text = struct.pack('>I', 3) + b'tEXtk\0v' + struct.pack('>I', zlib.crc32(b'tEXtk\0v'))
    return png[:33] + text * count + png[33:]


def _jpeg_of_many_markers(count: int) -> bytes:
    """A 8x6 JPEG with `count` COM segments, then as many APP15, between SOI and its frame."""
    jpeg = _small('JPEG', 'RGB')
    return jpeg[:2] + b'\xff\xfe\x00\x03x' * count + b'\xff\xef\x00\x03x' * count + jpeg[2:]


def _fastest_of_three(function, data: bytes) -> float:
    """Seconds of the fastest of three calls of a traced tf.function on `data`."""
    function(tf.constant(data))
    times = []
    for _ in range(3):
        started = time.perf_counter()
        function(tf.constant(data))
        times.append(time.perf_counter() - started)
    return min(times)


@pytest.mark.parametrize('hostile', [lambda: _gif_of_one_byte_comments(100_000),
                                     lambda: _png_of_many_chunks(50_000),
                                     lambda: _jpeg_of_many_markers(5_000)], ids=['gif', 'png', 'jpeg'])
def test_a_header_behind_many_small_blocks_is_read_in_time_bounded_by_the_byte_length(hostile):
    """A loop with one iteration per block would take seconds on these (2.7 s on the GIF, 15 s
    in the serving signature); each has its size read in under 0.1 s."""
    data = hostile()
    assert len(data) > 50_000
    assert _size(data) == (8, 6) == tf.io.decode_image(data, expand_animations=False).shape[1::-1]
    assert _fastest_of_three(_header_size, data) < 0.1


def test_a_small_file_with_a_huge_header_is_measured_without_decoding():
    data = huge_header_png(100000, 100000)
    assert len(data) < 200
    assert _size(data) == (100000, 100000)
    assert _size(b'not an image') == _size(b'') == (0, 0)


def test_an_image_over_the_limit_is_refused_naming_its_size_and_the_limit_before_it_is_decoded():
    """The crafted file: decoding it would fail with TensorFlow's own "Invalid PNG data"; the
    refusal names the size instead, so the decoder never ran. In a graph (Transform, serving)
    as in eager."""
    crafted = tf.constant([digits.encode_png(np.zeros((8, 8), np.uint8)), huge_header_png(20000, 20000)])
    graph = tf.function(lambda encoded: images.resize_and_encode(encoded, 8, 8, 1, LIMIT))
    for run in (graph, lambda encoded: images.resize_and_encode(encoded, 8, 8, 1, LIMIT)):
        started = time.monotonic()
        with pytest.raises(tf.errors.InvalidArgumentError, match='20000x20000 pixels is over data.max_image_pixels 50000000'):
            run(crafted)
        assert time.monotonic() - started < 5
    # The limit is inclusive: a 64x64 image passes a limit of 4096 pixels and fails one of 4095.
    photo = tf.constant([_jpeg(_photo(64))])
    assert images.resize_and_encode(photo, 8, 8, 3, 64 * 64).shape == (1,)
    with pytest.raises(tf.errors.InvalidArgumentError, match='64x64 pixels is over data.max_image_pixels 4095'):
        images.resize_and_encode(photo, 8, 8, 3, 64 * 64 - 1)


def test_the_data_gate_s_single_call_measures_every_image_and_decodes_those_within_the_limit():
    photo = _jpeg(_photo(64))
    assert images.measure_and_decode(photo, 64 * 64) == images.measure_and_decode(photo, 1) == (64, 64)
    assert images.measure_and_decode(huge_header_png(20000, 20000), LIMIT) == (20000, 20000)  # not decoded
    with pytest.raises(tf.errors.InvalidArgumentError):
        images.measure_and_decode(huge_header_png(7000, 7000), LIMIT)  # decoded: too little data
    with pytest.raises(tf.errors.InvalidArgumentError):
        images.measure_and_decode(photo[:len(photo) // 2], LIMIT)


def _asymmetric() -> np.ndarray:
    """RGB uint8 [48, 80, 3], smooth (JPEG keeps it closely) and unlike any of its mirror images
    or rotations: gradients along both axes and a red block in the top-left corner."""
    rows, columns = np.mgrid[0:48, 0:80]
    pixels = np.stack([columns * 3, rows * 5, 128 + rows - columns], -1).astype(np.uint8)
    pixels[:8, :16] = (255, 0, 0)
    return pixels


def _jpeg_with_orientation(pixels: np.ndarray, orientation: int, endian: str = '>') -> bytes:
    """A JPEG of `pixels` as stored, with an EXIF IFD0 (in Pillow's default big-endian byte order,
    or '<' as most cameras write) holding a camera model and then `orientation`."""
    exif = Image.Exif()
    exif.endian = endian
    exif[0x0110] = 'Phone'
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, 'JPEG', exif=exif.tobytes(), quality=95)
    return buffer.getvalue()


def _displayed(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """`pixels` turned as Pillow's ImageOps.exif_transpose turns an image of that orientation."""
    image = Image.fromarray(pixels)
    image.getexif()[0x0112] = orientation
    return np.asarray(ImageOps.exif_transpose(image))


def _difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two images of one shape, in pixel values 0-255."""
    assert a.shape == b.shape
    return float(np.mean(np.abs(a.astype(np.float32) - b.astype(np.float32))))


_decode_oriented = tf.function(lambda data: images.decode_oriented(data, 3), autograph=False,
                               input_signature=[tf.TensorSpec([], tf.string)])


@pytest.mark.parametrize('endian', ['>', '<'], ids=['big-endian', 'little-endian'])
def test_a_jpeg_is_decoded_as_its_exif_orientation_says_it_is_seen(endian):
    """For each of the 8 orientations: the pixels a camera stored sideways or mirrored, with the
    tag, decode as the turned pixels saved plainly do (JPEG's loss aside), in a graph as in eager."""
    pixels = _asymmetric()
    expected = {k: tf.io.decode_image(_jpeg(_displayed(pixels, k), quality=95)).numpy() for k in range(1, 9)}
    for k in range(1, 9):
        data = _jpeg_with_orientation(pixels, k, endian)
        for decoded in (images.decode_oriented(tf.constant(data), 3), _decode_oriented(tf.constant(data))):
            decoded = decoded.numpy()
            assert decoded.dtype == np.uint8
            assert decoded.shape == expected[k].shape == ((48, 80, 3) if k < 5 else (80, 48, 3))
            assert _difference(decoded, expected[k]) < 1, k
            # Every other orientation of the same shape is far from it, so a wrong turn shows.
            assert all(_difference(decoded, expected[j]) > 20 for j in expected
                       if j != k and expected[j].shape == decoded.shape), k


def _with_segment(jpeg: bytes, marker: int, body: bytes) -> bytes:
    """`jpeg` with a segment (marker, length, body) inserted right after its SOI."""
    return jpeg[:2] + bytes([0xFF, marker]) + struct.pack('>H', len(body) + 2) + body + jpeg[2:]


def test_an_orientation_that_is_missing_malformed_or_not_in_a_jpeg_leaves_the_image_as_stored():
    pixels = _asymmetric()
    plain = _jpeg(pixels, quality=95)
    stored = tf.io.decode_image(plain).numpy()
    sideways = _jpeg_with_orientation(pixels, 6)
    at = sideways.index(b'Exif\0\0')  # the APP1 segment's body; TIFF header at + 6, IFD0 at + 14
    exif_body = sideways[at:at + 256 * sideways[at - 2] + sideways[at - 1] - 2]  # its length counts itself
    entry = b'\x01\x12\0\x03\0\0\0\x01\0\x06'  # Orientation, SHORT, 1 value: 6

    def patched(offset: int, value: bytes) -> bytes:
        return sideways[:at + offset] + value + sideways[at + offset + len(value):]

    cases = {
        'no EXIF': plain,
        'APP1 of garbage': _with_segment(plain, 0xE1, b'Exif\0\0' + bytes(range(40))),
        'byte order neither II nor MM': patched(6, b'XX'),
        'not TIFF (42)': patched(8, b'\0\x2b'),
        'IFD0 past the segment': patched(10, struct.pack('>I', 4000)),
        'orientation 0': sideways.replace(entry, entry[:-1] + b'\0'),
        'orientation 9': sideways.replace(entry, entry[:-1] + b'\x09'),
        'orientation as a LONG': sideways.replace(entry, entry[:3] + b'\x04' + entry[4:]),
        'Exif after SOS': plain[:-2] + b'\xff\xe1' + struct.pack('>H', len(exif_body) + 2) + exif_body + plain[-2:],
    }
    for name, data in cases.items():
        assert tf.io.decode_image(data).shape == stored.shape, name
        np.testing.assert_array_equal(_decode_oriented(tf.constant(data)).numpy(), stored, err_msg=name)
    # A file cut anywhere before the orientation's last byte, or none, reads 1 (the decoder then fails).
    orientation = tf.function(images._exif_orientation, input_signature=[tf.TensorSpec([], tf.string)], autograph=False)
    for end in range(sideways.index(entry) + len(entry)):
        assert orientation(tf.constant(sideways[:end])) == 1, end
    # Other segments before Exif's (an XMP APP1, a comment, an ICC-like APP2) are skipped over.
    behind = _with_segment(_with_segment(_with_segment(sideways, 0xE2, bytes(300)), 0xFE, b'a comment'),
                           0xE1, b'http://ns.adobe.com/xap/1.0/\0<x/>')
    assert _decode_oriented(tf.constant(behind)).shape == (80, 48, 3)
    # A PNG's eXIf chunk is not read (Pillow's exif_transpose would turn it).
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, 'PNG', exif=exif.tobytes())
    assert b'eXIf' in buffer.getvalue()
    np.testing.assert_array_equal(_decode_oriented(tf.constant(buffer.getvalue())).numpy(), pixels)


def test_transform_stores_a_photo_upright_and_what_it_stored_is_not_turned_again():
    pixels = _asymmetric()
    sources = [_jpeg_with_orientation(pixels, 8), _jpeg(_displayed(pixels, 8), quality=95)]
    stored = images.resize_and_encode(tf.constant(sources), 80, 48, 3, LIMIT)
    upright, turned_before_saving = images.decode(stored, 80, 48, 3).numpy()
    assert _difference(upright, turned_before_saving) < 1.5
    assert _difference(upright, _displayed(pixels, 6)) > 20
    np.testing.assert_array_equal(images.decode_oriented(stored[0], 3).numpy(), upright)


def test_a_tf1_graph_sizes_and_turns_images_as_eager_does():
    """tf.Transform can trace with tf.compat.v1 (force_tf_compat_v1), where == on tensors compares
    their identity."""
    pixels = _asymmetric()
    sources = [_jpeg_with_orientation(pixels, 6, '<'), _gif_of_one_byte_comments(100)]
    expected = images.resize_and_encode(tf.constant(sources), 80, 48, 3, LIMIT)
    with tf.Graph().as_default():
        encoded = tf.compat.v1.placeholder(tf.string, [None])
        graph = [images.header_size(encoded[1]), images.decode(images.resize_and_encode(encoded, 80, 48, 3, LIMIT),
                                                               80, 48, 3)]
        with tf.compat.v1.Session() as session:
            size, decoded = session.run(graph, {encoded: sources})
    assert size.tolist() == [8, 6]
    np.testing.assert_array_equal(decoded, images.decode(expected, 80, 48, 3).numpy())
