"""The search for the training values: which fields are searched and over what, the budget, the
objective, and where the values of an earlier search are reused from.

`tuning.space` is keyed by the dotted path of the field it searches, as Ludwig's
`hyperopt.parameters` is, with stages named rather than numbered:

    tuning:
      trials: 12
      space:
        trainer.stages.head.optimizer.learning_rate: {space: log_uniform, low: 1e-4, high: 1e-2}
        trainer.stages.top.optimizer.learning_rate: {space: log_uniform, low: 1e-6, high: 1e-4}
        trainer.stages.top.epochs: {space: int, low: 0, high: 12, step: 4}

The stage values the config gives stay its recipe: they are the first trial, and a config without
`tuning` trains them as they are. Searched fields are under `trainer.stages.<stage>`,
`model.head` and `model.augmentation`; each searched value must be one the field itself accepts.
A stage other than the first may search `epochs` from 0: 0 leaves that stage out.
"""

from __future__ import annotations

import copy
import json
import os
import re
from typing import Any, Literal, Optional, Union

import pydantic

from components.config.base import Seed, _Section, _require_existing_path, bounded


# Where a searched field may be: the parts of the config the Trainer trains with.
SEARCHABLE_PREFIXES = ('trainer.stages.', 'model.head.', 'model.augmentation.')
# A searched field's path in the Trainer's inputs (TrainerInputs) for its path in the config.
_TRAINER_INPUT_PREFIXES = {'trainer.': 'trainer.', 'model.head.': 'head.', 'model.augmentation.': 'augmentation.'}
# The objective for each task when `objective` is not given: the area under the eval split's
# precision-recall curve (binary), the share of eval examples whose most probable class is right.
DEFAULT_OBJECTIVE = {'binary': 'auc_pr', 'multiclass': 'accuracy'}
OBJECTIVE_TASKS = {'auc_pr': 'binary', 'accuracy': 'multiclass', 'macro_recall': 'multiclass'}
# Stage fields that count optimizer passes; 0 searched for one leaves the stage out.
EPOCHS = 'epochs'


class SearchRange(_Section):
    """How one field is searched: `log_uniform` or `uniform` between low and high, `int` from low to
    high in steps of `step`, or `choice` among `values`."""

    space: Literal['log_uniform', 'uniform', 'int', 'choice']
    low: Optional[bounded(float, ge=-1e12, le=1e12)] = None
    high: Optional[bounded(float, ge=-1e12, le=1e12)] = None
    step: Optional[bounded(int, ge=1, le=1_000_000)] = None
    values: Optional[tuple[Union[bounded(int, ge=-10**12, le=10**12), bounded(float, ge=-1e12, le=1e12), str], ...]] = pydantic.Field(
        default=None, min_length=2, max_length=100)

    @pydantic.field_validator('low', 'high', mode='before')
    @classmethod
    def _number(cls, value: Any) -> Any:
        # An integer bound stays what it was written as (JSON mode would refuse an int for a float).
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @pydantic.model_validator(mode='after')
    def _consistent(self) -> 'SearchRange':
        if self.space == 'choice':
            if self.values is None or self.low is not None or self.high is not None or self.step is not None:
                raise ValueError('space choice: expected values (two or more) and no low, high or step')
            return self
        if self.low is None or self.high is None or self.values is not None:
            raise ValueError(f'space {self.space}: expected low and high (and no values)')
        if self.low >= self.high:
            raise ValueError(f'expected low < high, got low {_number_text(self.low)} >= high {_number_text(self.high)}')
        if self.space == 'log_uniform' and self.low <= 0:
            raise ValueError(f'space log_uniform: expected low > 0 (a log scale does not reach 0 or below), '
                             f'got low {_number_text(self.low)}')
        if self.space == 'int' and not (self.low.is_integer() and self.high.is_integer()):
            raise ValueError(f'space int: expected whole numbers, got low {_number_text(self.low)} and '
                             f'high {_number_text(self.high)}')
        if self.step is not None and self.space != 'int':
            raise ValueError(f'space {self.space}: step is for space int')
        return self

    def candidates(self) -> list:
        """Values that span the range, each of which the field must accept: its ends, or every choice."""
        if self.space == 'choice':
            return list(self.values)
        if self.space == 'int':
            return [int(self.low), int(self.high)]
        return [self.low, self.high]

    def contains(self, value: Any) -> bool:
        """Whether `value` is one the search can draw."""
        if self.space == 'choice':
            return value in self.values
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not self.low <= value <= self.high:
            return False
        return self.space != 'int' or (float(value).is_integer() and (value - self.low) % (self.step or 1) == 0)


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e6 else repr(value)


class TuningSection(_Section):
    """The search: `space` (the searched fields), its budget, its objective and its pruner.

    Each trial trains the stages with the values drawn, on the training split, and is scored on
    the eval split; the test split is the release gate's alone. The Trainer then trains the winner.
    """

    # Required unless `reuse` gives the values.
    space: dict[str, SearchRange] = pydantic.Field(default_factory=dict, max_length=32)
    # Trials that complete or are pruned, all workers together.
    trials: bounded(int, ge=1, le=1000) = 12
    # Stop starting trials after this many seconds of searching (None: only `trials` bounds it).
    max_seconds: Optional[bounded(int, ge=1, le=30 * 24 * 3600)] = None
    # auc_pr (binary), accuracy or macro_recall (multiclass), of the trained model on the eval split.
    # None: auc_pr for binary tasks, accuracy for multiclass ones.
    objective: Optional[Literal['auc_pr', 'accuracy', 'macro_recall']] = None
    # median: from the second stage on, a trial whose eval metric after an epoch is below the median
    # of the earlier trials' at the same epoch of the same stage stops there (Optuna's
    # MedianPruner, once two trials have finished). none: every trial runs to its end.
    pruner: Literal['median', 'none'] = 'median'
    # The sampler's seed (Optuna's TPESampler); the training seed is trainer.seed.
    seed: Seed = 0
    # Trial workers at once, sharing one search: on Kubeflow each is a pod (with the trainer's
    # GPU); here they run one after another. More than one needs `storage`.
    parallel_trials: bounded(int, ge=1, le=64) = 1
    # The search's database, an SQLAlchemy URL every worker reaches (e.g.
    # mysql+pymysql://tuner@mysql.kubeflow:3306/tuning), or env:NAME: the URL is in the workers'
    # environment variable NAME (a URL with a password is a credential, which a config never holds).
    # None: an SQLite file beside the step's outputs.
    storage: Optional[str] = None
    # A best_hyperparameters file (or the HyperParameters artifact directory holding one) of an
    # earlier search: no search runs; the Trainer trains these values.
    reuse: Optional[str] = None

    _reuse_exists = pydantic.field_validator('reuse')(_require_existing_path)

    @pydantic.field_validator('space')
    @classmethod
    def _paths(cls, value: dict[str, SearchRange]) -> dict[str, SearchRange]:
        for path in value:
            if not path.startswith(SEARCHABLE_PREFIXES) or not re.fullmatch(r'[A-Za-z0-9_.-]+', path):
                raise ValueError(f'{path!r}: expected a field path under {", ".join(SEARCHABLE_PREFIXES)} '
                                 f'(e.g. trainer.stages.head.optimizer.learning_rate)')
        return value

    @pydantic.model_validator(mode='after')
    def _space_or_reuse(self) -> 'TuningSection':
        if not self.space and self.reuse is None:
            raise ValueError('expected space (the fields to search, e.g. {trainer.stages.head.optimizer.'
                             'learning_rate: {space: log_uniform, low: 1e-4, high: 1e-2}}) or reuse')
        return self

    @pydantic.model_validator(mode='after')
    def _parallel_storage(self) -> 'TuningSection':
        if self.parallel_trials > 1 and self.storage is None:
            raise ValueError(f'parallel_trials {self.parallel_trials}: expected storage, a database URL every '
                             f'worker reaches (workers share one search through it)')
        if self.storage is not None and not re.match(r'^([a-z0-9+]+://|env:[A-Za-z_][A-Za-z0-9_]*$)', self.storage):
            raise ValueError(f'storage {self.storage!r}: expected an SQLAlchemy database URL (e.g. '
                             f'mysql+pymysql://tuner@mysql.kubeflow:3306/tuning) or env:NAME, an environment '
                             f'variable of the workers that holds one')
        return self

    def objective_for(self, task: str) -> str:
        return self.objective or DEFAULT_OBJECTIVE[task]


# ---- Field paths -----------------------------------------------------------------------------


class PathError(ValueError):
    """A searched path that names no field of the config."""


def _child(node: Any, part: str) -> tuple[Any, Any]:
    """(container, key) of `part` under `node`: a dict key, a list index, or a stage by name."""
    if isinstance(node, dict):
        if part not in node:
            raise PathError(f'names no field ({part!r} is not one of {sorted(node)})')
        if node.get('mode') is not None and part in ('top_layers', 'top_fraction') and node['mode'] != part:
            raise PathError(f'names no field in use: the stage unfreezes by {node["mode"]}, not {part}')
        return node, part
    if isinstance(node, list):
        if part.isdigit() and int(part) < len(node):
            return node, int(part)
        names = [item.get('name') for item in node if isinstance(item, dict)]
        if part in names:
            return node, names.index(part)
        raise PathError(f'names no field ({part!r} is not one of {[n for n in names if n] or list(range(len(node)))})')
    raise PathError(f'names no field (the value above {part!r} is {node!r})')


def apply_values(tree: dict, values: dict[str, Any], prefixes: Optional[dict[str, str]] = None) -> dict:
    """A copy of `tree` (config data, or with `prefixes` the Trainer's inputs) with each searched
    path set to its value; a stage whose searched `epochs` is 0 is left out. Raises PathError for
    a path that names no field."""
    tree = copy.deepcopy(tree)
    dropped = []
    for path, value in values.items():
        parts = _located(path, prefixes or {}).split('.')
        node = tree
        for part in parts[:-1]:
            container, key = _child(node, part)
            node = container[key]
        container, key = _child(node, parts[-1])
        if key == EPOCHS and value == 0 and isinstance(container, dict) and 'unfreeze' in container:
            dropped.append(container)
        container[key] = value
    for stage_list in _stage_lists(tree):
        stage_list[:] = [s for s in stage_list if not any(s is d for d in dropped)]
    return tree


def _stage_lists(tree: dict) -> list[list]:
    trainer = tree.get('trainer') or {}
    return [trainer['stages']] if isinstance(trainer.get('stages'), list) else []


def _located(path: str, prefixes: dict[str, str]) -> str:
    for old, new in prefixes.items():
        if path.startswith(old):
            return new + path[len(old):]
    return path


def trainer_inputs_value(custom_config: dict, path: str) -> Any:
    """The value of the searched field at `path` (a config path) in the Trainer's inputs."""
    return _current(custom_config, _located(path, _TRAINER_INPUT_PREFIXES))


def to_trainer_inputs(custom_config: dict, values: dict[str, Any]) -> dict:
    """The Trainer's inputs (TrainerInputs data) with the searched values set."""
    return apply_values(custom_config, values, _TRAINER_INPUT_PREFIXES)


# A best_hyperparameters file holds the values and a table of a few hundred trials at most.
MAX_REUSED_BYTES = 8 << 20


def reused_directory(path: str) -> str:
    """The HyperParameters directory `tuning.reuse` names: the path itself, or a file's directory."""
    return path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))


def reused_values(path: str) -> dict[str, Any]:
    """The searched values of an earlier search's output (`tuning.reuse`): its HyperParameters
    directory, which holds one file (as TFX reads it), or that file. Raises ValueError saying what
    is wrong."""
    directory = reused_directory(path)
    files = [os.path.join(directory, n) for n in os.listdir(directory)]
    if len(files) != 1 or not os.path.isfile(files[0]):
        raise ValueError(f'expected an earlier search\'s best_hyperparameters directory, holding one file '
                         f'(found {len(files)} entries)')
    if os.path.getsize(files[0]) > MAX_REUSED_BYTES:
        raise ValueError(f'{files[0]} is larger than any best_hyperparameters file ({MAX_REUSED_BYTES >> 20} MiB)')
    try:
        with open(files[0]) as f:
            values = json.load(f)['values']
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f'{files[0]} is not a best_hyperparameters file of this pipeline ({type(error).__name__}: '
                         f'{error})') from None
    if not isinstance(values, dict):
        raise ValueError(f'{files[0]}: expected a mapping of field paths to values under "values"')
    return values


def short_path(path: str) -> str:
    """A searched path as tables print it: trainer.stages.top.optimizer.learning_rate ->
    top.learning_rate; model.head.dropout -> head.dropout."""
    parts = path.split('.')
    return f'{parts[2]}.{parts[-1]}' if parts[:2] == ['trainer', 'stages'] else '.'.join(parts[1:])


def values_text(values: dict[str, Any]) -> str:
    """Searched values as progress lines and the summary print them: 'head.learning_rate 0.00107, top.epochs 12'."""
    return ', '.join(f'{short_path(p)} {f"{v:.3g}" if isinstance(v, float) else v}' for p, v in values.items())


def check_space(config_data: dict, tuning: TuningSection, validate) -> None:
    """Raises ValueError naming the path when a searched path names no field, or when a value the
    search can draw is one its field refuses (`validate`: the whole config's validation, without
    its tuning section)."""
    first_stage = (config_data.get('trainer') or {}).get('stages', [{}])[0].get('name')
    for path, search in tuning.space.items():
        where = f'tuning.space.{path}'
        for value in search.candidates():
            if path.endswith('.' + EPOCHS) and value == 0:
                if path == f'trainer.stages.{first_stage}.{EPOCHS}':
                    raise ValueError(f'{where}: the first stage cannot be left out (epochs 0); expected low >= 1')
                continue
            try:
                data = apply_values(config_data, {path: _as_field_type(path, value, config_data)})
            except PathError as error:
                raise ValueError(f'{where}: {error}') from None
            try:
                validate(data)
            except ValueError as error:
                shown = _number_text(value) if isinstance(value, float) else repr(value)
                raise ValueError(f'{where}: {shown} is not a value the field takes ({error})') from None


def _as_field_type(path: str, value: Any, config_data: dict) -> Any:
    """`value` as the field's type: a whole number for a field that holds integers."""
    try:
        current = _current(config_data, path)
    except PathError:
        return value
    if isinstance(current, int) and not isinstance(current, bool) and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _current(tree: dict, path: str) -> Any:
    node = tree
    for part in path.split('.'):
        container, key = _child(node, part)
        node = container[key]
    return node



def storage_url(storage: str, environ) -> str:
    """`tuning.storage` as a URL: itself, or the value of the environment variable it names."""
    if not storage.startswith('env:'):
        return storage
    name = storage[len('env:'):]
    if not environ.get(name):
        raise ValueError(f'tuning.storage = {storage!r}: the environment variable {name} is not set on this worker')
    return environ[name]
