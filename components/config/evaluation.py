"""The release gate: floors, maximum drops against production, slices and the decision threshold."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

import pydantic

from components.config.base import _Section, bounded


# A metric, a drop of one, a target: a fraction.
Fraction = bounded(float, ge=0, le=1)


GATE_METRICS = ('recall', 'precision', 'auc_pr', 'accuracy')


class Floors(_Section):
    """Absolute floors: the gate passes only if each metric set here is >= its value.

    Metrics left unset are still computed and reported, for information only.
    binary: of the positive class at the decision threshold (auc_pr: area under its PR curve).
    multiclass: the macro average over classes; accuracy: the share whose most probable class is right.
    """

    recall: Optional[Fraction] = None
    precision: Optional[Fraction] = None
    auc_pr: Optional[Fraction] = None
    accuracy: Optional[Fraction] = None

    def items(self) -> list[tuple[str, float]]:
        return [(k, v) for k in GATE_METRICS if (v := getattr(self, k)) is not None]


class ClassFloors(Floors):
    """Floors for one class of a multiclass task (accuracy is not per class)."""

    accuracy: None = None


class MaxDrop(_Section):
    """Regression limits against the model in production (the latest pushed one): the candidate's
    metric may be at most this much below production's on the same split. First run: no limits apply.
    """

    recall: Optional[Fraction] = None
    precision: Optional[Fraction] = None
    auc_pr: Optional[Fraction] = None
    accuracy: Optional[Fraction] = None

    items = Floors.items


class Slice(_Section):
    """A feature of the raw examples; the floors apply again within each of its values."""

    feature: str = pydantic.Field(min_length=1)
    # Only these values (default: every value found in the split).
    values: Optional[tuple[Union[int, str], ...]] = pydantic.Field(default=None, min_length=1)


class DecisionTarget(_Section):
    """A binary decision threshold chosen on data: after training, on the `eval` split (never
    `test`), the Trainer takes the threshold with the best precision among those whose eval
    recall's lower bound at evaluation.confidence (two-sided evaluation.interval) reaches
    `target_recall`, so its recall on new data falls short with probability at most
    (1 - confidence) / 2 (or the best recall among those whose precision's lower bound reaches
    `target_precision`); with confidence null, the point rule: the eval value itself reaches the
    target. The exported model carries it and serves the decision with it; the gate applies it on
    `test`."""

    target_recall: Optional[bounded(float, gt=0, le=1)] = None
    target_precision: Optional[bounded(float, gt=0, le=1)] = None

    @pydantic.model_validator(mode='after')
    def _exactly_one(self) -> 'DecisionTarget':
        if (self.target_recall is None) == (self.target_precision is None):
            raise ValueError('expected exactly one of target_recall, target_precision')
        return self


class EvaluationSection(_Section):
    """The release gate, read on the held-out `test` split (training never saw it, and early
    stopping and learning-rate reduction watched `eval`, so it does not flatter the model)."""

    thresholds: Floors
    # multiclass: floors per class, keyed by label value.
    # Keys are checked against task.classes.
    class_thresholds: dict[int, ClassFloors] = {}
    max_drop: MaxDrop = MaxDrop()
    # Each slice is evaluated again over the test split: a few features, not a survey.
    slices: tuple[Slice, ...] = pydantic.Field(default=(), max_length=32)
    # binary: probability above which an example is predicted positive: a number, or
    # {target_recall: R} / {target_precision: P} to have the Trainer choose it on the eval split
    # (DecisionTarget). (multiclass: the most probable class is the prediction.)
    decision_threshold: Union[DecisionTarget, float] = 0.5
    # How sure the gate must be (README "Choosing the gate"): a floor passes only when the lower
    # end of the metric's two-sided interval at this level clears it; the candidate is worse than
    # production only when the interval for its drop lies above max_drop; a decision threshold
    # chosen on eval meets its target at this level. null: the point rule (the value itself).
    confidence: Optional[bounded(float, gt=0.5, lt=1)] = 0.95
    # The binomial interval of recall, precision and accuracy (components.statistics).
    interval: Literal['clopper_pearson', 'wilson'] = 'clopper_pearson'

    @pydantic.field_validator('decision_threshold', mode='before')
    @classmethod
    def _threshold(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise ValueError('expected a number between 0 and 1 (exclusive), or {target_recall: R} or '
                             '{target_precision: P}')
        return float(value)

    @property
    def fixed_threshold(self) -> float:
        """The threshold the Trainer's metrics use: the number given, or 0.5 until one is chosen."""
        return self.decision_threshold if isinstance(self.decision_threshold, float) else 0.5

    @property
    def decision_target(self) -> Optional[DecisionTarget]:
        return self.decision_threshold if isinstance(self.decision_threshold, DecisionTarget) else None

    @pydantic.model_validator(mode='after')
    def _something_gated(self) -> 'EvaluationSection':
        if not self.thresholds.items() and not any(f.items() for f in self.class_thresholds.values()):
            raise ValueError('thresholds = {} and no class_thresholds: expected at least one floor '
                             '(a gate without floors would bless any model)')
        return self
