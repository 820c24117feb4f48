"""A 64-bit perceptual hash of an image, in TensorFlow ops, for finding near-duplicate photos.

pHash (as imagehash.phash computes it): the image in grey, shrunk to 32x32, its 2-D DCT-II
(tf.signal.dct along each axis), the 8x8 lowest frequencies, one bit each for "above their median".
Re-saving, resizing and stripping metadata barely move these frequencies; a different photo moves
about half the bits. The image is decoded as Transform decodes it (components.training.images:
the same formats, EXIF orientation applied), so the copy a phone rotated and the copy an editor
rotated hash alike. The grouping lives in components.statistics.near_duplicates; the threshold and
its measured false-positive rate in components.config.data.Duplicates.

TensorFlow rather than imagehash: it decodes exactly the formats and orientation the pipeline
trains on, and it runs in the data steps' process without another image library.
"""

import functools
from typing import Optional

import tensorflow as tf

from components.training import images

_SIDE = 32
_LOW = 8
# Images smaller than this on either side are not hashed (hash_if_hashable).
MIN_SIDE = _SIDE


def phash_bits(data: tf.Tensor) -> tf.Tensor:
    """One encoded image (a scalar string) -> bool [64], its pHash bits (row-major 8x8)."""
    grey = tf.cast(images.decode_oriented(data, 1), tf.float32)
    small = tf.image.resize(grey, [_SIDE, _SIDE], method='area', antialias=True)[:, :, 0]
    rows = tf.signal.dct(small, type=2)
    both = tf.transpose(tf.signal.dct(tf.transpose(rows), type=2))
    low = tf.reshape(both[:_LOW, :_LOW], [_LOW * _LOW])
    middle = tf.sort(low)[_LOW * _LOW // 2 - 1:_LOW * _LOW // 2 + 1]
    return low > tf.reduce_mean(middle)


def pack(bits: tf.Tensor) -> tf.Tensor:
    """bool [64] -> the int64 whose bits (most significant first) they are."""
    weights = tf.bitwise.left_shift(tf.constant(1, tf.int64), tf.range(63, -1, -1, dtype=tf.int64))
    return tf.reduce_sum(tf.where(bits, weights, tf.zeros_like(weights)))


def hash_if_hashable(data: tf.Tensor, size: tf.Tensor, max_pixels) -> tuple[tf.Tensor, tf.Tensor]:
    """(int64 pHash or 0, bool: hashed) of one encoded image whose header gave `size` [width,
    height]. Not hashed: an image over `max_pixels` (it is never decoded), or one under MIN_SIDE
    pixels on a side, where shrinking to the 32x32 grid would stretch a few pixels into low
    frequencies that many unrelated images share (8x8 digits hash alike)."""
    hashable = tf.logical_and(size[0] * size[1] <= max_pixels, tf.reduce_min(size) >= MIN_SIDE)
    return tf.cond(hashable, lambda: pack(phash_bits(data)), lambda: tf.constant(0, tf.int64)), hashable


@functools.cache
def _hash_function():
    def phash(data, max_pixels):
        return hash_if_hashable(data, images.header_size(data), max_pixels)

    return tf.function(phash, autograph=False,
                       input_signature=[tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int64)])


def phash(data: bytes, max_pixels: int) -> Optional[int]:
    """The pHash of encoded `data` as a signed int64, or None where hash_if_hashable does not hash
    it or it does not decode (the data gate names those). One function, traced once per process."""
    if not data:
        return None
    try:
        value, hashed = _hash_function()(tf.constant(data), tf.constant(max_pixels, tf.int64))
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
        return None
    return int(value.numpy()) if bool(hashed.numpy()) else None
