import io

import numpy as np
import tensorflow as tf
from PIL import Image

from components import digits, images


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
    encoded = images.resize_and_encode(tf.constant([digits.encode_png(p) for p in pictures[:4]]), 8, 8, 1)
    assert all(tf.io.is_jpeg(e) == False for e in encoded)  # noqa: E712 - lossless sources stay PNG
    decoded = images.decode(encoded, 8, 8, 1).numpy()
    assert decoded.shape == (4, 8, 8, 1) and decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded[..., 0], pictures[:4])


def test_a_jpeg_is_resized_and_stays_a_jpeg_close_to_the_source():
    photo = _photo(160)
    encoded = images.resize_and_encode(tf.constant([_jpeg(photo)]), 96, 96, 3)
    assert bool(tf.io.is_jpeg(encoded[0]))
    decoded = images.decode(encoded, 96, 96, 3).numpy()[0]
    assert decoded.shape == (96, 96, 3) and 0 <= decoded.min() and decoded.max() <= 255
    # Against the source decoded and resized in float (what the model would see without storage):
    # 37.9 dB on this textured crop at quality 95; quality 75 would give 29.8 dB.
    expected = tf.image.resize(tf.io.decode_jpeg(_jpeg(photo)), [96, 96]).numpy()
    assert 10 * np.log10(255 ** 2 / np.mean((decoded - expected) ** 2)) > 35


def test_grayscale_becomes_rgb_and_rgb_grayscale_when_the_model_asks():
    pictures, _ = digits.load_digits_images((3,))
    rgb = images.decode(images.resize_and_encode(tf.constant([digits.encode_png(pictures[0])]), 16, 16, 3), 16, 16, 3)
    assert rgb.shape == (1, 16, 16, 3)
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
    gray = images.decode(images.resize_and_encode(tf.constant([_jpeg(_photo(64))]), 32, 32, 1), 32, 32, 1)
    assert gray.shape == (1, 32, 32, 1)


def test_a_stored_photo_stays_well_below_three_times_its_source_jpeg():
    photo = _photo(224)
    source = _jpeg(photo)
    stored = images.resize_and_encode(tf.constant([source]), 224, 224, 3).numpy()[0]
    assert len(stored) < 2 * len(source)
