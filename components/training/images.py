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

Images are decoded as they are meant to be seen (`decode_oriented`; `prepare_one` is the whole
per-image step): TensorFlow's decoders ignore a JPEG's EXIF orientation (tensorflow#49834), and a
phone photo stored sideways with Orientation 6 would be learnt and served sideways. The tag is read
in the graph, with string ops, so the serving signature, which takes the raw bytes, turns photos as
Transform does, in bounded work: the Exif APP1 segment among the first _EXIF_SEGMENTS segments,
the tag among the first _EXIF_ENTRIES entries of IFD0, in either byte order; missing, malformed or
not a JPEG (a PNG's eXIf chunk is not read) counts as 1, as stored. Measured on 2 cores, in a
tf.function, on a 200x200 JPEG that decodes in 160 us: 60 us more per image as stored, 180 us
more turned a quarter (orientation 6).

Before it decodes, resize_and_encode reads the image's size from its header (`header_size`) and
refuses one over `data.max_image_pixels`: a 389 KB PNG can announce 20000x20000 pixels, which
tf.io.decode_image would allocate (400 MB) and resizing would turn into 1.6 GB of float32, in
Transform and, through the transform graph, in the serving signature. TensorFlow has no op that
reads PNG, GIF or BMP dimensions without decoding (tf.image.extract_jpeg_shape does it for JPEG
only), so the header is read here, with string ops, in time bounded by the file's byte length:
fixed offsets for PNG and BMP, libjpeg's own linear scan of the markers for JPEG, and for a GIF,
whose frames are found only by skipping every block before them, vectorised pointer doubling with
no loop over blocks (`_gif_size`: O(n log n) for n bytes). Measured on 2 cores, in a tf.function:
a 200 KB GIF made of 1-byte comment sub-blocks is read in 15-30 ms, a 2 MB one in 170-260 ms; a
PNG with 50,000 chunks before its image and a JPEG with 10,000 markers before its frame in 1-2 ms.
"""

import functools

import tensorflow as tf

JPEG_QUALITY = 95
# tf.io.decode_image tells its formats apart by their first bytes: this, \xff\xd8\xff, GIF, BM.
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_HEADER_BYTES = 26  # enough for PNG's IHDR (width at 16, height at 20) and BMP's (18, 22)
# JPEG markers that start a segment with a length: not TEM, RSTn, SOI, EOI (none), SOS (entropy-
# coded data follows, no Exif after it), a fill byte 0xFF or a byte that is no marker.
_SEGMENT_WITH_LENGTH = [m >= 0xC0 and not 0xD0 <= m <= 0xDA and m != 0xFF for m in range(256)]
# Bounds of the EXIF scan: cameras and editors put Exif's APP1 first or after JFIF's APP0, and
# the orientation among the first dozen or two entries of IFD0.
_EXIF_SEGMENTS = 8
_EXIF_ENTRIES = 64


# Comparisons below are tf.equal, not ==: outside tf.function in a TF1 graph (tf.compat.v1), ==
# on tensors compares their identity.


def _bytes(data: tf.Tensor, position, count: int) -> tf.Tensor:
    """`count` bytes of `data` from `position` as int64 [count]; zeros outside it."""
    position = tf.clip_by_value(tf.cast(position, tf.int64), 0, tf.cast(tf.strings.length(data), tf.int64))
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


def _colour_table_bytes(flags: tf.Tensor) -> tf.Tensor:
    """Bytes of the colour table a GIF's packed `flags` byte announces (0 when its top bit is clear)."""
    return tf.where(flags >= 128, 3 * tf.bitwise.left_shift(tf.ones_like(flags) * 2, flags % 8), 0)


def _follow(successor: tf.Tensor, *values: tf.Tensor) -> tuple[tf.Tensor, ...]:
    """Pointer doubling. `successor` int32 [c + 1]: each node's successor, every chain strictly
    increasing until a node that is its own successor; `values` each [c + 1, ...]. -> where each
    node's chain ends [c + 1], then each of `values` maximised along every chain (elementwise).
    ceil(log2(c + 1)) steps, each one gather per tensor."""
    count = tf.cast(tf.size(successor), tf.int64) - 1

    def step(reach, successor, values):
        return (reach * 2, tf.gather(successor, successor),
                tuple(tf.maximum(value, tf.gather(value, successor)) for value in values))

    _, successor, values = tf.while_loop(lambda reach, successor, values: reach <= count, step,
                                         (tf.constant(1, tf.int64), successor, values))
    return (successor, *values)


def _gif_size(data: tf.Tensor) -> tf.Tensor:
    """[width, height] of the canvas TensorFlow decodes a GIF onto: the largest width and the
    largest height of any of its frames (measured with TF 2.16: neither the logical screen size in
    the header nor a frame's offset counts, and a later frame larger than the first enlarges the
    canvas even with expand_animations=False).

    Every image descriptor on the chain of blocks from the header is read, skipping the data
    sub-blocks between them, with no loop over blocks or sub-blocks: each position's successor is
    computed for the whole file at once and the chains are followed by pointer doubling. For a
    file of n bytes of which m are 0x21 or 0x2C (the only possible block starts), the cost is
    ceil(log2(n + 1)) gathers over n + 1 positions for the runs of sub-blocks, then
    ceil(log2(m + 1)) pairs of gathers over m + 1 block starts for the chain of blocks: O(n log n),
    whatever the structure; the int32 tables over the positions peak at about 20 bytes per byte of
    the file (measured on 2 cores: a 20 MB GIF of 1-byte sub-blocks, 4.5 s and 424 MB).
    """
    n = tf.strings.length(data)
    # Positions 0..n, n standing for "the end"; the padding lets a descriptor near the end read zeros.
    byte = tf.concat([tf.cast(tf.io.decode_raw(data, tf.uint8), tf.int32), tf.zeros([12], tf.int32)], 0)
    position = tf.range(n + 1)

    # In a run of data sub-blocks, each length byte leads to the next and 0 ends the run.
    length = byte[:n + 1]
    run_end, = _follow(tf.where(tf.equal(length, 0), position, tf.minimum(position + length + 1, n)))

    def after_run(start):
        return tf.minimum(tf.gather(run_end, tf.minimum(start, n)) + 1, n)

    # A block starts with 0x21, an extension (its label, then sub-blocks), or 0x2C, an image
    # descriptor (left, top, width, height as 16-bit little-endian, flags; then its colour table
    # and the LZW code size before the sub-blocks); anything else (0x3B: the trailer) ends the GIF.
    starts = tf.cast(tf.where(tf.equal(length, 0x21) | tf.equal(length, 0x2C))[:, 0], tf.int32)
    blocks = tf.size(starts)

    def at(offset: int) -> tf.Tensor:
        """The byte `offset` after each block start [m]."""
        return tf.gather(byte, starts + offset)

    is_image = tf.equal(at(0), 0x2C)
    next_block = tf.where(is_image, after_run(starts + 11 + _colour_table_bytes(at(9))), after_run(starts + 2))
    size = tf.where(is_image[:, None], tf.stack([at(5) + 256 * at(6), at(7) + 256 * at(8)], 1), 0)

    def block_index(p):
        """Index in `starts` of the block at position(s) p; `blocks` (the end) where none starts."""
        index = tf.searchsorted(starts, p)
        found = tf.equal(tf.gather(tf.concat([starts, [-1]], 0), index), p)
        return tf.where(found, index, blocks)

    _, largest = _follow(tf.concat([block_index(next_block), [blocks]], 0), tf.concat([size, [[0, 0]]], 0))
    first = tf.minimum(13 + _colour_table_bytes(byte[10]), n)
    return tf.cast(largest[block_index(first[None])[0]], tf.int64)


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


def _field_weights(sizes: tuple[int, ...], little_endian: bool) -> list[list[int]]:
    """[sum(sizes), len(sizes)]: bytes [..., sum(sizes)] times this are the unsigned fields of
    these sizes they hold one after the other, in that byte order."""
    rows = []
    for column, size in enumerate(sizes):
        for i in range(size):
            weight = 256 ** (i if little_endian else size - 1 - i)
            rows.append([weight if c == column else 0 for c in range(len(sizes))])
    return rows


def _exif_orientation(data: tf.Tensor) -> tf.Tensor:
    """The EXIF Orientation (tag 0x0112) of a JPEG (a scalar string), int32 1-8; 1 (as stored)
    when there is none, when it is malformed, and for any other format.

    The Exif APP1 segment is looked for among the first _EXIF_SEGMENTS segments after SOI (it
    follows SOI, or JFIF's APP0; the scan stops at the first byte that is not a marker with a
    length, and at SOS), and the tag among the first _EXIF_ENTRIES entries of IFD0, read at once:
    a bounded amount of work, whatever the file."""
    length = tf.cast(tf.strings.length(data), tf.int64)

    def next_segment(position, tiff, segment_end):
        b = _bytes(data, position, 4)  # marker, then the segment's length (big-endian, itself included)
        has_length = tf.equal(b[0], 0xFF) & tf.gather(_SEGMENT_WITH_LENGTH, b[1])
        end = position + 2 + b[2] * 256 + b[3]
        identifier = tf.strings.substr(data, tf.minimum(position + 4, length), 6)
        exif = has_length & tf.equal(b[1], 0xE1) & tf.equal(identifier, b'Exif\0\0')
        return tf.where(has_length, end, -1), tf.where(exif, position + 10, tiff), tf.where(exif, end, segment_end)

    none = tf.constant(-1, tf.int64)
    _, tiff, segment_end = tf.while_loop(lambda position, tiff, _: (position >= 0) & (tiff < 0), next_segment,
                                         (tf.constant(2, tf.int64), none, none), maximum_iterations=_EXIF_SEGMENTS)

    # The TIFF header: byte order (II: little-endian, MM: big-endian), 42, IFD0's offset from it.
    head = _bytes(data, tiff, 8)
    order = head[0] * 256 + head[1]
    little = tf.equal(order, 0x4949)

    def fields(b: tf.Tensor, sizes: tuple[int, ...]) -> tf.Tensor:
        weights = tf.where(little, _field_weights(sizes, True), _field_weights(sizes, False))
        return tf.reduce_sum(b[..., None] * tf.cast(weights, tf.int64), -2)

    _, magic, offset = tf.unstack(fields(head, (2, 2, 4)))
    ifd = tiff + offset
    table = _bytes(data, ifd, 2 + 12 * _EXIF_ENTRIES)  # entry count, then the entries
    # An entry: tag, type (3: SHORT), count, then a single SHORT's value in its first two bytes.
    entries = tf.reshape(table[2:], [_EXIF_ENTRIES, 12])
    tag, kind, count, orientation, _ = tf.unstack(fields(entries, (2, 2, 4, 2, 2)), axis=1)
    index = tf.range(_EXIF_ENTRIES, dtype=tf.int64)
    found = ((index < fields(table[:2], (2,))[0]) & (ifd + 2 + 12 * (index + 1) <= segment_end)
             & tf.equal(tag, 0x0112) & tf.equal(kind, 3) & tf.equal(count, 1) & (orientation >= 1) & (orientation <= 8)
             & tf.io.is_jpeg(data) & (tiff >= 0) & (little | tf.equal(order, 0x4D4D)) & tf.equal(magic, 42))
    return tf.cast(tf.where(tf.reduce_any(found), tf.gather(orientation, tf.argmax(tf.cast(found, tf.int32))), 1),
                   tf.int32)


def _orient(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """Pixels [height, width, channels] as stored -> as displayed, by EXIF `orientation` (1-8):
    [height, width, channels] or, for 5-8, [width, height, channels]. Plain reverses and
    transposes: tf.image.rot90 and its kin add a shape assertion to every branch."""
    def transposed():
        return tf.transpose(image, [1, 0, 2])

    return tf.switch_case(orientation - 1, [
        lambda: image,
        lambda: tf.reverse(image, [1]),  # mirrored left-right
        lambda: tf.reverse(image, [0, 1]),  # turned 180 degrees
        lambda: tf.reverse(image, [0]),  # mirrored top-bottom
        transposed,
        lambda: tf.reverse(transposed(), [1]),  # turned 90 degrees clockwise
        lambda: tf.reverse(transposed(), [0, 1]),  # transposed across the other diagonal
        lambda: tf.reverse(transposed(), [0]),  # turned 90 degrees counter-clockwise
    ])


def decode_oriented(data: tf.Tensor, channels: int) -> tf.Tensor:
    """One encoded PNG/JPEG/GIF/BMP image (a scalar string) -> uint8 pixels [height, width,
    channels] as it is meant to be seen: a JPEG turned by its EXIF orientation; a GIF's first frame."""
    image = tf.io.decode_image(data, channels=channels, expand_animations=False)
    oriented = _orient(image, _exif_orientation(data))
    oriented.set_shape([None, None, channels or None])
    return oriented


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


def prepare_one(data: tf.Tensor, height: int, width: int, channels: int, max_pixels: int) -> tf.Tensor:
    """One encoded PNG/JPEG/GIF/BMP image (a scalar string) -> it decoded (`decode_oriented`),
    resized to height x width with `channels` channels and encoded again (a scalar string): as
    JPEG where the source was one, as PNG otherwise. An image of more than `max_pixels` pixels
    fails with InvalidArgument before it is decoded."""
    with tf.control_dependencies([check_size(data, max_pixels)]):
        image = decode_oriented(data, channels)
    resized = tf.image.resize(image, [height, width])  # float32, 0-255
    pixels = tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)
    return tf.cond(tf.io.is_jpeg(data),
                   lambda: tf.io.encode_jpeg(pixels, quality=JPEG_QUALITY, chroma_downsampling=False),
                   lambda: tf.io.encode_png(pixels))


def resize_and_encode(encoded: tf.Tensor, height: int, width: int, channels: int, max_pixels: int) -> tf.Tensor:
    """Encoded PNG/JPEG/GIF/BMP strings [batch] -> `prepare_one` of each [batch]."""
    return tf.map_fn(lambda data: prepare_one(data, height, width, channels, max_pixels), encoded,
                     fn_output_signature=tf.TensorSpec([], tf.string))


def decode(encoded: tf.Tensor, height: int, width: int, channels: int) -> tf.Tensor:
    """What resize_and_encode wrote [batch] -> float32 pixels [batch, height, width, channels], 0-255.
    No orientation is applied: those pixels are upright already, and tf.io.encode_jpeg writes no EXIF."""

    def one(data):
        image = tf.io.decode_image(data, channels=channels, expand_animations=False)
        image.set_shape([height, width, channels])
        return tf.cast(image, tf.float32)

    return tf.map_fn(one, tf.reshape(encoded, [-1]),
                     fn_output_signature=tf.TensorSpec([height, width, channels], tf.float32))
