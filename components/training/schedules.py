"""Learning rates and optimizers for a stage, built from the config with Keras' own classes.

Schedules are functions of the optimizer step within the stage, so they continue across epochs.
Keras ships constant, cosine (with warm-up), cosine with restarts and exponential/step decay;
written here are only what it lacks: a warm-up in front of any schedule, one-cycle, and
per-layer rate multipliers for discriminative fine-tuning.
"""

import math
from typing import Optional

import keras

from components.config import Optimizer, Schedule

_OPTIMIZERS = {
    'adam': keras.optimizers.Adam,
    'adamw': keras.optimizers.AdamW,
    'sgd': keras.optimizers.SGD,
    'rmsprop': keras.optimizers.RMSprop,
}


def _cosine_between(start, end, fraction):
    """Half a cosine from `start` (fraction 0) to `end` (fraction 1)."""
    return end + (start - end) * 0.5 * (1.0 + keras.ops.cos(math.pi * fraction))


@keras.saving.register_keras_serializable(package='staged_finetune')
class WarmupThen(keras.optimizers.schedules.LearningRateSchedule):
    """Rises linearly from 0 to `target` over `warmup_steps`; then follows `after` (counted from the
    end of the warm-up), or holds `target` when `after` is None."""

    def __init__(self, target: float, warmup_steps: int, after=None):
        self.target = target
        self.warmup_steps = warmup_steps
        self.after = after

    def __call__(self, step):
        step = keras.ops.cast(step, 'float32')
        warming = self.target * step / float(self.warmup_steps)
        rest = self.target if self.after is None else self.after(keras.ops.maximum(step - self.warmup_steps, 0.0))
        return keras.ops.where(step < self.warmup_steps, warming, rest)

    def get_config(self):
        after = None if self.after is None else keras.optimizers.schedules.serialize(self.after)
        return {'target': self.target, 'warmup_steps': self.warmup_steps, 'after': after}

    @classmethod
    def from_config(cls, config):
        after = config['after'] and keras.optimizers.schedules.deserialize(config['after'])
        return cls(config['target'], config['warmup_steps'], after)


@keras.saving.register_keras_serializable(package='staged_finetune')
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """fastai's one-cycle policy: a cosine rise from max_lr / div_factor to max_lr over the first
    `pct_start` of `total_steps`, then a cosine fall to max_lr / (div_factor * final_div_factor)."""

    def __init__(self, max_lr: float, total_steps: int, pct_start: float = 0.25, div_factor: float = 25.0,
                 final_div_factor: float = 1e4):
        self.max_lr = max_lr
        self.total_steps = total_steps
        self.pct_start = pct_start
        self.div_factor = div_factor
        self.final_div_factor = final_div_factor

    def __call__(self, step):
        step = keras.ops.cast(step, 'float32')
        rise = max(1.0, round(self.pct_start * self.total_steps))
        fall = max(1.0, self.total_steps - rise)
        start = self.max_lr / self.div_factor
        end = start / self.final_div_factor
        rising = _cosine_between(start, self.max_lr, keras.ops.minimum(step / rise, 1.0))
        falling = _cosine_between(self.max_lr, end, keras.ops.clip((step - rise) / fall, 0.0, 1.0))
        return keras.ops.where(step < rise, rising, falling)

    def get_config(self):
        return {'max_lr': self.max_lr, 'total_steps': self.total_steps, 'pct_start': self.pct_start,
                'div_factor': self.div_factor, 'final_div_factor': self.final_div_factor}


def build_learning_rate(rate: float, schedule: Schedule, total_steps: int, steps_per_epoch: int):
    """A float (constant rate) or a LearningRateSchedule over a stage of `total_steps` optimizer steps."""
    warmup = min(schedule.warmup_steps, total_steps)
    remaining = max(total_steps - warmup, 1)
    decay_steps = schedule.decay_steps or steps_per_epoch
    schedules = keras.optimizers.schedules
    if schedule.name == 'cosine':
        # Keras' CosineDecay has the warm-up built in.
        if warmup:
            return schedules.CosineDecay(0.0, decay_steps=remaining, alpha=schedule.alpha,
                                         warmup_target=rate, warmup_steps=warmup)
        return schedules.CosineDecay(rate, decay_steps=total_steps, alpha=schedule.alpha)
    after: Optional[schedules.LearningRateSchedule] = None
    if schedule.name in ('exponential', 'step'):
        after = schedules.ExponentialDecay(rate, decay_steps=decay_steps, decay_rate=schedule.decay_rate,
                                           staircase=schedule.name == 'step')
    elif schedule.name == 'cosine_restarts':
        after = schedules.CosineDecayRestarts(rate, first_decay_steps=decay_steps, t_mul=schedule.t_mul,
                                              m_mul=schedule.m_mul, alpha=schedule.alpha)
    elif schedule.name == 'one_cycle':
        after = OneCycle(rate, remaining, schedule.pct_start, schedule.div_factor, schedule.final_div_factor)
    if warmup:
        return WarmupThen(rate, warmup, after)
    return rate if after is None else after


def layerwise_multipliers(unfrozen_layer_names: list[str], decay: float) -> dict[str, float]:
    """Rate multiplier per unfrozen backbone layer (input to output order): the top one learns at
    the full rate, each one below at `decay` times the rate of the one above it."""
    return {name: decay ** depth for depth, name in enumerate(reversed(unfrozen_layer_names))}


def _variable_keys(variable) -> list:
    """Identities under which the optimizer may meet `variable` in update_step: the backend
    variable and, under a distribution strategy, each replica's component."""
    value = getattr(variable, 'value', variable)
    return [value.ref()] + [component.ref() for component in getattr(value, 'values', ())]


def _with_rate_multipliers(optimizer_class):
    """`optimizer_class` whose update for each variable uses learning_rate * its multiplier.

    Keras 3 has no per-variable learning rates; every built-in optimizer routes each variable's
    update through `update_step(gradient, variable, learning_rate)`, so scaling the rate there
    scales the step exactly as a separate optimizer per layer group would.
    """

    class RateMultiplied(optimizer_class):
        def __init__(self, multipliers: dict, **kwargs):
            super().__init__(**kwargs)
            self._multipliers = multipliers

        def update_step(self, gradient, variable, learning_rate):
            multiplier = self._multipliers.get(variable.ref(), 1.0)
            if multiplier != 1.0:
                learning_rate = learning_rate * multiplier
            return super().update_step(gradient, variable, learning_rate)

    RateMultiplied.__name__ = f'RateMultiplied{optimizer_class.__name__}'
    return RateMultiplied


def build_optimizer(optimizer: Optimizer, learning_rate, layer_multipliers: Optional[dict] = None,
                    model: Optional[keras.Model] = None) -> keras.optimizers.Optimizer:
    """The configured Keras optimizer with weight decay and gradient clipping.

    `layer_multipliers` (layer name -> factor, for layers of `model`) gives those layers' weights
    a fraction of the rate.
    """
    kwargs = {'learning_rate': learning_rate, 'clipnorm': optimizer.clipnorm}
    if optimizer.name == 'adamw':
        kwargs['weight_decay'] = 0.004 if optimizer.weight_decay is None else optimizer.weight_decay
    else:
        kwargs['weight_decay'] = optimizer.weight_decay
    if optimizer.name in ('sgd', 'rmsprop'):
        kwargs['momentum'] = optimizer.momentum
    optimizer_class = _OPTIMIZERS[optimizer.name]
    if not layer_multipliers:
        return optimizer_class(**kwargs)
    by_variable = {}
    for layer in _all_layers(model):
        if layer.name in layer_multipliers:
            for variable in layer.trainable_weights:
                for key in _variable_keys(variable):
                    by_variable[key] = layer_multipliers[layer.name]
    return _with_rate_multipliers(optimizer_class)(by_variable, **kwargs)


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def current_learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    """The rate the optimizer applies at its next step (a schedule evaluated at `iterations`)."""
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
