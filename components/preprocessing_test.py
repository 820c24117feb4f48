import numpy as np
import tensorflow as tf

from components import digits, features, preprocessing


def test_decode_images_recovers_the_pixels_scaled_to_unit_range():
    images, _ = digits.load_digits_images((3,))
    encoded = tf.constant([digits.encode_png(image) for image in images[:4]])
    decoded = preprocessing.decode_images(encoded, 8, 8, 1).numpy()
    assert decoded.shape == (4, 64)
    np.testing.assert_allclose(decoded, images[:4].reshape(4, 64) / 255.0, atol=1e-6)


def test_decode_images_resizes_and_expands_channels():
    images, _ = digits.load_digits_images((3,))
    decoded = preprocessing.decode_images(tf.constant([digits.encode_png(images[0])]), 16, 16, 3).numpy()
    assert decoded.shape == (1, 16 * 16 * 3)
    assert 0.0 <= decoded.min() and decoded.max() <= 1.0


def test_preprocessing_fn_binarizes_the_label_and_accepts_dense_or_sparse_inputs():
    images, labels = digits.load_digits_images((5, 9))
    encoded = [digits.encode_png(image) for image in images[:6]]
    config = {'image_feature': 'image', 'label_feature': 'label', 'positive_class': 9,
              'height': 8, 'width': 8, 'channels': 1}
    dense = {'image': tf.constant(encoded)[:, None], 'label': tf.constant(labels[:6])[:, None]}
    sparse = {key: tf.sparse.from_dense(value) for key, value in dense.items()}
    for inputs in (dense, sparse):
        outputs = preprocessing.preprocessing_fn(inputs, config)
        np.testing.assert_array_equal(outputs[features.LABEL_KEY].numpy(), (labels[:6] == 9).astype(np.int64))
        assert outputs[features.IMAGE_KEY].shape == (6, 64)


def test_multiclass_labels_become_their_index_in_classes_and_unknown_values_minus_one():
    labels = tf.constant([9, 5, 7, 3, 5], tf.int64)
    encoded = preprocessing.encode_labels(labels, {'task': 'multiclass', 'classes': [5, 7, 9]})
    np.testing.assert_array_equal(encoded.numpy(), [2, 0, 1, -1, 0])
