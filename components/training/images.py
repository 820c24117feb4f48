"""Images between Transform and the model.

Transform decodes each image once, resizes it to `model.input` and stores it encoded again: as
JPEG (quality JPEG_QUALITY) when the source was a JPEG, as PNG (lossless) otherwise. The Trainer's
input pipeline and the serving signature both turn that into pixels with `decode`, so training and
serving see the same values, and the model scales them itself (its first layer).

Why encoded, not pixels: pixels are several times a JPEG's bytes as uint8, and four times more
as float32, and every epoch reads them back; re-encoded, an image stays close to its source's size
and the input pipeline decodes it in parallel with training (`make bench` prints both figures;
README "Speed" gives them). A source larger than the model's input shrinks.
Chroma is kept at full resolution: colour detail is what JPEG's default subsampling loses.

Before it decodes, resize_and_encode reads the image's size from its header (`header_size`) and
refuses one over `data.max_image_pixels`: a 389 KB PNG can announce 20000x20000 pixels, which
tf.io.decode_image would allocate (400 MB) and resizing would turn into 1.6 GB of float32, in
Transform and, through the transform graph, in the serving signature. TensorFlow has no op that
reads PNG, GIF or BMP dimensions without decoding (tf.image.extract_jpeg_shape does it for JPEG
only), so the header is read here, with string ops.
"""

import functools

import tensorflow as tf

JPEG_QUALITY = 95
# tf.io.decode_image tells its formats apart by their first bytes: this, \xff\xd8\xff, GIF, BM.
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_HEADER_BYTES = 26  # enough for PNG's IHDR (width at 16, height at 20) and BMP's (18, 22)


def _bytes(data: tf.Tensor, position, count: int) -> tf.Tensor:
    """`count` bytes of `data` from `position` as int64 [count]; zeros past its end."""
    position = tf.minimum(tf.cast(position, tf.int64), tf.cast(tf.strings.length(data), tf.int64))
    piece = tf.strings.join([tf.strings.substr(data, position, count), b'\0' * count])
    values = tf.io.decode_raw(tf.strings.substr(piece, 0, count), tf.uint8)
    return tf.reshape(tf.cast(values, tf.int64), [count])


def _big_endian(b: tf.Tensor, start: int) -> tf.Tensor:
    return ((b[start] * 256 + b[start + 1]) * 256 + b[start + 2]) * 256 + b[start + 3]


def _little_endian(b: tf.Tensor, start: int, count: int) -> tf.Tensor:
    value = tf.constant(0, tf.int64)
    for i in reversed(range(count)):
        value = value * 256 + b[start + i]
    return value


def _gif_size(data: tf.Tensor) -> tf.Tensor:
    """[width, height] of the canvas TensorFlow decodes a GIF onto: the largest extent of any of
    its frames (measured with TF 2.16: the logical screen size in the header is not used, and a
    later frame larger than the first enlarges the canvas even with expand_animations=False), so
    every frame's image descriptor is read, skipping the data blocks between them."""
    length = tf.cast(tf.strings.length(data), tf.int64)
    flags = _bytes(data, 10, 1)[0]
    global_colours = tf.where(flags >= 128, 3 * tf.bitwise.left_shift(tf.constant(2, tf.int64), flags % 8), 0)

    def step(position, in_data_blocks, width, height, done):
        b = _bytes(data, position, 10)
        # In a run of data sub-blocks, b[0] is the next one's length; 0 ends the run.
        after_block = position + b[0] + 1
        # Else a block starts: 0x21 an extension (its label, then sub-blocks), 0x2C an image
        # descriptor (left, top, width, height, flags; then its colour table and the LZW code
        # size before the sub-blocks), anything else (0x3B: the trailer) the end.
        local_colours = tf.where(b[9] >= 128, 3 * tf.bitwise.left_shift(tf.constant(2, tf.int64), b[9] % 8), 0)
        is_extension, is_image = tf.equal(b[0], 0x21), tf.equal(b[0], 0x2C)
        next_position = tf.where(in_data_blocks, after_block,
                                 tf.where(is_extension, position + 2, position + 11 + local_colours))
        image = tf.logical_and(tf.logical_not(in_data_blocks), is_image)
        width = tf.where(image, tf.maximum(width, _little_endian(b, 1, 2) + _little_endian(b, 5, 2)), width)
        height = tf.where(image, tf.maximum(height, _little_endian(b, 3, 2) + _little_endian(b, 7, 2)), height)
        ends = tf.logical_and(tf.logical_not(in_data_blocks), tf.logical_not(is_extension | is_image))
        return (next_position, tf.where(in_data_blocks, tf.not_equal(b[0], 0), tf.logical_not(ends)),
                width, height, ends)

    zero = tf.constant(0, tf.int64)
    _, _, width, height, _ = tf.while_loop(
        lambda position, in_data_blocks, width, height, done: tf.logical_and(tf.logical_not(done), position < length),
        step, (13 + global_colours, tf.constant(False), zero, zero, tf.constant(False)))
    return tf.stack([width, height])


def header_size(data: tf.Tensor) -> tf.Tensor:
    """One encoded image (a scalar string) -> int64 [width, height], the pixels tf.io.decode_image
    would allocate, read from the header without decoding. [0, 0] for a format decode_image does
    not know (it then fails on its own); a JPEG whose header does not parse fails here, as its
    decoding would."""
    head = _bytes(data, 0, _HEADER_BYTES)
    start = tf.strings.substr(tf.strings.join([data, b'\0' * 16]), 0, 16)
    is_png = tf.logical_and(tf.equal(tf.strings.substr(start, 0, 8), _PNG_SIGNATURE),
                            tf.equal(tf.strings.substr(start, 12, 4), b'IHDR'))

    def bmp():
        # Signed 32-bit; a negative height means the rows are stored top-down.
        size = tf.stack([_little_endian(head, 18, 4), _little_endian(head, 22, 4)])
        return tf.abs(tf.where(size >= 2 ** 31, size - 2 ** 32, size))

    def jpeg():
        height_width = tf.cast(tf.image.extract_jpeg_shape(data)[:2], tf.int64)
        return tf.reverse(height_width, [0])

    return tf.case([
        (tf.io.is_jpeg(data), jpeg),
        (is_png, lambda: tf.stack([_big_endian(head, 16), _big_endian(head, 20)])),
        (tf.equal(tf.strings.substr(start, 0, 3), b'GIF'), lambda: _gif_size(data)),
        (tf.equal(tf.strings.substr(start, 0, 2), b'BM'), bmp),
    ], default=lambda: tf.zeros([2], tf.int64), exclusive=True)


def check_size(data: tf.Tensor, max_pixels: int) -> tf.Operation:
    """An op that fails with InvalidArgument, naming the size and the limit, when the image
    `data` (a scalar string) has more than `max_pixels` pixels by its header."""
    size = header_size(data)
    return tf.debugging.Assert(
        size[0] * size[1] <= max_pixels,
        [tf.strings.join([tf.strings.as_string(size[0]), 'x', tf.strings.as_string(size[1]),
                          f' pixels is over data.max_image_pixels {max_pixels}'])])


@functools.cache
def _measure_and_decode():
    def measure_and_decode(data, max_pixels):
        size = header_size(data)
        decoded = tf.cond(size[0] * size[1] <= max_pixels,
                          lambda: tf.size(tf.io.decode_image(data, expand_animations=False)) >= 0,
                          lambda: tf.constant(False))
        return size, decoded

    return tf.function(measure_and_decode, autograph=False,
                       input_signature=[tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int64)])


def measure_and_decode(data: bytes, max_pixels: int) -> tuple[int, int]:
    """(width, height) of encoded `data` by its header; when that is at most `max_pixels` pixels,
    the image is decoded too, and tf.errors.InvalidArgumentError (or UnimplementedError) says that
    it does not decode. One function traced once per process, so that each image costs one call
    (the data gate checks every image this way)."""
    size, _ = _measure_and_decode()(tf.constant(data), tf.constant(max_pixels, tf.int64))
    width, height = size.numpy().tolist()
    return width, height


def resize_and_encode(encoded: tf.Tensor, height: int, width: int, channels: int, max_pixels: int) -> tf.Tensor:
    """Encoded PNG/JPEG/GIF/BMP strings [batch] -> the images resized to height x width with
    `channels` channels, encoded as JPEG where the source was one and as PNG otherwise [batch].
    An image of more than `max_pixels` pixels fails with InvalidArgument before it is decoded."""

    def one(data):
        with tf.control_dependencies([check_size(data, max_pixels)]):
            image = tf.io.decode_image(data, channels=channels, expand_animations=False)
        resized = tf.image.resize(image, [height, width])  # float32, 0-255
        pixels = tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)
        return tf.cond(tf.io.is_jpeg(data),
                       lambda: tf.io.encode_jpeg(pixels, quality=JPEG_QUALITY, chroma_downsampling=False),
                       lambda: tf.io.encode_png(pixels))

    return tf.map_fn(one, encoded, fn_output_signature=tf.TensorSpec([], tf.string))


def decode(encoded: tf.Tensor, height: int, width: int, channels: int) -> tf.Tensor:
    """What resize_and_encode wrote [batch] -> float32 pixels [batch, height, width, channels], 0-255."""

    def one(data):
        image = tf.io.decode_image(data, channels=channels, expand_animations=False)
        image.set_shape([height, width, channels])
        return tf.cast(image, tf.float32)

    return tf.map_fn(one, tf.reshape(encoded, [-1]),
                     fn_output_signature=tf.TensorSpec([height, width, channels], tf.float32))
