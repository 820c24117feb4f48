import numpy as np
import tensorflow as tf

from components.config import TransformInputs, validate
from components.training import digits, features, images, transform


def test_preprocessing_fn_binarizes_the_label_and_accepts_dense_or_sparse_inputs():
    pictures, labels = digits.load_digits_images((5, 9))
    encoded = [digits.encode_png(image) for image in pictures[:6]]
    config = {'code': '', 'image_feature': 'image', 'label_feature': 'label', 'task': 'binary', 'positive_class': 9,
              'classes': [], 'input': {'height': 8, 'width': 8, 'channels': 1}, 'max_image_pixels': 50_000_000}
    dense = {'image': tf.constant(encoded)[:, None], 'label': tf.constant(labels[:6])[:, None]}
    sparse = {key: tf.sparse.from_dense(value) for key, value in dense.items()}
    for inputs in (dense, sparse):
        outputs = transform.preprocessing_fn(inputs, config)
        np.testing.assert_array_equal(outputs[features.LABEL_KEY].numpy(), (labels[:6] == 9).astype(np.int64))
        assert outputs[features.IMAGE_KEY].shape == (6,)
        np.testing.assert_array_equal(images.decode(outputs[features.IMAGE_KEY], 8, 8, 1).numpy()[..., 0],
                                      pictures[:6])


def test_multiclass_labels_become_their_index_in_classes_and_unknown_values_minus_one():
    labels = tf.constant([9, 5, 7, 3, 5], tf.int64)
    settings = validate({'code': '', 'image_feature': 'image', 'label_feature': 'label', 'task': 'multiclass',
                         'positive_class': None, 'classes': [5, 7, 9], 'input': {'height': 8, 'width': 8},
                         'max_image_pixels': 1}, TransformInputs)
    encoded = transform.encode_labels(labels, settings)
    np.testing.assert_array_equal(encoded.numpy(), [2, 0, 1, -1, 0])
