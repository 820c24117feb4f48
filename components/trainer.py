"""The Trainer's run_fn: fine-tunes a pre-trained backbone in stages and exports a servable model.

Each stage sets which backbone layers train, compiles a fresh optimizer with its own learning
rate and schedule, and fits with Keras callbacks (learning-rate recording, early stopping,
TensorBoard). Everything that happened is written to `training_log.json` in the model-run
artifact.
"""

import json
import math
import os
import time
from typing import Optional

import keras
import tensorflow as tf
import tensorflow_transform as tft
from tfx import v1 as tfx
from tfx_bsl.public import tfxio

from components import backbone as backbone_lib
from components import export, features, freezing, schedules
from pipeline.config import HeadSection, ImageShape, Stage, TrainerSection, validate

TRAINING_LOG = 'training_log.json'


class LearningRateRecorder(keras.callbacks.Callback):
    """Records the learning rate applied at every optimizer step, and at the end of each epoch."""

    def __init__(self):
        super().__init__()
        self.lr_by_step: list[float] = []

    def on_train_batch_begin(self, batch, logs=None):
        self.lr_by_step.append(schedules.current_learning_rate(self.model.optimizer))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs['learning_rate'] = schedules.current_learning_rate(self.model.optimizer)


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


def choose_strategy() -> tf.distribute.Strategy:
    """MirroredStrategy across GPUs when more than one is visible, else the default strategy."""
    if len(tf.config.list_logical_devices('GPU')) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def build_model(backbone: keras.Model, shape: ImageShape, head: HeadSection) -> keras.Model:
    """Flat image vector [batch, H*W*C] (`image_xf`) -> probability of the positive class [batch, 1].

    BatchNorm inference mode is held by freezing (components.freezing), not by training=False.
    """
    inputs = keras.Input((shape.height * shape.width * shape.channels,), name=features.IMAGE_KEY)
    x = keras.layers.Reshape((shape.height, shape.width, shape.channels), name='to_image')(inputs)
    x = backbone(x)
    for i, units in enumerate(head.hidden_units):
        x = keras.layers.Dense(units, activation='relu', name=f'head_dense_{i}')(x)
    x = keras.layers.Dropout(head.dropout, name='head_dropout')(x)
    outputs = keras.layers.Dense(1, activation='sigmoid', name='head_output')(x)
    return keras.Model(inputs, outputs, name='finetuned')


def _metrics(decision_threshold: float) -> list:
    return [
        keras.metrics.BinaryAccuracy(name='accuracy', threshold=decision_threshold),
        keras.metrics.Recall(thresholds=decision_threshold, name='recall'),
        keras.metrics.Precision(thresholds=decision_threshold, name='precision'),
        keras.metrics.AUC(curve='PR', name='auc_pr'),
    ]


def _param_count(weights) -> int:
    return int(sum(math.prod(w.shape) for w in weights))


def train_stage(model: keras.Model, backbone: keras.Model, stage: Stage, train_data, eval_data,
                steps_per_epoch: int, decision_threshold: float, batch_size: int,
                log_dir: Optional[str] = None) -> dict:
    """Runs one stage and returns its log entry.

    Raises FloatingPointError when the loss becomes NaN, so a broken model is never exported.
    """
    unfrozen = freezing.apply_unfreeze(backbone, stage.unfreeze, stage.train_batchnorm)
    learning_rate = schedules.build_learning_rate(stage.optimizer, stage.schedule, steps_per_epoch * stage.epochs)
    model.compile(optimizer=schedules.build_optimizer(stage.optimizer, learning_rate),
                  loss=keras.losses.BinaryCrossentropy(), metrics=_metrics(decision_threshold))
    recorder = LearningRateRecorder()
    callbacks = [recorder, RaiseOnNaN(stage.name)]
    if stage.early_stopping is not None:
        es = stage.early_stopping
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=es.monitor, patience=es.patience, min_delta=es.min_delta,
            mode='min' if es.monitor.endswith('loss') else 'max', restore_best_weights=True))
    if log_dir is not None:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(log_dir, stage.name)))

    started = time.monotonic()
    history = model.fit(train_data, epochs=stage.epochs, steps_per_epoch=steps_per_epoch,
                        validation_data=eval_data, callbacks=callbacks, verbose=2)
    wall_time = time.monotonic() - started

    epochs = [{name: float(values[i]) for name, values in history.history.items()}
              for i in range(len(history.epoch))]
    return {
        'name': stage.name,
        'unfreeze': stage.unfreeze.model_dump(exclude_none=True),
        'unfrozen_layers': unfrozen,
        'trainable_params': _param_count(model.trainable_weights),
        'non_trainable_params': _param_count(model.non_trainable_weights),
        'optimizer': stage.optimizer.model_dump(),
        'schedule': stage.schedule.model_dump(),
        'epochs_planned': stage.epochs,
        'epochs_run': len(epochs),
        'steps_per_epoch': steps_per_epoch,
        'epochs': [{'epoch': i + 1, **epoch} for i, epoch in enumerate(epochs)],
        'lr_by_step': recorder.lr_by_step,
        'wall_time_s': wall_time,
        'examples_per_s': len(recorder.lr_by_step) * batch_size / wall_time if wall_time > 0 else None,
    }


def count_records(file_patterns: list[str]) -> int:
    """Number of records in the (gzipped when named *.gz) TFRecord files matching the patterns."""
    files = sorted(f for pattern in file_patterns for f in tf.io.gfile.glob(pattern))
    if not files:
        raise ValueError(f'no files match {file_patterns}')
    compression = 'GZIP' if files[0].endswith('.gz') else ''
    return int(tf.data.TFRecordDataset(files, compression_type=compression).reduce(0, lambda n, _: n + 1))


def _dataset(fn_args: tfx.components.FnArgs, files: list[str], schema, batch_size: int, seed: int,
             training: bool) -> tf.data.Dataset:
    options = tfxio.TensorFlowDatasetOptions(
        batch_size=batch_size, label_key=features.LABEL_KEY, shuffle=training, shuffle_seed=seed,
        num_epochs=None if training else 1)
    return fn_args.data_accessor.tf_dataset_factory(files, options, schema)


def settings_from_custom_config(custom_config: dict) -> tuple[TrainerSection, HeadSection, ImageShape, dict]:
    """Typed settings from the Trainer's custom_config (written by pipeline.pipeline.trainer_config)."""
    return (validate(custom_config['trainer'], TrainerSection),
            validate(custom_config['head'], HeadSection),
            validate(custom_config['input'], ImageShape),
            custom_config['labels'])


def run_fn(fn_args: tfx.components.FnArgs) -> None:
    """Called by the TFX Trainer: staged fine-tuning from the imported backbone."""
    settings, head, shape, labels = settings_from_custom_config(fn_args.custom_config)
    keras.utils.set_random_seed(settings.seed)
    transform_output = tft.TFTransformOutput(fn_args.transform_output)
    schema = transform_output.transformed_metadata.schema
    train_data = _dataset(fn_args, fn_args.train_files, schema, settings.batch_size, settings.seed, training=True)
    eval_data = _dataset(fn_args, fn_args.eval_files, schema, settings.batch_size, settings.seed, training=False)
    steps_per_epoch = settings.steps_per_epoch or math.ceil(count_records(fn_args.train_files) / settings.batch_size)

    backbone_path = backbone_lib.backbone_file(fn_args.base_model)
    with choose_strategy().scope():
        backbone = backbone_lib.load_backbone(backbone_path)
        model = build_model(backbone, shape, head)

    log = {'backbone': backbone_path, 'batch_size': settings.batch_size, 'stages': []}
    for stage in settings.stages:
        entry = train_stage(model, backbone, stage, train_data, eval_data, steps_per_epoch,
                            labels['decision_threshold'], settings.batch_size,
                            log_dir=os.path.join(fn_args.model_run_dir, 'logs'))
        log['stages'].append(entry)

    export.save_serving_model(model, transform_output, labels['label_feature'], fn_args.serving_model_dir)
    os.makedirs(fn_args.model_run_dir, exist_ok=True)
    with open(os.path.join(fn_args.model_run_dir, TRAINING_LOG), 'w') as f:
        json.dump(log, f, indent=2)
