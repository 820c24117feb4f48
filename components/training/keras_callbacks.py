"""The Trainer's Keras callbacks: the learning rate at every step, a line per epoch, a stop on a NaN
loss, and a BackupAndRestore whose files are written whole or not at all."""

import json
import math
import os
import shutil
import sys

import keras

from components.training import schedules
from components.shared import storage


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


def warn(message: str) -> None:
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
            warn(f'resume backup {self.backup_dir} does not load ({type(error).__name__}: '
                  f'{" ".join(str(error).split())[:160]}); discarded, the stage starts over')
            self.model.set_weights(start)
            self.model._initial_epoch = 0
            shutil.rmtree(self.backup_dir, ignore_errors=True)

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        save_weights_atomically(self.model, self._weights_path)
        write_json_atomically(self._training_metadata_path, {'epoch': self._current_epoch,
                                                            'batch': self._last_batch_seen})
