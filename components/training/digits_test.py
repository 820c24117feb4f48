import os

import numpy as np
import tensorflow as tf

from components.training import digits


def test_load_digits_images_keeps_only_the_requested_classes():
    images, labels = digits.load_digits_images((5, 9))
    assert set(labels.tolist()) == {5, 9}
    assert images.shape == (len(labels), 8, 8) and images.dtype == np.uint8
    assert images.max() == 255


def test_write_digits_tfrecords_writes_examples_once(tmp_path):
    count = digits.write_digits_tfrecords(str(tmp_path), (0, 1), 'img', 'digit')
    path = os.path.join(tmp_path, 'digits.tfrecord')
    records = list(tf.data.TFRecordDataset(path))
    assert len(records) == count == 360
    example = tf.train.Example.FromString(records[0].numpy())
    assert example.features.feature['digit'].int64_list.value[0] in (0, 1)
    image = tf.io.decode_png(example.features.feature['img'].bytes_list.value[0]).numpy()
    assert image.shape == (8, 8, 1)
    modified = os.path.getmtime(path)
    digits.write_digits_tfrecords(str(tmp_path), (0, 1), 'img', 'digit')
    assert os.path.getmtime(path) == modified
    assert not os.path.exists(path + '.tmp')
