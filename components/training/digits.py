"""The embedded data set: scikit-learn's 1,797 handwritten 8x8 digits, which ship with scikit-learn.

Written as TFRecords of tf.Example with a PNG-encoded image and the digit as label, the same
format a user's own image data takes, so the pipeline reads it like any other source.
"""

import io
import os

import numpy as np
from PIL import Image

from components.shared import storage

IMAGE_SIZE = 8
# sklearn stores intensities as 0..16.
_MAX_INTENSITY = 16


def load_digits_images(classes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Returns (images uint8 [N, 8, 8] scaled to 0..255, labels int64 [N]) for the given digits."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    keep = np.isin(digits.target, classes)
    images = np.round(digits.images[keep] * (255 / _MAX_INTENSITY)).astype(np.uint8)
    return images, digits.target[keep].astype(np.int64)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 [H, W] (grayscale) or [H, W, 3] image."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format='PNG')
    return buffer.getvalue()


def write_digits_tfrecords(output_dir: str, classes: tuple[int, ...], image_feature: str,
                           label_feature: str) -> int:
    """Writes the digits in `classes` to `output_dir`/digits.tfrecord; returns the example count.

    Writes to a temporary name and renames, so a reader never sees a partial file, and does
    nothing when the file exists (the bytes are deterministic, which keeps pipeline caching valid).
    """
    import tensorflow as tf

    path = os.path.join(output_dir, 'digits.tfrecord')
    images, labels = load_digits_images(classes)
    if os.path.exists(path):
        return len(labels)
    os.makedirs(output_dir, exist_ok=True)
    with storage.atomic_path(path) as partial, tf.io.TFRecordWriter(partial) as writer:
        for image, label in zip(images, labels):
            example = tf.train.Example(features=tf.train.Features(feature={
                image_feature: tf.train.Feature(bytes_list=tf.train.BytesList(value=[encode_png(image)])),
                label_feature: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
            }))
            writer.write(example.SerializeToString())
    return len(labels)


def write_digits_image_folders(root: str, classes: tuple[int, ...], span: int, part: int, parts: int) -> int:
    """Writes part `part` (1-based) of `parts` disjoint parts of the digits as image folders of one
    span, `<root>/span-<span>/<digit>/<n>.png`; returns the number of images written."""
    images, labels = load_digits_images(classes)
    chosen = slice(part - 1, None, parts)
    for n, (image, label) in enumerate(zip(images[chosen], labels[chosen])):
        folder = os.path.join(root, f'span-{span}', str(label))
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f'{n}.png'), 'wb') as f:
            f.write(encode_png(image))
    return len(labels[chosen])
