"""The stages of a fine-tuning plan, one after another: each sets which backbone layers train,
compiles a fresh optimizer with its own learning rate and schedule, fits with its callbacks, and
resumes where an interrupted run stopped."""

import json
import os
import time
from typing import Callable, Optional, Sequence

import keras

from components.training import freezing, schedules
from components.config import Stage
from components.training.feature_cache import FeatureCache
from components.training.keras_callbacks import (AtomicBackupAndRestore, EpochLine, LearningRateRecorder, RaiseOnNaN,
                                                 warn, save_weights_atomically, write_json_atomically)
from components.training.lr_finder import find_learning_rate
from components.training.network import loss_and_metrics, param_count


def train_stage(model: keras.Model, backbone: keras.Model, stage: Stage, train_data, eval_data,
                steps_per_epoch: int, decision_threshold: float, batch_size: int,
                log_dir: Optional[str] = None, backup_dir: Optional[str] = None,
                extra_callbacks: Sequence[keras.callbacks.Callback] = (),
                class_weight: Optional[dict[int, float]] = None,
                feature_cache: Optional['FeatureCache'] = None, augmented: bool = False,
                epoch_lines: bool = True) -> dict:
    """Runs one stage and returns its log entry.

    With `feature_cache`, a stage that trains only the head on images that are not augmented
    (`augmented`: whether `train_data` is) fits a head-only model (the same layers) on the
    backbone's features, computed once; the log entry says whether it did, and why not when not.
    Optimizer, schedule, steps, batches, callbacks and class weights are the same.

    With `backup_dir`, the stage backs up at every epoch end (Keras BackupAndRestore) and a rerun
    after a crash resumes from the last completed epoch. Raises FloatingPointError when the loss
    becomes NaN, so a broken model is never exported. `extra_callbacks` run after the stage's own.
    `class_weight` (target -> weight) weighs each example's loss, as Keras' fit does.
    `epoch_lines`: print a line per epoch and one about the feature cache (a search's trials do not).
    """
    unfrozen = freezing.apply_unfreeze(backbone, stage.unfreeze, stage.train_batchnorm)
    multipliers = (schedules.layerwise_multipliers(unfrozen, stage.layerwise_decay)
                   if stage.layerwise_decay is not None else None)

    loss, metrics = loss_and_metrics(model, decision_threshold)

    started = time.monotonic()
    cache = (feature_cache or FeatureCache.unavailable('no one-pass datasets of the splits were given')
             ).for_stage(model, backbone, unfrozen, train_data, eval_data, augmented)
    fit_model, fit_train, fit_eval = model, train_data, eval_data
    if cache['cached']:
        fit_model, fit_train, fit_eval = cache.pop('head'), cache.pop('train'), cache.pop('eval')
    if feature_cache is not None and epoch_lines:
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
    callbacks = [recorder] + ([EpochLine(stage.name, stage.epochs)] if epoch_lines else []) + [RaiseOnNaN(stage.name)]
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
        'trainable_params': param_count(model.trainable_weights),
        'non_trainable_params': param_count(model.non_trainable_weights),
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
                 feature_cache: Optional[FeatureCache] = None, unaugmented_train_data=None,
                 stage_callbacks: Callable[[Stage], Sequence[keras.callbacks.Callback]] = lambda stage: (),
                 epoch_lines: bool = True) -> list:
    """Runs the stages in order and returns their log entries (`feature_cache`, `epoch_lines`: see
    train_stage; `stage_callbacks(stage)`: extra callbacks of that stage's fit).

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
                            class_weight=class_weight, feature_cache=feature_cache, augmented=augmented,
                            extra_callbacks=stage_callbacks(stage), epoch_lines=epoch_lines)
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
        warn(f'stage {stage.name!r}: its saved result ({os.path.dirname(done)}) does not load '
              f'({type(error).__name__}); discarded, the stage runs again')
        model.set_weights(start)
        for path in (done, weights):
            if os.path.exists(path):
                os.remove(path)
        return None
