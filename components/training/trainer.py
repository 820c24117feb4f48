"""The Trainer's run_fn: fine-tunes a pre-trained backbone in stages and exports a servable model.

Each stage sets which backbone layers train, compiles a fresh optimizer with its own learning
rate and schedule, and fits with Keras callbacks (learning-rate recording, early stopping,
TensorBoard). Everything that happened is written to `training_log.json` in the model-run
artifact.

A stage that trains only the head on a frozen backbone, on images that are not augmented, computes
the backbone's features once and fits the head on them (`FeatureCache`): the frozen backbone is
deterministic (its BatchNorm runs in inference mode), so each epoch would recompute the same
features.
"""

import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from typing import Optional, Sequence

import keras
import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from tfx.components.trainer.fn_args_utils import FnArgs
from tfx.dsl.io import fileio
from tfx_bsl.public import tfxio

from components.training import backbone as backbone_lib
from components.training import export, features, freezing, images, schedules
from components.statistics import proportions
from components.shared import storage
from components.shared.artifact_files import TRAINING_LOG
from components.config import (Augmentation, DecisionTarget, HeadSection, ImageShape, LearningRateFinder, Stage,
                               TrainerSection, validate)


# Features of every cached example (training and eval splits) must fit in this many bytes of memory.
FEATURE_CACHE_LIMIT_BYTES = 1 << 30

# Layers whose output in training is random (or augmentation): a backbone holding one has no fixed features.
_RANDOM_IN_TRAINING = (keras.layers.Dropout, keras.layers.SpatialDropout1D, keras.layers.SpatialDropout2D,
                       keras.layers.SpatialDropout3D, keras.layers.GaussianDropout, keras.layers.GaussianNoise,
                       keras.layers.AlphaDropout, keras.layers.RandomFlip, keras.layers.RandomRotation,
                       keras.layers.RandomZoom, keras.layers.RandomTranslation, keras.layers.RandomContrast,
                       keras.layers.RandomBrightness)


class LearningRateRecorder(keras.callbacks.Callback):
    """Records the learning rate applied at every optimizer step, and each epoch's last one."""

    def __init__(self):
        super().__init__()
        self.lr_by_step: list[float] = []

    def on_train_batch_begin(self, batch, logs=None):
        self.lr_by_step.append(schedules.current_learning_rate(self.model.optimizer))

    def on_epoch_end(self, epoch, logs=None):
        # The rate in effect at the epoch's last step (before any callback changes it).
        if logs is not None and self.lr_by_step:
            logs['learning_rate'] = self.lr_by_step[-1]


class EpochLine(keras.callbacks.Callback):
    """Prints one line per epoch: stage, epoch, learning rate, loss and the validation metrics
    (instead of Keras' progress output, which the console run keeps quiet)."""

    def __init__(self, stage_name: str, epochs: int, stream=None):
        super().__init__()
        self.stage_name, self.epochs, self.stream = stage_name, epochs, stream

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        values = [f"lr {logs['learning_rate']:.3g}"] if 'learning_rate' in logs else []
        names = (['loss'] if 'loss' in logs else []) + sorted(n for n in logs if n.startswith('val_'))
        values += [f'{name} {float(logs[name]):.4f}' for name in names]
        print(f'        {self.stage_name} epoch {epoch + 1}/{self.epochs}  ' + '  '.join(values),
              file=self.stream or sys.stdout, flush=True)


class RaiseOnNaN(keras.callbacks.Callback):
    """Raises FloatingPointError at the first non-finite training loss, so nothing broken is exported.

    Keras' TerminateOnNaN only stops fit(), after which an exporter would save the broken model.
    """

    def __init__(self, stage_name: str):
        super().__init__()
        self.stage_name = stage_name
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get('loss')
        if loss is not None and not math.isfinite(float(loss)):
            raise FloatingPointError(
                f'stage {self.stage_name!r}, epoch {self.epoch + 1}, step {batch + 1}: training loss is '
                f'{float(loss)}; lower the learning rate or set optimizer.clipnorm. No model was exported.')


def _warn(message: str) -> None:
    print(f'        warning: {message}', flush=True)


def save_weights_atomically(model: keras.Model, path: str) -> None:
    """model.save_weights to `path` (a local `.weights.h5`) through a temporary name and a rename,
    so a crash leaves the previous file or the new one, never half of one."""
    with storage.atomic_path(path, suffix='.weights.h5') as partial:
        model.save_weights(partial)


def write_json_atomically(path: str, value) -> None:
    storage.write_text_atomically(path, json.dumps(value))


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras' BackupAndRestore, crash-safe: each file is written to a temporary name and renamed
    (Keras writes its h5 in place, and a kill mid-write left a truncated file that failed every
    later run), and a backup that does not load is discarded with one warning line, the stage
    starting over from the weights it began with. The weights go first, then the epoch: a crash
    between the two re-runs one epoch from newer weights, and blocks nothing."""

    def on_train_begin(self, logs=None):
        start = self.model.get_weights()
        try:
            super().on_train_begin(logs)
        except (OSError, ValueError, KeyError, TypeError) as error:  # json.JSONDecodeError is a ValueError
            _warn(f'resume backup {self.backup_dir} does not load ({type(error).__name__}: '
                  f'{" ".join(str(error).split())[:160]}); discarded, the stage starts over')
            self.model.set_weights(start)
            self.model._initial_epoch = 0
            shutil.rmtree(self.backup_dir, ignore_errors=True)

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        save_weights_atomically(self.model, self._weights_path)
        write_json_atomically(self._training_metadata_path, {'epoch': self._current_epoch,
                                                            'batch': self._last_batch_seen})


def use_mixed_precision(setting, gpus: int) -> bool:
    """model.mixed_precision: true/false as given; `auto` when at least one GPU is visible."""
    return gpus > 0 if setting == 'auto' else bool(setting)


def choose_strategy(device_type: str = 'GPU') -> tf.distribute.Strategy:
    """MirroredStrategy across the devices of `device_type` when more than one is visible, else the
    default strategy. Tests pass 'CPU' after splitting the CPU into logical devices."""
    devices = tf.config.list_logical_devices(device_type)
    if len(devices) > 1:
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    return tf.distribute.get_strategy()


def with_dtype_policy(model: keras.Model, policy: str) -> keras.Model:
    """A copy of a functional `model` whose layers compute under `policy` (e.g. mixed_float16),
    with the same weights. Loaded models keep the dtype they were saved with, so the global policy
    alone would leave a loaded backbone in float32."""

    def clone(layer):
        if isinstance(layer, keras.Model):  # nested, e.g. a keras.applications network
            return keras.models.clone_model(layer, clone_function=clone)
        if isinstance(layer, keras.layers.InputLayer):
            return layer.__class__.from_config(layer.get_config())
        return layer.__class__.from_config({**layer.get_config(), 'dtype': policy})

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def build_model(backbone: keras.Model, shape: ImageShape, head: HeadSection, num_classes: int = 1) -> keras.Model:
    """Images [batch, H, W, C] of pixel values 0-255 (`image_xf`, as components.images.decode gives
    them) -> probability of the positive class [batch, 1] (num_classes 1: binary), or of each class
    [batch, num_classes] (softmax). The backbone sees pixels scaled to [0, 1].

    BatchNorm inference mode is held by freezing (components.freezing), not by training=False.
    """
    inputs = keras.Input((shape.height, shape.width, shape.channels), name=features.IMAGE_KEY)
    x = keras.layers.Rescaling(1.0 / 255, name='to_unit_range')(inputs)
    x = backbone(x)
    for i, units in enumerate(head.hidden_units):
        x = keras.layers.Dense(units, activation='relu', name=f'head_dense_{i}')(x)
    x = keras.layers.Dropout(head.dropout, name='head_dropout')(x)
    # float32 output keeps the loss numerically safe under mixed precision.
    outputs = keras.layers.Dense(num_classes, activation='sigmoid' if num_classes == 1 else 'softmax',
                                 name='head_output', dtype='float32')(x)
    return keras.Model(inputs, outputs, name='finetuned')


def _loss_and_metrics(model: keras.Model, decision_threshold: float) -> tuple:
    """Binary (one sigmoid output): cross-entropy, and accuracy/recall/precision at the decision
    threshold with AUC-PR. Multiclass (softmax): sparse cross-entropy on class indices and accuracy."""
    if model.output_shape[-1] > 1:
        return keras.losses.SparseCategoricalCrossentropy(), [keras.metrics.SparseCategoricalAccuracy(name='accuracy')]
    return keras.losses.BinaryCrossentropy(), [
        keras.metrics.BinaryAccuracy(name='accuracy', threshold=decision_threshold),
        keras.metrics.Recall(thresholds=decision_threshold, name='recall'),
        keras.metrics.Precision(thresholds=decision_threshold, name='precision'),
        keras.metrics.AUC(curve='PR', name='auc_pr'),
    ]


def _param_count(weights) -> int:
    return int(sum(math.prod(w.shape) for w in weights))


def find_learning_rate(model: keras.Model, compile_with, train_data, finder: LearningRateFinder) -> dict:
    """The LR range test (fastai's lr_find): the rate grows exponentially from finder.min_lr to
    finder.max_lr, one step per batch, until the loss diverges; the model's weights are restored.

    `compile_with(learning_rate)` compiles the model with the stage's optimizer at that rate.
    Returns the curve and the chosen rate: the rate at the lowest smoothed loss / finder.divisor.
    """
    weights = model.get_weights()
    growth = keras.optimizers.schedules.ExponentialDecay(
        finder.min_lr, decay_steps=finder.steps, decay_rate=finder.max_lr / finder.min_lr)
    compile_with(growth)
    rates = LearningRateRecorder()
    batch_losses: list[float] = []

    def record_loss(batch, logs):
        batch_losses.append(float(logs['loss']))
        smoothed = _smooth(batch_losses)
        if not math.isfinite(batch_losses[-1]) or smoothed[-1] > 4 * min(smoothed):
            model.stop_training = True

    losses = keras.callbacks.LambdaCallback(on_train_batch_end=record_loss)
    model.fit(train_data, epochs=1, steps_per_epoch=finder.steps, callbacks=[rates, losses], verbose=0)
    model.set_weights(weights)
    smoothed = _smooth(batch_losses)
    finite = [i for i, loss in enumerate(smoothed) if math.isfinite(loss)]
    best = min(finite, key=lambda i: smoothed[i])
    return {'lr': rates.lr_by_step[:len(batch_losses)], 'loss': batch_losses, 'smoothed_loss': smoothed,
            'min_loss_lr': rates.lr_by_step[best], 'chosen_lr': rates.lr_by_step[best] / finder.divisor}


def _smooth(values: list[float], beta: float = 0.98) -> list[float]:
    """Bias-corrected exponential moving average, as fastai smooths the LR-finder loss."""
    average, smoothed = 0.0, []
    for i, value in enumerate(values, start=1):
        average = beta * average + (1 - beta) * value
        smoothed.append(average / (1 - beta ** i))
    return smoothed


def _fingerprints(images: tf.Tensor) -> tf.Tensor:
    """One int64 per image of the batch, from the bytes of its pixels (farmhash, tf.fingerprint)."""
    return tf.reshape(tf.bitcast(tf.fingerprint(images), tf.int64), [-1])


class FeatureCache:
    """Trains a stage's head on the frozen backbone's features, computed once.

    `datasets` are finite one-pass datasets of ({image_xf: pixels}, label) batches that together hold
    every image the stage's training and eval datasets yield (the training split once, the eval
    split), `examples` their total count. Each image's features are computed once and looked up by
    the fingerprint of its pixels, so the stage's own datasets keep their order, batches and
    shuffling, and the head's optimizer takes the same steps on the same examples. The features
    must fit in `limit_bytes`; while they are gathered, memory holds them about twice.
    """

    def __init__(self, datasets: Sequence[tf.data.Dataset], examples: int,
                 limit_bytes: int = FEATURE_CACHE_LIMIT_BYTES, reason: Optional[str] = None):
        self.datasets, self.examples, self.limit_bytes, self.reason = list(datasets), examples, limit_bytes, reason

    @classmethod
    def unavailable(cls, reason: str) -> 'FeatureCache':
        """No caching, for `reason` (which the stage's log entry gives)."""
        return cls((), 0, reason=reason)

    def _reason_not(self, model: keras.Model, backbone: keras.Model, unfrozen: list[str],
                    augmented: bool) -> Optional[str]:
        if unfrozen:
            return f'{len(unfrozen)} backbone layers train in this stage, so its features change every step'
        if augmented:
            return ('the training images are augmented (model.augmentation), so they and their features change '
                    'every epoch; a stage with augment: false trains on them as they are')
        if self.reason is not None:
            return self.reason
        random = [layer.name for layer in freezing.leaf_layers(backbone) if isinstance(layer, _RANDOM_IN_TRAINING)]
        if random:
            return f'the backbone holds layers that are random in training ({", ".join(random)})'
        if backbone not in model.layers or len(model.inputs) != 1 or len(model.outputs) != 1:
            return 'the model is not one input, the backbone, then the head'
        needed = self.examples * math.prod(backbone.output_shape[1:]) * np.dtype(backbone.outputs[0].dtype).itemsize
        if needed > self.limit_bytes:
            return (f'the features of {self.examples} examples take {needed / 2**20:.3g} MiB, above the limit of '
                    f'{self.limit_bytes / 2**20:.3g} MiB')
        return None

    def for_stage(self, model: keras.Model, backbone: keras.Model, unfrozen: list[str],
                  train_data: tf.data.Dataset, eval_data: tf.data.Dataset, augmented: bool = False) -> dict:
        """{'cached': False, 'reason': ...}, or {'cached': True, examples, bytes, seconds} with the
        head-only model ('head') and the stage's datasets with features for images ('train', 'eval')."""
        reason = self._reason_not(model, backbone, unfrozen, augmented)
        if reason is not None:
            return {'cached': False, 'reason': reason}
        started = time.monotonic()
        at = model.layers.index(backbone)
        before_backbone = model.layers[1:at]

        @tf.function(reduce_retracing=True)
        def compute(images):
            x = images
            for layer in before_backbone:
                x = layer(x, training=False)
            return _fingerprints(images), backbone(x, training=False)

        keys, values = [], []
        for dataset in self.datasets:
            for inputs, _ in dataset:
                key, value = compute(inputs[features.IMAGE_KEY])
                keys.append(key.numpy())
                values.append(value.numpy())
        keys, values = np.concatenate(keys), np.concatenate(values)
        # An image met twice (in both splits, or a duplicate) keeps one row: the same pixels, the same features.
        _, first = np.unique(keys, return_index=True)
        if len(first) < len(keys):
            keys, values = keys[first], values[first]
        table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            tf.constant(keys), tf.range(len(keys), dtype=tf.int64)), default_value=-1)
        stored = tf.constant(values)

        def with_features(inputs, label):
            rows = table.lookup(_fingerprints(inputs[features.IMAGE_KEY]))
            check = tf.debugging.assert_non_negative(rows, message='an image outside the cached datasets')
            with tf.control_dependencies([check]):
                return tf.gather(stored, rows), label

        with model.distribute_strategy.scope():
            head_inputs = keras.Input(values.shape[1:], dtype=values.dtype, name='backbone_features')
            x = head_inputs
            for layer in model.layers[at + 1:]:
                x = layer(x)
            head = keras.Model(head_inputs, x, name='head')
        return {'cached': True, 'examples': int(len(keys)), 'bytes': int(values.nbytes),
                'limit_bytes': self.limit_bytes, 'seconds': time.monotonic() - started, 'head': head,
                'train': train_data.map(with_features), 'eval': eval_data.map(with_features)}


def train_stage(model: keras.Model, backbone: keras.Model, stage: Stage, train_data, eval_data,
                steps_per_epoch: int, decision_threshold: float, batch_size: int,
                log_dir: Optional[str] = None, backup_dir: Optional[str] = None,
                extra_callbacks: Sequence[keras.callbacks.Callback] = (),
                class_weight: Optional[dict[int, float]] = None,
                feature_cache: Optional['FeatureCache'] = None, augmented: bool = False) -> dict:
    """Runs one stage and returns its log entry.

    With `feature_cache`, a stage that trains only the head on images that are not augmented
    (`augmented`: whether `train_data` is) fits a head-only model (the same layers) on the
    backbone's features, computed once; the log entry says whether it did, and why not when not.
    Optimizer, schedule, steps, batches, callbacks and class weights are the same.

    With `backup_dir`, the stage backs up at every epoch end (Keras BackupAndRestore) and a rerun
    after a crash resumes from the last completed epoch. Raises FloatingPointError when the loss
    becomes NaN, so a broken model is never exported. `extra_callbacks` run after the stage's own.
    `class_weight` (target -> weight) weighs each example's loss, as Keras' fit does.
    """
    unfrozen = freezing.apply_unfreeze(backbone, stage.unfreeze, stage.train_batchnorm)
    multipliers = (schedules.layerwise_multipliers(unfrozen, stage.layerwise_decay)
                   if stage.layerwise_decay is not None else None)

    loss, metrics = _loss_and_metrics(model, decision_threshold)

    started = time.monotonic()
    cache = (feature_cache or FeatureCache.unavailable('no one-pass datasets of the splits were given')
             ).for_stage(model, backbone, unfrozen, train_data, eval_data, augmented)
    fit_model, fit_train, fit_eval = model, train_data, eval_data
    if cache['cached']:
        fit_model, fit_train, fit_eval = cache.pop('head'), cache.pop('train'), cache.pop('eval')
    if feature_cache is not None:
        print(f"        {stage.name}: backbone features " + (
            f"cached ({cache['examples']} examples, {cache['bytes'] / 2**20:.3g} MiB, {cache['seconds']:.1f} s); "
            'the head trains on them' if cache['cached'] else f"not cached: {cache['reason']}"), flush=True)

    def compile_with(learning_rate):
        fit_model.compile(optimizer=schedules.build_optimizer(stage.optimizer, learning_rate, multipliers, model),
                          loss=loss, metrics=metrics)

    lr_finder = None
    rate = stage.optimizer.learning_rate
    if rate == 'auto':
        lr_finder = find_learning_rate(fit_model, compile_with, fit_train, stage.lr_finder)
        rate = lr_finder['chosen_lr']
    compile_with(schedules.build_learning_rate(rate, stage.schedule, steps_per_epoch * stage.epochs, steps_per_epoch))

    recorder = LearningRateRecorder()
    callbacks = [recorder, EpochLine(stage.name, stage.epochs), RaiseOnNaN(stage.name)]
    if stage.reduce_on_plateau is not None:
        rop = stage.reduce_on_plateau
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor=rop.monitor, factor=rop.factor, patience=rop.patience, min_delta=rop.min_delta,
            min_lr=rop.min_lr, mode=_mode(rop.monitor)))
    if stage.early_stopping is not None:
        es = stage.early_stopping
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=es.monitor, patience=es.patience, min_delta=es.min_delta, mode=_mode(es.monitor),
            restore_best_weights=True))
    if backup_dir is not None:
        callbacks.append(AtomicBackupAndRestore(backup_dir))
    if log_dir is not None:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(log_dir, stage.name)))
    callbacks.extend(extra_callbacks)

    history = fit_model.fit(fit_train, epochs=stage.epochs, steps_per_epoch=steps_per_epoch,
                            validation_data=fit_eval, callbacks=callbacks, verbose=0, class_weight=class_weight)
    # The stage's time includes computing the cached features.
    wall_time = time.monotonic() - started

    epochs = [{'epoch': epoch + 1, **{name: float(values[i]) for name, values in history.history.items()}}
              for i, epoch in enumerate(history.epoch)]
    entry = {
        'name': stage.name,
        'unfreeze': stage.unfreeze.model_dump(exclude_none=True),
        'unfrozen_layers': unfrozen,
        'layer_lr_multipliers': multipliers,
        'trainable_params': _param_count(model.trainable_weights),
        'non_trainable_params': _param_count(model.non_trainable_weights),
        'optimizer': stage.optimizer.model_dump(),
        'learning_rate': rate,
        'schedule': stage.schedule.model_dump(),
        'epochs_planned': stage.epochs,
        'epochs_run': len(epochs),
        'resumed_at_epoch': epochs[0]['epoch'] if epochs and epochs[0]['epoch'] > 1 else None,
        'steps_per_epoch': steps_per_epoch,
        'epochs': epochs,
        # Whether model.augmentation changed the training images; whether the head trained on
        # backbone features computed once (and why not, when not).
        'augmented': augmented,
        'feature_cache': cache,
        'lr_by_step': recorder.lr_by_step,
        'wall_time_s': wall_time,
        'examples_per_s': len(recorder.lr_by_step) * batch_size / wall_time if wall_time > 0 else None,
    }
    if lr_finder is not None:
        entry['lr_finder'] = lr_finder
    return entry


def _mode(monitor: str) -> str:
    return 'min' if monitor.endswith('loss') else 'max'


def train_stages(model: keras.Model, backbone: keras.Model, stages, train_data, eval_data, steps_per_epoch: int,
                 decision_threshold: float, batch_size: int, work_dir: str, log_dir: Optional[str] = None,
                 class_weight: Optional[dict[int, float]] = None,
                 feature_cache: Optional[FeatureCache] = None, unaugmented_train_data=None) -> list:
    """Runs the stages in order and returns their log entries (`feature_cache`: see train_stage).

    `unaugmented_train_data`: the training examples of `train_data` without model.augmentation,
    for the stages with augment: false; None when `train_data` is not augmented.

    `work_dir` must be the same across restarts of the same training: a stage that completed
    left its weights and log entry there and is not run again; the stage that was interrupted
    resumes from its last epoch backup.
    """
    entries = []
    for stage in stages:
        done = os.path.join(work_dir, f'{stage.name}.done.json')
        weights = os.path.join(work_dir, f'{stage.name}.weights.h5')
        if os.path.exists(done):
            restored = _restore_stage(model, backbone, stage, done, weights)
            if restored is not None:
                entries.append(restored)
                continue
        augmented = unaugmented_train_data is not None and stage.augment
        stage_train = train_data if unaugmented_train_data is None or stage.augment else unaugmented_train_data
        entry = train_stage(model, backbone, stage, stage_train, eval_data, steps_per_epoch, decision_threshold,
                            batch_size, log_dir=log_dir, backup_dir=os.path.join(work_dir, f'{stage.name}.backup'),
                            class_weight=class_weight, feature_cache=feature_cache, augmented=augmented)
        os.makedirs(work_dir, exist_ok=True)
        # Weights first, then the mark that the stage is done; each through a temporary name.
        save_weights_atomically(model, weights)
        write_json_atomically(done, entry)
        entries.append(entry)
    return entries


def _restore_stage(model: keras.Model, backbone: keras.Model, stage, done: str, weights: str) -> Optional[dict]:
    """A completed stage's log entry, with its weights loaded into `model`; None (after one warning
    line, the files removed and the model as it was) when its files do not load."""
    start = model.get_weights()
    try:
        with open(done) as f:
            entry = json.load(f)
        freezing.apply_unfreeze(backbone, stage.unfreeze, stage.train_batchnorm)
        model.load_weights(weights)
        return {**entry, 'restored_after_restart': True}
    except (OSError, ValueError, KeyError, TypeError) as error:
        _warn(f'stage {stage.name!r}: its saved result ({os.path.dirname(done)}) does not load '
              f'({type(error).__name__}); discarded, the stage runs again')
        model.set_weights(start)
        for path in (done, weights):
            if os.path.exists(path):
                os.remove(path)
        return None


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


def augmentation_layers(augmentation: Optional[Augmentation], seed: int) -> Optional[keras.Sequential]:
    """model.augmentation as Keras' random preprocessing layers on 0-255 pixels (None: no change)."""
    if augmentation is None:
        return None
    a, layers = augmentation, []
    if a.flip:
        layers.append(keras.layers.RandomFlip(a.flip, seed=seed))
    if a.rotation:
        layers.append(keras.layers.RandomRotation(a.rotation, seed=seed + 1))
    if a.zoom:
        layers.append(keras.layers.RandomZoom(a.zoom, seed=seed + 2))
    if a.translation:
        layers.append(keras.layers.RandomTranslation(a.translation, a.translation, seed=seed + 3))
    if a.contrast:
        layers.append(keras.layers.RandomContrast(a.contrast, seed=seed + 4))
    if a.brightness:
        layers.append(keras.layers.RandomBrightness(a.brightness, value_range=(0, 255), seed=seed + 5))
    return keras.Sequential(layers, name='augmentation') if layers else None


def choose_threshold(probabilities: np.ndarray, labels: np.ndarray, target: DecisionTarget,
                     confidence: Optional[float] = 0.95, method: str = proportions.DEFAULT_METHOD) -> dict:
    """The decision threshold for `target` on these (eval split) predictions, by
    proportions.choose_threshold: for target_recall, the best precision among thresholds whose
    eval recall has a lower bound (two-sided `confidence` interval by `method`) >= target, so the
    threshold's recall on new data misses the target with probability at most (1 - confidence) / 2;
    for target_precision, the best recall among those whose precision lower bound reaches it. When
    none reaches the target, the highest lower bound, and `target_met` is false. `confidence` None:
    the point rule (the eval value itself reaches the target). Ties go to the higher threshold. A
    threshold lies halfway between two distinct probabilities, so `probability > threshold` splits
    them, as the served decision and TFMA predict.

    Returns the target (target_recall or target_precision), 'value', 'target_met', 'eval_recall',
    'eval_precision', 'eval_lower_bound' (of the targeted metric; its value with the point rule),
    'confidence', 'interval' (the method), 'eval_positives' and 'eval_examples'."""
    wanted = target.model_dump(exclude_none=True)
    try:
        chosen = proportions.choose_threshold(probabilities, labels, **wanted, confidence=confidence,
                                                  method=method)
    except ValueError as error:
        raise ValueError(f'evaluation.decision_threshold: {error}') from error
    return {'value': chosen.pop('value'), **wanted, **chosen, 'interval': method}


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


def _predictions(model: keras.Model, data: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    probabilities, labels = [], []
    for inputs, label in data:
        probabilities.append(model(inputs, training=False).numpy())
        labels.append(label.numpy())
    return np.concatenate(probabilities), np.concatenate(labels)


def eval_summary(probabilities: np.ndarray, labels: np.ndarray) -> dict:
    """The model's figures on a split, from its outputs and targets: binary (one sigmoid output)
    {'auc_pr': average precision, 'examples'}; multiclass {'accuracy', 'macro_recall' (classes
    present in `labels`), 'examples'} (scikit-learn)."""
    from sklearn import metrics

    labels = np.asarray(labels).reshape(-1)
    if probabilities.ndim == 1 or probabilities.shape[-1] == 1:
        return {'auc_pr': float(metrics.average_precision_score(labels, probabilities.reshape(-1))),
                'examples': int(len(labels))}
    predicted = np.argmax(probabilities, axis=-1)
    return {'accuracy': float(metrics.accuracy_score(labels, predicted)),
            'macro_recall': float(metrics.recall_score(labels, predicted, labels=np.unique(labels), average='macro')),
            'examples': int(len(labels))}


def _dataset(fn_args: FnArgs, files: list[str], schema, batch_size: int, seed: int, training: bool,
             shape: ImageShape, augment: Optional[keras.Sequential] = None) -> tf.data.Dataset:
    """Batches of ({image_xf: pixels [batch, H, W, C]}, label [batch]) from Transform's output; the
    images are decoded in parallel with training (components.images.decode, as the serving
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


def settings_from_custom_config(custom_config: dict) -> tuple[TrainerSection, HeadSection, ImageShape, dict]:
    """Typed settings from the Trainer's custom_config (written by pipeline.pipeline.trainer_config)."""
    return (validate(custom_config['trainer'], TrainerSection),
            validate(custom_config['head'], HeadSection),
            validate(custom_config['input'], ImageShape),
            custom_config['options'])


def augmentation_from_custom_config(custom_config: dict) -> Optional[Augmentation]:
    value = custom_config.get('augmentation')
    return None if value is None else validate(value, Augmentation)


def run_fn(fn_args: FnArgs) -> None:
    """Called by the TFX Trainer: staged fine-tuning from the imported backbone, or from the model
    in production when warm-starting."""
    settings, head, shape, options = settings_from_custom_config(fn_args.custom_config)
    keras.utils.set_random_seed(settings.seed)
    if not tf.config.list_logical_devices('GPU'):
        # The same data, config and seed train the same model: TensorFlow's multi-threaded CPU
        # kernels otherwise add up in no fixed order, and early stopping and the decision threshold
        # amplify the differences into different test counts. Process-wide, so the steps after the
        # Trainer in a local run compute deterministically too. Not on GPUs: some kernels there
        # (depthwise convolutions' gradients) have no deterministic implementation and would raise.
        tf.config.experimental.enable_op_determinism()
    transform_output = tft.TFTransformOutput(fn_args.transform_output)
    schema = transform_output.transformed_metadata.schema
    augmentation = augmentation_from_custom_config(fn_args.custom_config)
    train_files, subset_dir = fn_args.train_files, None
    if options.get('train_examples_per_class'):
        # Few labels (data.train_examples_per_class): the same path, on a file of the drawn examples.
        subset_dir = tempfile.mkdtemp(prefix='train-subset-')
        train_files = [os.path.join(subset_dir, 'train.gz')]
        subsample_per_target(fn_args.train_files, transform_output.transformed_feature_spec(),
                             options['train_examples_per_class'], settings.seed, train_files[0])
    augment = augmentation_layers(augmentation, settings.seed)
    train_data = _dataset(fn_args, train_files, schema, settings.batch_size, settings.seed, True, shape, augment)
    eval_data = _dataset(fn_args, fn_args.eval_files, schema, settings.batch_size, settings.seed, False, shape)
    train_examples = count_records(train_files)
    # Stages with augment: false read the training images as they are, in the same shuffled order.
    unaugmented_train_data = (None if augment is None else
                              _dataset(fn_args, train_files, schema, settings.batch_size, settings.seed, True, shape))
    feature_cache = FeatureCache(
        [_dataset(fn_args, train_files, schema, settings.batch_size, settings.seed, False, shape), eval_data],
        train_examples + count_records(fn_args.eval_files))
    steps_per_epoch = settings.steps_per_epoch or math.ceil(train_examples / settings.batch_size)

    backbone_path = backbone_lib.backbone_file(fn_args.base_model)
    mixed_precision = use_mixed_precision(options.get('mixed_precision', 'auto'),
                                          len(tf.config.list_logical_devices('GPU')))
    if mixed_precision:
        keras.mixed_precision.set_global_policy('mixed_float16')
    strategy = choose_strategy()
    with strategy.scope():
        backbone = backbone_lib.load_backbone(backbone_path, options.get('backbone_sha256'))
        if options.get('from_scratch'):
            # Same architecture, weights drawn afresh from each layer's initializer.
            backbone = keras.models.clone_model(backbone)
        if mixed_precision:
            backbone = with_dtype_policy(backbone, 'mixed_float16')
        model = build_model(backbone, shape, head, options.get('num_classes', 1))
    # Warm start (trainer.warm_start, and a model in production): its weights, its stage plan.
    warm_start = options.get('warm_start')
    stage_plan = settings.stages
    if warm_start:
        try:
            export.load_weights(model, warm_start['weights'])
        except ValueError as error:
            raise ValueError(f"warm start from {warm_start['production_path']}: its weights do not fit this model "
                             f'(did model.backbone, model.head or model.input change?): {error}') from error
        stage_plan = settings.warm_start.stages

    # Same place for every retry of this training (same inputs and config), so a rerun after a
    # crash resumes instead of starting over.
    fingerprint = hashlib.sha256(json.dumps(
        [fn_args.custom_config, fn_args.train_files, fn_args.transform_output, backbone_path],
        sort_keys=True, default=str).encode()).hexdigest()[:16]
    work_dir = os.path.join(os.path.dirname(os.path.dirname(fn_args.model_run_dir)), 'resume', fingerprint)
    if '://' in work_dir:
        # Object storage (a cluster's pipeline root): Keras writes its weight files with h5py, which
        # needs a local file system, so backups stay on the pod's disk. A retried pod starts over.
        work_dir = os.path.join(tempfile.gettempdir(), 'staged-finetune-resume', fingerprint)
    class_weight, counts = options.get('class_weight'), None
    if class_weight is not None:
        counts = target_counts(train_files, transform_output.transformed_feature_spec(),
                               max(2, options.get('num_classes', 1)))
        class_weight = (balanced_class_weight(counts) if class_weight == 'balanced'
                        else {int(target): float(w) for target, w in class_weight.items()})
    stages = train_stages(model, backbone, stage_plan, train_data, eval_data, steps_per_epoch,
                          options['decision_threshold'], settings.batch_size, work_dir=work_dir,
                          log_dir=os.path.join(fn_args.model_run_dir, 'logs'), class_weight=class_weight,
                          feature_cache=feature_cache, unaugmented_train_data=unaugmented_train_data)
    started_from = warm_start or ({'scratch': backbone_path} if options.get('from_scratch') else {'backbone': backbone_path})
    log = {'backbone': backbone_path, 'started_from': started_from,
           'batch_size': settings.batch_size, 'strategy': type(strategy).__name__,
           'mixed_precision': mixed_precision,
           'train_examples': train_examples,
           'train_examples_per_class': options.get('train_examples_per_class'),
           # model.augmentation, applied to the training images only (None: none).
           'augmentation': augmentation and augmentation.model_dump(exclude_defaults=True),
           # Target (0/1 binary, class index multiclass) -> weight in the loss, and the training
           # split's count of each target it was computed from.
           'class_weight': class_weight, 'train_target_counts': counts, 'stages': stages}

    # The exported model's figures on the eval split, for choosing a recipe without the test split.
    log['eval'] = eval_summary(*_predictions(model, eval_data))
    decision = None
    if not options.get('classes'):
        target = options.get('decision_target')
        decision = ({'value': options['decision_threshold']} if target is None else
                    choose_threshold(*_predictions(model, eval_data), validate(target, DecisionTarget),
                                     options.get('confidence', 0.95),
                                     options.get('interval', proportions.DEFAULT_METHOD)))
        log['decision_threshold'] = decision
    export.save_serving_model(model, transform_output, options['label_feature'], fn_args.serving_model_dir,
                              options.get('classes', ()), decision)
    fileio.makedirs(fn_args.model_run_dir)  # may be on object storage
    with fileio.open(os.path.join(fn_args.model_run_dir, TRAINING_LOG), 'w') as f:
        f.write(json.dumps(log, indent=2))
    shutil.rmtree(work_dir, ignore_errors=True)
    if subset_dir is not None:
        shutil.rmtree(subset_dir, ignore_errors=True)
