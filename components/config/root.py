"""The whole config, and the rules that span its sections."""

from __future__ import annotations

import os
from typing import Optional, Union

import pydantic

from components.config.base import _Section, validate
from components.config.data import DataSection, PipelineSection, TaskSection
from components.config.evaluation import EvaluationSection
from components.config.kubeflow import KubeflowSection
from components.config.model import ModelSection
from components.config.trainer import TrainerSection
from components.config.tuning import OBJECTIVE_TASKS, TuningSection, apply_values, check_space, reused_values


class Config(_Section):
    pipeline: PipelineSection
    data: DataSection
    task: TaskSection
    model: ModelSection
    trainer: TrainerSection
    evaluation: EvaluationSection
    # Only for `python -m pipeline compile` / `schedule`.
    kubeflow: Optional[KubeflowSection] = None
    # The search for the training values (components/config/tuning.py); None trains the config's.
    tuning: Optional[TuningSection] = None

    @pydantic.model_validator(mode='after')
    def _cluster_data(self) -> 'Config':
        if self.kubeflow is not None and self.data.source == 'digits':
            raise ValueError('kubeflow: expected data.source tfrecord, images or csv with data.path on object storage '
                             f'(got data.source {self.data.source!r}, which is written on this machine)')
        return self

    @pydantic.model_validator(mode='after')
    def _consistent(self) -> 'Config':
        for s in self.evaluation.slices:
            if s.feature == self.data.label_feature:
                raise ValueError(
                    f'evaluation.slices: feature {s.feature!r} is the label; recall and precision are undefined on '
                    f'slices without positives, which fails the gate. For per-class floors use task.type '
                    f'multiclass with evaluation.class_thresholds')
        digits = self.data.digits_classes if self.data.source == 'digits' else None
        if self.task.type == 'binary':
            if self.data.source != 'digits' and self.data.labels is None:
                raise ValueError(
                    f'data.labels: required for a binary task on your own data: the label values it may hold, '
                    f'e.g. [0, {self.task.positive_class}]. Every value but task.positive_class '
                    f'{self.task.positive_class} is a negative, so an undeclared value (a typo, -1 for '
                    f'"unknown") would silently train as one; with data.labels it stops the run before training')
            if self.data.labels is not None and self.task.positive_class not in self.data.labels:
                raise ValueError(f'task.positive_class {self.task.positive_class} is not among data.labels '
                                 f'{list(self.data.labels)}')
            if digits and self.task.positive_class not in digits:
                raise ValueError(f'task.positive_class {self.task.positive_class} is not among data.digits_classes '
                                 f'{list(digits)}')
            if self.evaluation.class_thresholds:
                raise ValueError('evaluation.class_thresholds is for task.type multiclass; binary floors go in '
                                 'evaluation.thresholds')
            return self
        if self.evaluation.decision_target is not None:
            raise ValueError('evaluation.decision_threshold: a target recall or precision is for binary tasks; '
                             'a multiclass model predicts its most probable class')
        if self.task.classes is None and digits is None:
            raise ValueError('task.classes: expected the label values (in output order) for a multiclass task')
        classes = self.classes
        if digits and set(classes) != set(digits):
            raise ValueError(f'task.classes {list(classes)} differ from data.digits_classes {list(digits)}')
        unknown = sorted(set(self.evaluation.class_thresholds) - set(classes))
        if unknown:
            raise ValueError(f'evaluation.class_thresholds names {unknown}, which are not among task.classes '
                             f'{list(classes)}')
        return self

    @pydantic.model_validator(mode='after')
    def _searchable(self) -> 'Config':
        if self.tuning is None:
            return self
        objective = self.tuning.objective
        if objective is not None and OBJECTIVE_TASKS[objective] != self.task.type:
            raise ValueError(f'tuning.objective = {objective!r}: expected an objective of a {self.task.type} task '
                             f'({", ".join(o for o, t in OBJECTIVE_TASKS.items() if t == self.task.type)})')
        data = self.model_dump(mode='json', exclude={'tuning'})
        if self.tuning.reuse is None:
            check_space(data, self.tuning, validate)
        elif '://' not in self.tuning.reuse:
            where = f'tuning.reuse = {self.tuning.reuse!r}'
            try:
                values = reused_values(self.tuning.reuse)
            except ValueError as error:
                raise ValueError(f'{where}: {error}') from None
            try:
                validate(apply_values(data, values))
            except ValueError as error:
                raise ValueError(f'{where}: its values do not fit this config: {error}') from None
        return self

    @pydantic.model_validator(mode='after')
    def _class_weights_known(self) -> 'Config':
        self._check_class_weight()
        return self

    @property
    def class_weight(self) -> Union[str, dict[int, float], None]:
        """trainer.class_weight as Keras' fit takes it: 'balanced' (resolved by the Trainer from the
        training split), None, or the model's target (0/1 for binary, the class index for multiclass)
        -> weight."""
        weights = self.trainer.class_weight
        if not isinstance(weights, dict):
            return weights
        if self.task.type == 'multiclass':
            return {i: weights.get(label, 1.0) for i, label in enumerate(self.classes)}
        negatives = {w for label, w in weights.items() if label != self.task.positive_class}
        return {0: negatives.pop() if negatives else 1.0, 1: weights.get(self.task.positive_class, 1.0)}

    def _check_class_weight(self) -> None:
        weights = self.trainer.class_weight
        if not isinstance(weights, dict):
            return
        known = self.known_labels if self.task.type == 'binary' else self.classes
        unknown = sorted(set(weights) - set(known)) if known is not None else []
        if unknown:
            raise ValueError(f'trainer.class_weight names labels {unknown}, which are not among the labels '
                             f'{list(known)}')
        if self.task.type == 'binary':
            negatives = {label: w for label, w in weights.items() if label != self.task.positive_class}
            if len(set(negatives.values())) > 1:
                raise ValueError(f'trainer.class_weight: a binary task weighs all negatives alike, got '
                                 f'{negatives} for the labels that are not positive_class '
                                 f'{self.task.positive_class}')

    @property
    def classes(self) -> tuple[int, ...]:
        """multiclass: the label values in the order of the model's outputs."""
        return self.task.classes or self.data.digits_classes

    @property
    def output_classes(self) -> tuple[int, ...]:
        """The label value of each model output: `classes` for multiclass, () for binary (one output)."""
        return self.classes if self.task.type == 'multiclass' else ()

    @property
    def known_labels(self) -> Optional[tuple[int, ...]]:
        """The label values data validation accepts (None: any)."""
        if self.data.labels is not None:
            return self.data.labels
        if self.task.type == 'multiclass':
            return self.classes
        return self.data.digits_classes if self.data.source == 'digits' else None

    @property
    def run_dir(self) -> str:
        return os.path.join(self.pipeline.runs_dir, self.pipeline.name)
