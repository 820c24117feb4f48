"""Images between Transform and the model.

Transform decodes each image once, resizes it to `model.input` and stores it encoded again: as
JPEG (quality JPEG_QUALITY) when the source was a JPEG, as PNG (lossless) otherwise. The Trainer's
input pipeline and the serving signature both turn that into pixels with `decode`, so training and
serving see the same values, and the model scales them itself (its first layer).

Why encoded, not pixels: a 224x224 photo that arrives as a 15 KB JPEG is 147 KB of uint8 pixels,
about 100 KB gzipped (7x), and 9.4x as float32; every epoch reads it back. Re-encoded it is 1.6x
the source (`make bench`), and the input pipeline decodes about 3,500 such 96x96 images a
second on two cores, in parallel with training. A source larger than the model's input shrinks.
Chroma is kept at full resolution: colour detail is what JPEG's default subsampling loses.
"""

import tensorflow as tf

JPEG_QUALITY = 95


def resize_and_encode(encoded: tf.Tensor, height: int, width: int, channels: int) -> tf.Tensor:
    """Encoded PNG/JPEG/GIF/BMP strings [batch] -> the images resized to height x width with
    `channels` channels, encoded as JPEG where the source was one and as PNG otherwise [batch]."""

    def one(data):
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
