"""Learning rates and optimizers for a stage, built from the config with Keras' own classes.

Schedules are functions of the optimizer step within the stage, so they continue across epochs.
"""

import keras

from pipeline.config import Optimizer, Schedule


@keras.saving.register_keras_serializable(package='staged_finetune')
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """Rises linearly from 0 to `target` over `warmup_steps`, then holds `target`.

    Keras ships warm-up only inside CosineDecay; this is the same ramp for a constant rate.
    """

    def __init__(self, target: float, warmup_steps: int):
        self.target = target
        self.warmup_steps = warmup_steps

    def __call__(self, step):
        step = keras.ops.cast(step, 'float32')
        return self.target * keras.ops.minimum(1.0, step / float(self.warmup_steps))

    def get_config(self):
        return {'target': self.target, 'warmup_steps': self.warmup_steps}


def build_learning_rate(optimizer: Optimizer, schedule: Schedule, total_steps: int):
    """A float (constant rate) or a LearningRateSchedule over `total_steps` optimizer steps."""
    rate = optimizer.learning_rate
    if schedule.name == 'constant':
        return LinearWarmup(rate, schedule.warmup_steps) if schedule.warmup_steps else rate
    warmup = min(schedule.warmup_steps, total_steps)
    if warmup:
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0, decay_steps=max(total_steps - warmup, 1), alpha=schedule.alpha,
            warmup_target=rate, warmup_steps=warmup)
    return keras.optimizers.schedules.CosineDecay(rate, decay_steps=total_steps, alpha=schedule.alpha)


def build_optimizer(optimizer: Optimizer, learning_rate) -> keras.optimizers.Optimizer:
    """The configured Keras optimizer with weight decay and gradient clipping."""
    common = {'learning_rate': learning_rate, 'clipnorm': optimizer.clipnorm}
    if optimizer.name == 'adam':
        return keras.optimizers.Adam(weight_decay=optimizer.weight_decay, **common)
    if optimizer.name == 'adamw':
        decay = 0.004 if optimizer.weight_decay is None else optimizer.weight_decay
        return keras.optimizers.AdamW(weight_decay=decay, **common)
    if optimizer.name == 'sgd':
        return keras.optimizers.SGD(momentum=optimizer.momentum, weight_decay=optimizer.weight_decay, **common)
    return keras.optimizers.RMSprop(momentum=optimizer.momentum, weight_decay=optimizer.weight_decay, **common)


def current_learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    """The rate the optimizer applies at its next step (a schedule evaluated at `iterations`)."""
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
