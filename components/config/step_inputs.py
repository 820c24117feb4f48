"""What the pipeline hands Transform and the Trainer: one validated class each.

pipeline.pipeline builds them from the Config and passes them as the step's custom_config (JSON);
preprocessing_fn and run_fn parse that once with `validate(custom_config, TransformInputs)` or
`TrainerInputs`. Every field is required unless the step can run without it, so no default stands
in for a value the pipeline forgot to send.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

import pydantic

from components.config.base import Label, _Section, bounded
from components.config.data import ExamplesPerClass, ImagePixels, ImageShape
from components.config.evaluation import DecisionTarget
from components.config.model import Augmentation, HeadSection
from components.config.trainer import TrainerSection
from components.config.tuning import TuningSection


class TransformInputs(_Section):
    """custom_config of Transform's preprocessing_fn."""

    # A digest of the code Transform and the Trainer run (pipeline.pipeline.code_fingerprint): an
    # edit there changes the step's cache key.
    code: str
    image_feature: str
    label_feature: str
    task: Literal['binary', 'multiclass']
    # binary: the label value that is the positive class (None for multiclass).
    positive_class: Optional[Label]
    # multiclass: the label values in the model's output order (() for binary).
    classes: tuple[Label, ...]
    max_image_pixels: ImagePixels
    input: ImageShape

    @pydantic.model_validator(mode='after')
    def _task_fields(self) -> 'TransformInputs':
        if (self.task == 'binary') != (self.positive_class is not None) or (self.task == 'multiclass') != bool(self.classes):
            raise ValueError('expected positive_class for a binary task and classes for a multiclass one')
        return self


class WarmStartWeights(_Section):
    """The model in production to start from: its warm-start weights and where it is served."""

    weights: str
    production_path: str
    production_version: str


class TrainerInputs(_Section):
    """custom_config of the Trainer's run_fn."""

    code: str
    trainer: TrainerSection
    head: HeadSection
    input: ImageShape
    augmentation: Optional[Augmentation]
    label_feature: str
    # multiclass: the label values in the model's output order; () for binary (one sigmoid output).
    classes: tuple[Label, ...]
    # The binary threshold the model decides at, unless decision_target chooses one on the eval split.
    decision_threshold: bounded(float, gt=0, lt=1)
    decision_target: Optional[DecisionTarget]
    # How the threshold is chosen for decision_target: its eval recall's (or precision's) lower bound
    # at this confidence must reach the target (None: the point rule). Sent only with a target, so
    # that changing the gate's confidence alone re-gates the trained model instead of training again.
    confidence: Optional[bounded(float, gt=0, lt=1)] = None
    interval: Optional[Literal['clopper_pearson', 'wilson']] = None
    mixed_precision: Union[bool, Literal['auto']]
    # The backbone's architecture with freshly initialised weights (pipeline.compare's `scratch`).
    from_scratch: bool
    # Target (0/1 binary, class index multiclass) -> weight, or 'balanced' from the training counts.
    class_weight: Union[Literal['balanced'], dict[int, float], None]
    train_examples_per_class: Optional[ExamplesPerClass]
    # The backbone file's pinned SHA-256 (model.backbone.sha256 with keras_file), checked where the
    # Trainer reads its copy of the file.
    backbone_sha256: Optional[str]
    # Set by the Trainer step's executor when trainer.warm_start applies and a model is in production.
    warm_start: Optional[WarmStartWeights] = None
    # Set by the Trainer step's executor when it is given a HyperParameters artifact: its location.
    hyperparameters_from: Optional[str] = None

    @pydantic.model_validator(mode='after')
    def _threshold_choice(self) -> 'TrainerInputs':
        if self.decision_target is None and (self.confidence is not None or self.interval is not None):
            raise ValueError('confidence and interval choose a threshold for decision_target; there is none')
        if self.decision_target is not None and self.classes:
            raise ValueError('decision_target is for a binary model; classes are set')
        return self

    @property
    def num_classes(self) -> int:
        """Outputs of the model: one (a sigmoid) for binary, one per class for multiclass."""
        return len(self.classes) or 1


class TunerInputs(_Section):
    """custom_config of the tuning step: the Trainer's inputs its trials start from, and the search."""

    trainer: TrainerInputs
    tuning: TuningSection
    objective: Literal['auc_pr', 'accuracy', 'macro_recall']
