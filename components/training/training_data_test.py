"""The Trainer's data: record counts, class counts and weights, the per-class subsample."""


import numpy as np
import tensorflow as tf

from components.training import training_data


def test_count_records(tmp_path):
    path = str(tmp_path / 'data.gz')
    with tf.io.TFRecordWriter(path, options='GZIP') as writer:
        for i in range(7):
            writer.write(b'x' * i)
    assert training_data.count_records([str(tmp_path / '*.gz')]) == 7


def test_balanced_class_weight_is_scikit_learns():
    from sklearn.utils.class_weight import compute_class_weight

    y = np.array([0] * 40 + [1] * 10 + [2] * 5)
    expected = compute_class_weight('balanced', classes=np.arange(3), y=y)
    weights = training_data.balanced_class_weight(list(np.bincount(y)))
    np.testing.assert_allclose([weights[i] for i in range(3)], expected)
    assert training_data.balanced_class_weight([10, 0]) == {0: 0.5, 1: 1.0}


SPEC = {'label_xf': tf.io.FixedLenFeature([], tf.int64), 'image_xf': tf.io.FixedLenFeature([], tf.string)}


def _write_transformed(path, labels, first_id=0):
    with tf.io.TFRecordWriter(str(path), options='GZIP') as writer:
        for i, label in enumerate(labels, start=first_id):
            example = tf.train.Example(features=tf.train.Features(feature={
                'label_xf': tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
                'image_xf': tf.train.Feature(bytes_list=tf.train.BytesList(value=[str(i).encode()]))}))
            writer.write(example.SerializeToString())


def test_target_counts_read_the_label_of_transformed_records(tmp_path):
    _write_transformed(tmp_path / 'part.gz', [0, 1, 1, 2, 1])
    assert training_data.target_counts([str(tmp_path / '*.gz')], SPEC, 3) == [1, 3, 1]


def test_few_labels_keep_at_most_n_examples_of_each_class_drawn_by_the_seed(tmp_path):
    labels = [0] * 50 + [1] * 8 + [0] * 30 + [1] * 4
    _write_transformed(tmp_path / 'a.gz', labels[:45])
    _write_transformed(tmp_path / 'b.gz', labels[45:], first_id=45)
    files = [str(tmp_path / '*.gz')]

    def drawn(seed, n=10):
        counts = training_data.subsample_per_target(files, SPEC, n, seed, str(tmp_path / f'out-{seed}-{n}'))
        records = tf.data.TFRecordDataset(str(tmp_path / f'out-{seed}-{n}'), compression_type='GZIP')
        parsed = [tf.io.parse_single_example(r, SPEC) for r in records]
        return counts, [int(p['image_xf'].numpy()) for p in parsed], [int(p['label_xf']) for p in parsed]

    counts, ids, kept_labels = drawn(0)
    assert counts == {0: 10, 1: 10} and sorted(kept_labels) == [0] * 10 + [1] * 10
    assert drawn(0)[1] == ids  # the same seed draws the same examples
    assert drawn(1)[1] != ids
    assert drawn(0, n=100)[0] == {0: 80, 1: 12}  # fewer than n: all of them
