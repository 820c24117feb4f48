"""The config schema's base: the section class, bounded numbers and the bounds sections share, the
errors (one line naming the key, the value and what was expected), and `validate`."""

from __future__ import annotations

import json
import os
import re
from typing import Annotated, Any, Optional

import pydantic


class ConfigError(ValueError):
    """An invalid configuration. Its message is one line: the key, the value, what was expected."""


class _Section(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra='forbid', frozen=True, strict=True)


def _require_existing_path(value: Optional[str]) -> Optional[str]:
    """Local paths must exist; URIs (gs://, s3://, ...) are checked by the step that reads them."""
    if value is not None and '://' not in value and not os.path.exists(value):
        raise ValueError('expected an existing file or directory')
    return value


# The constraint errors `bounded` restates as the whole range.
_BOUND_ERRORS = ('greater_than', 'greater_than_equal', 'less_than', 'less_than_equal', 'finite_number')


def _bound_text(value: float) -> str:
    if float(value).is_integer():
        return format(int(value), '_') if abs(value) >= 10_000 else str(int(value))
    return repr(value)


def bounded(kind: type, *, gt: float = None, ge: float = None, lt: float = None, le: float = None) -> Any:
    """`kind` (int or float) within the bounds given, a float also finite (no inf or nan), as a type
    for a config field. pydantic's constraints check it; a value out of them is reported with the
    whole range ('expected a finite number > 0 and <= 10'), not only the one bound it missed, so
    that one correction suffices."""
    lower = f'> {_bound_text(gt)}' if gt is not None else f'>= {_bound_text(ge)}' if ge is not None else ''
    upper = f'< {_bound_text(lt)}' if lt is not None else f'<= {_bound_text(le)}' if le is not None else ''
    expected = ' and '.join(filter(None, (lower, upper)))
    expected = f'{"a finite number" if kind is float else "an integer"} {expected}'.strip()

    def restate(value: Any, handler: pydantic.ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except pydantic.ValidationError as error:
            if error.errors()[0]['type'] in _BOUND_ERRORS:
                raise ValueError(f'expected {expected}') from None
            raise

    finite = {'allow_inf_nan': False} if kind is float else {}
    return Annotated[kind, pydantic.Field(gt=gt, ge=ge, lt=lt, le=le, **finite), pydantic.WrapValidator(restate)]


# Bounds shared by several sections. Ceilings are generous for real use; a value beyond one is a
# typo (a stray zero) that would otherwise fail minutes later, inside a step.
# keras.utils.set_random_seed seeds NumPy, which takes 0 <= seed < 2**32.
Seed = bounded(int, ge=0, lt=2**32)
# tf.Example stores labels as int64.
Label = bounded(int, ge=-2**63, lt=2**63)
Epochs = bounded(int, ge=1, le=10_000)
# Optimizer steps (decay periods, steps per epoch): 10 million steps are days of training.
Steps = bounded(int, ge=1, le=10_000_000)
# Learning rates: fastai's LR range test ends at 10; no optimizer here trains above it.
MAX_LEARNING_RATE = 10
LearningRate = bounded(float, gt=0, le=MAX_LEARNING_RATE)
# At most this many stages (trainer.stages, trainer.warm_start.stages): a staged fine-tune has two
# to four; each stage is a Trainer phase and part of the compiled spec (10,000 stages compiled to
# 21 MB in 3 minutes).
MAX_STAGES = 32


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + '...'


def _section_names(cls=None) -> set[str]:
    names = set()
    for sub in (cls or _Section).__subclasses__():
        names |= {sub.__name__} | _section_names(sub)
    return names


def _is_key(part) -> bool:
    """Whether a part of pydantic's error location is a config key, not a validator or union tag
    (`function-after[...]`, `literal['balanced']`, `float`, a section's class name)."""
    text = str(part)
    return not (re.match(r'^(function-\w+|literal|dict|tuple)\[', text) or text in ('function-after', 'float', 'int')
                or text in _section_names())


def _error_line(error: dict) -> str:
    location = '.'.join(str(p) for p in error['loc'] if _is_key(p))
    message = error['msg']
    if message.startswith('Value error, '):
        message = message[len('Value error, '):]
    if error['type'] == 'extra_forbidden':
        return f'{location}: unknown key (value {_describe(error["input"])})'
    if error['type'] == 'missing':
        return f'{location}: required key is missing'
    if error['type'] == 'too_long':
        message = f'expected at most {error["ctx"]["max_length"]} entries, got {error["ctx"]["actual_length"]}'
    if error['type'] == 'too_short':
        message = f'expected at least {error["ctx"]["min_length"]} entries, got {error["ctx"]["actual_length"]}'
    message = message[0].lower() + message[1:]
    if isinstance(error['input'], dict):
        # A check across several keys of a section: the message names them.
        return f'{location or "<top level>"}: {message}'
    return f'{location or "<top level>"} = {_describe(error["input"])}: {message}'


def _refuse_boolean_folder_names(data: Any) -> None:
    """YAML reads an unquoted yes/no/on/off/true/false as a boolean; as a data.class_names key it
    would become the text 'true' or 'false' (JSON has no other keys) and match no folder."""
    names = data.get('data', {}).get('class_names') if isinstance(data, dict) and isinstance(data.get('data'), dict) else None
    booleans = [k for k in names if isinstance(k, bool)] if isinstance(names, dict) else []
    if booleans:
        raise ConfigError(f'data.class_names = {_describe(names)}: the folder names {booleans} were read as booleans '
                          "(YAML reads unquoted yes/no/on/off/true/false so); expected folder names in quotes, "
                          "e.g. {'no': 0, 'yes': 1}")


def validate(data: Any, section: type[_Section] = None) -> Any:
    """Validates raw config data (by default a whole Config); raises ConfigError naming the first bad key.

    Sections travel to components as plain data (`section.model_dump(mode='json')`) and are
    validated again there with this function.
    """
    _refuse_boolean_folder_names(data if section is None else None)
    try:
        # JSON mode: strict about types (no '3' for 3), yet lists may fill tuples.
        if section is None:
            from components.config.root import Config as section
        return section.model_validate_json(json.dumps(data, default=str))
    except pydantic.ValidationError as e:
        raise ConfigError(_error_line(e.errors()[0])) from None
