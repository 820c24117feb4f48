"""The Trainer's data: Transform's TFRecords as batches of decoded images, their counts per class,
balanced class weights and a per-class subsample."""

from typing import Optional

import keras
import numpy as np
import tensorflow as tf
from tfx.components.trainer.fn_args_utils import FnArgs
from tfx_bsl.public import tfxio

from components.training import features, images
from components.config import ImageShape


def _records(file_patterns: list[str]) -> tf.data.TFRecordDataset:
    """The records of the (gzipped when named *.gz) TFRecord files matching the patterns, in file order."""
    files = sorted(f for pattern in file_patterns for f in tf.io.gfile.glob(pattern))
    if not files:
        raise ValueError(f'no files match {file_patterns}')
    return tf.data.TFRecordDataset(files, compression_type='GZIP' if files[0].endswith('.gz') else '')


def count_records(file_patterns: list[str]) -> int:
    """Number of records in the (gzipped when named *.gz) TFRecord files matching the patterns."""
    return int(_records(file_patterns).reduce(0, lambda n, _: n + 1))


def target_counts(file_patterns: list[str], feature_spec: dict, num_targets: int) -> list[int]:
    """How many examples of each training target (0/1 binary, class index multiclass) the
    transformed TFRecord files hold; only the label is parsed."""
    spec = {features.LABEL_KEY: feature_spec[features.LABEL_KEY]}
    counts = [0] * num_targets
    for batch in _records(file_patterns).batch(4096).map(lambda r: tf.io.parse_example(r, spec)[features.LABEL_KEY]):
        values = batch.numpy().reshape(-1)
        for target, count in enumerate(np.bincount(values[values >= 0], minlength=num_targets)[:num_targets]):
            counts[target] += int(count)
    return counts


def balanced_class_weight(counts: list[int]) -> dict[int, float]:
    """n / (k * n_c) per target, scikit-learn's compute_class_weight('balanced'); a target with no
    example weighs 1 (nothing to weigh)."""
    total, k = sum(counts), len(counts)
    return {target: total / (k * count) if count else 1.0 for target, count in enumerate(counts)}


def subsample_per_target(file_patterns: list[str], feature_spec: dict, per_target: int, seed: int,
                         output_path: str) -> dict[int, int]:
    """Writes at most `per_target` records of each training target (drawn with `seed`) from the
    transformed TFRecord files to `output_path` (gzipped), in their original order; returns the
    count written per target."""
    spec = {features.LABEL_KEY: feature_spec[features.LABEL_KEY]}
    records = list(_records(file_patterns).as_numpy_iterator())
    labels = tf.io.parse_example(records, spec)[features.LABEL_KEY].numpy().reshape(-1)
    rng = np.random.default_rng(seed)
    keep = sorted(i for target in np.unique(labels[labels >= 0])
                  for i in rng.permutation(np.flatnonzero(labels == target))[:per_target])
    with tf.io.TFRecordWriter(output_path, options='GZIP') as writer:
        for i in keep:
            writer.write(records[i])
    return {int(t): int(np.sum(labels[keep] == t)) for t in np.unique(labels[keep])}


def batched_dataset(fn_args: FnArgs, files: list[str], schema, batch_size: int, seed: int, training: bool,
             shape: ImageShape, augment: Optional[keras.Sequential] = None) -> tf.data.Dataset:
    """Batches of ({image_xf: pixels [batch, H, W, C]}, label [batch]) from Transform's output; the
    images are decoded in parallel with training (components.training.images.decode, as the serving
    signature does), then changed by `augment` (training only; the model never contains it, so
    neither does the exported serving graph)."""
    options = tfxio.TensorFlowDatasetOptions(
        batch_size=batch_size, label_key=features.LABEL_KEY, shuffle=training, shuffle_seed=seed,
        num_epochs=None if training else 1)

    def decode(inputs, label):
        pixels = images.decode(inputs[features.IMAGE_KEY], shape.height, shape.width, shape.channels)
        if augment is not None:
            pixels = augment(pixels, training=True)
        return {features.IMAGE_KEY: pixels}, label

    return (fn_args.data_accessor.tf_dataset_factory(files, options, schema)
            .map(decode, num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))
