"""The config schema's base: the section class, its errors (one line naming the key, the value
and what was expected), and `validate`."""

from __future__ import annotations

import json
import os
import re
from typing import Any, Optional

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
