"""The fine-tuning stages: what trains, the optimizer, its schedule and callbacks, the warm start."""

from __future__ import annotations

import re
from typing import Any, Literal, Optional, Union

import pydantic

from components.config.base import MAX_LEARNING_RATE, MAX_STAGES, Epochs, LearningRate, Seed, Steps, _Section, bounded


# Epochs without improvement before reacting: at most the epochs a stage can have.
Patience = bounded(int, ge=0, le=10_000)
# A class weight above 1000 lets one example outweigh a thousand: past reweighting, into ignoring the rest.
MAX_CLASS_WEIGHT = 1000


class Unfreeze(_Section):
    """Which backbone layers train in a stage; the head always trains.

    Given as `none`, `all`, or a mapping with exactly one of the keys below.
    """

    mode: Literal['none', 'all', 'top_layers', 'top_fraction', 'from_layer', 'pattern']
    # The largest keras.applications networks have about a thousand layers.
    top_layers: Optional[bounded(int, ge=1, le=10_000)] = None
    top_fraction: Optional[bounded(float, gt=0, le=1)] = None
    from_layer: Optional[str] = None
    pattern: Optional[str] = None

    @pydantic.model_validator(mode='before')
    @classmethod
    def _from_yaml(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value not in ('none', 'all'):
                raise ValueError(
                    "expected 'none', 'all' or one of {top_layers: N}, {top_fraction: F}, "
                    '{from_layer: NAME}, {pattern: REGEX}')
            return {'mode': value}
        if isinstance(value, dict) and 'mode' not in value:
            if len(value) != 1:
                raise ValueError('expected exactly one of top_layers, top_fraction, from_layer, pattern')
            return {'mode': next(iter(value)), **value}
        return value

    @pydantic.field_validator('pattern')
    @classmethod
    def _regex(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            try:
                re.compile(value)
            except re.error as e:
                raise ValueError(f'expected a regular expression ({e})') from None
        return value

    @pydantic.model_validator(mode='after')
    def _value_for_mode(self) -> 'Unfreeze':
        if self.mode not in ('none', 'all') and getattr(self, self.mode) is None:
            raise ValueError(f'expected a value for {self.mode}')
        return self


class Schedule(_Section):
    """Step-based learning-rate schedule; steps count optimizer updates from the start of the stage.

    constant; cosine (to alpha * rate at the end of the stage); cosine_restarts (period
    decay_steps, each next period t_mul times longer and m_mul times lower); exponential
    (rate * decay_rate ** (step / decay_steps)); step (the same, dropping once per decay_steps);
    one_cycle (rises from rate / div_factor to rate over pct_start of the stage, then anneals to
    rate / (div_factor * final_div_factor)). Any of them may follow a linear warm-up.
    """

    name: Literal['constant', 'cosine', 'cosine_restarts', 'exponential', 'step', 'one_cycle'] = 'constant'
    # Linear warm-up from 0 to the stage's learning rate over this many optimizer steps.
    warmup_steps: bounded(int, ge=0, le=10_000_000) = 0
    alpha: bounded(float, ge=0, le=1) = 0.0
    # exponential, step, cosine_restarts; None means one epoch.
    decay_steps: Optional[Steps] = None
    decay_rate: bounded(float, gt=0, le=1) = 0.5
    t_mul: bounded(float, ge=1, le=100) = 2.0
    m_mul: bounded(float, gt=0, le=1) = 1.0
    pct_start: bounded(float, gt=0, lt=1) = 0.25
    # one_cycle starts at rate / div_factor and ends at rate / (div_factor * final_div_factor).
    # fastai's defaults are 25 and 1e4; a rate divided by more than the ceilings' 1e15 no longer
    # moves a float32 weight.
    div_factor: bounded(float, ge=1, le=1e6) = 25.0
    final_div_factor: bounded(float, ge=1, le=1e9) = 1e4


class LearningRateFinder(_Section):
    """The LR range test run for `learning_rate: auto`: the rate grows exponentially from min_lr to
    max_lr over `steps` optimizer steps (fewer if the loss diverges); the choice is the rate at the
    lowest smoothed loss divided by `divisor` (fastai's lr_find rule of thumb)."""

    min_lr: LearningRate = 1e-7
    max_lr: LearningRate = 1.0
    steps: bounded(int, ge=10, le=100_000) = 200
    divisor: bounded(float, ge=1, le=1000) = 10.0

    @pydantic.model_validator(mode='after')
    def _range(self) -> 'LearningRateFinder':
        if self.max_lr <= self.min_lr:
            raise ValueError(f'expected max_lr > min_lr, got {self.max_lr} <= {self.min_lr}')
        return self


class Optimizer(_Section):
    name: Literal['adam', 'adamw', 'sgd', 'rmsprop'] = 'adam'
    # A number in (0, MAX_LEARNING_RATE], or 'auto' to pick it by an LR range test (see LearningRateFinder).
    learning_rate: Union[float, Literal['auto']]
    momentum: bounded(float, ge=0, lt=1) = 0.0
    # Usual values are 1e-5 to 0.1; at 1 a step at rate 1 already zeroes every weight.
    weight_decay: Optional[bounded(float, ge=0, le=1)] = None
    clipnorm: Optional[bounded(float, gt=0, le=1e6)] = None

    @pydantic.field_validator('learning_rate', mode='before')
    @classmethod
    def _rate(cls, value: Any) -> Any:
        if value == 'auto':
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_LEARNING_RATE:
            raise ValueError(f"expected a finite number > 0 and <= {MAX_LEARNING_RATE}, or 'auto'")
        return float(value)


class EarlyStopping(_Section):
    """Stops a stage when the validation metric stalls; the best weights are restored."""

    monitor: str = 'val_loss'
    patience: Patience = 2
    # A change of the monitored metric (a loss, or a rate in [0, 1]) smaller than this is no improvement.
    min_delta: bounded(float, ge=0, le=1000) = 0.0

    @pydantic.field_validator('monitor')
    @classmethod
    def _validation_metric(cls, value: str) -> str:
        if not value.startswith('val_'):
            raise ValueError('expected a validation metric (val_loss, val_recall, val_precision, val_auc_pr, ...)')
        return value


class ReduceOnPlateau(EarlyStopping):
    """Multiplies the learning rate by `factor` when the validation metric stalls for `patience` epochs."""

    patience: Patience = 1
    factor: bounded(float, gt=0, lt=1) = 0.5
    min_lr: bounded(float, ge=0, le=MAX_LEARNING_RATE) = 0.0


class Stage(_Section):
    # Names a directory of the Trainer's output (its TensorBoard logs), so never '.' or '..'.
    name: str = pydantic.Field(pattern=r'^[A-Za-z0-9_.-]+$')
    epochs: Epochs
    unfreeze: Unfreeze
    # Let unfrozen BatchNormalization layers train (and so run in training mode); off by default.
    train_batchnorm: bool = False
    optimizer: Optimizer
    schedule: Schedule = Schedule()
    lr_finder: LearningRateFinder = LearningRateFinder()
    reduce_on_plateau: Optional[ReduceOnPlateau] = None
    # Discriminative rates: each unfrozen backbone layer (with weights) learns at this fraction of
    # the rate of the layer above it; the top unfrozen layer and the head learn at the full rate.
    layerwise_decay: Optional[bounded(float, gt=0, le=1)] = None
    early_stopping: Optional[EarlyStopping] = None
    # Whether model.augmentation changes this stage's training images. false: the stage trains on
    # them as they are, and a stage that trains only the head on a frozen backbone then computes the
    # backbone's features once and reuses them every epoch (README "Speed").
    augment: bool = True

    @pydantic.field_validator('name')
    @classmethod
    def _not_a_relative_directory(cls, value: str) -> str:
        if set(value) == {'.'}:
            raise ValueError('expected a name with a letter, digit, _ or - in it (it names a directory of the '
                             "Trainer's output)")
        return value

    @pydantic.model_validator(mode='after')
    def _plateau_needs_a_settable_rate(self) -> 'Stage':
        if self.reduce_on_plateau is not None and (self.schedule.name != 'constant' or self.schedule.warmup_steps):
            raise ValueError(
                f'reduce_on_plateau needs schedule constant without warm-up (it sets the rate directly), '
                f'got schedule {self.schedule.name!r} with warmup_steps {self.schedule.warmup_steps}')
        return self


def _distinct_stage_names(value: tuple[Stage, ...]) -> tuple[Stage, ...]:
    names = [s.name for s in value]
    if len(set(names)) != len(names):
        raise ValueError(f'expected distinct stage names, got {names}')
    return value


class WarmStart(_Section):
    """Retraining from the model in production instead of the backbone: when a model has been
    pushed, the Trainer loads its weights and runs these stages (typically one short stage at a
    low rate); the first run, with nothing in production, runs `trainer.stages` from the backbone.
    The model architecture (model.backbone, model.head, model.input) must not change in between."""

    stages: tuple[Stage, ...] = pydantic.Field(min_length=1, max_length=MAX_STAGES)

    _names = pydantic.field_validator('stages')(_distinct_stage_names)


class TrainerSection(_Section):
    # 65,536 images of 224 x 224 x 3 are 39 GB as float32: past any accelerator's memory.
    batch_size: bounded(int, ge=1, le=65_536) = 32
    # None: one pass over the training split per epoch.
    steps_per_epoch: Optional[Steps] = None
    seed: Seed = 0
    # Weights of each class in the training loss (Keras' fit class_weight). `balanced`: n / (k * n_c)
    # from the training split's counts, as scikit-learn's compute_class_weight. Or label value ->
    # weight (unlisted labels weigh 1); binary tasks weigh positives and negatives, so every negative
    # label listed must have the same weight.
    class_weight: Union[Literal['balanced'], dict[int, float], None] = None
    stages: tuple[Stage, ...] = pydantic.Field(min_length=1, max_length=MAX_STAGES)
    warm_start: Optional[WarmStart] = None

    _names = pydantic.field_validator('stages')(_distinct_stage_names)

    @pydantic.field_validator('class_weight', mode='before')
    @classmethod
    def _class_weight(cls, value: Any) -> Any:
        if value is None or value == 'balanced':
            return value
        expected = (f"expected 'balanced' or a mapping from label value to a weight > 0 and <= {MAX_CLASS_WEIGHT}, "
                    f"e.g. {{1: 4.0}}")
        if not isinstance(value, dict) or not value:
            raise ValueError(expected)
        for label, weight in value.items():
            if (not re.fullmatch(r'-?\d+', str(label)) or isinstance(weight, bool) or not isinstance(weight, (int, float))
                    or not 0 < weight <= MAX_CLASS_WEIGHT):
                raise ValueError(f'weight {weight!r} for label {label}: {expected}')
        # Keys arrive as text from JSON.
        return {int(k): float(w) for k, w in value.items()}
