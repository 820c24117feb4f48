"""Reading a config: the YAML file (bounded in size and depth, no aliases, no credentials), `--set`
overrides, and `load_config`."""

from __future__ import annotations

import re
from typing import Any, Optional

import yaml

from components.config.base import ConfigError, validate
from components.config.root import Config


# A config is a page of settings; anything far larger is not one (and would cost memory to read).
MAX_CONFIG_BYTES = 1 << 20
# The schema nests 5 deep (trainer.stages.0.optimizer.learning_rate); 32 leaves room for
# keras_application.kwargs and stays far inside Python's recursion limit, which composing YAML,
# the credential scan and JSON encoding each recurse into (10,000 nested lists exceed it).
MAX_CONFIG_DEPTH = 32


class _Loader(yaml.SafeLoader):
    """SafeLoader with three changes. YAML 1.1 reads `1e-3` as a string; learning rates are written
    that way, so it reads as a float. Aliases (`*name`) are refused: a few hundred bytes of nested
    aliases expand to gigabytes once the config is validated (a "billion laughs" document), and a
    config has no need to share nodes. Collections nested deeper than MAX_CONFIG_DEPTH are refused
    as they are composed, before the recursion that composes them runs out of stack."""

    def __init__(self, stream, depth: int = 0):
        super().__init__(stream)
        # How deep the node being composed is, counting the `--set` key's parts it goes under.
        self.depth = depth

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise _Refused(f'{self._where()}: YAML aliases (*name) are not supported in a config; write the value out')
        if self.depth >= MAX_CONFIG_DEPTH and not self.check_event(yaml.ScalarEvent):
            raise _Refused(f'{self._where()}: nested more than {MAX_CONFIG_DEPTH} levels deep; expected at most '
                           f'{MAX_CONFIG_DEPTH} (a config nests a few)')
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def _where(self) -> str:
        mark = self.peek_event().start_mark
        return f'line {mark.line + 1}, column {mark.column + 1}'


class _Refused(yaml.YAMLError):
    """A document the loader refuses to compose; its message is the whole line to print."""


_Loader.add_implicit_resolver(
    'tag:yaml.org,2002:float',
    re.compile(r'^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$'),
    list('-+0123456789'),
)


def _load_yaml(text: str, depth: int = 0) -> Any:
    loader = _Loader(text, depth)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def parse_value(text: str, depth: int = 0) -> Any:
    """A `--set` value, read as YAML: `0.5` is a number, `[1, 2]` a list, `abc` a string. `depth`:
    how deep in the config the value goes."""
    return _load_yaml(text, depth) if text.strip() else ''


def apply_override(data: dict, assignment: str) -> None:
    """Applies `dotted.key=value` to the raw config; list items are addressed by index."""
    key, sep, text = assignment.partition('=')
    if not sep or not key:
        raise ConfigError(f'--set {assignment!r}: expected dotted.key=value')
    parts = key.split('.')
    if len(parts) > MAX_CONFIG_DEPTH:
        raise ConfigError(f'--set {key[:40]}...: a key {len(parts)} levels deep; expected at most {MAX_CONFIG_DEPTH}')
    node: Any = data
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = '.'.join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f'{where}: expected a list index below {len(node)}')
            part = int(part)
        elif not isinstance(node, dict):
            raise ConfigError(f'{where}: {".".join(parts[:depth])} is not a mapping')
        if last:
            try:
                node[part] = parse_value(text, len(parts))
            except _Refused as e:
                raise ConfigError(f'--set {key}: {e}') from None
            except yaml.YAMLError as e:
                raise ConfigError(f'--set {key}: not a YAML value ({" ".join(str(e).split())})') from None
        else:
            if isinstance(node, dict) and node.get(part) is None:
                node[part] = {}
            node = node[part]



def read_config_file(path: str) -> dict:
    """The raw mapping in a YAML config file, not yet validated."""
    try:
        with open(path, 'rb') as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f'--config {path}: larger than {MAX_CONFIG_BYTES} bytes; expected a YAML config '
                              f'of a few kilobytes')
        data = _load_yaml(raw.decode('utf-8'))
    except OSError as e:
        raise ConfigError(f'--config {path}: cannot read it ({e.strerror})') from None
    except UnicodeDecodeError as e:
        raise ConfigError(f'--config {path}: not UTF-8 text (byte {e.start})') from None
    except _Refused as e:
        raise ConfigError(f'--config {path}: {e}') from None
    except yaml.YAMLError as e:
        raise ConfigError(f'--config {path}: not valid YAML ({" ".join(str(e).split())})') from None
    if not isinstance(data, dict):
        raise ConfigError(f'--config {path}: expected a mapping at the top level')
    return data


# Words in a Beam argument's name that say it carries a credential.
_CREDENTIAL_WORDS = ('secret', 'key', 'token', 'password')
# Beam arguments with one of those words that name a resource, not a credential.
_NOT_CREDENTIALS = ('dataflow_kms_key',)
# user:password@ in a URL.
_URL_CREDENTIALS = re.compile(r'[A-Za-z][A-Za-z0-9+.-]*://[^/\s@:]+:[^/\s@]*@')
_WHERE_CREDENTIALS_GO = ("give the pods (or this machine) a service account with access, or set the credential "
                         "in the environment (e.g. AWS_SECRET_ACCESS_KEY), where the filesystem reads it")


def _beam_credential(arg: Any) -> Optional[str]:
    """The name of a Beam argument (`--name=value` or `--name`) that carries a credential, or None."""
    if not isinstance(arg, str) or not arg.startswith('-'):
        return None
    name = arg.lstrip('-').split('=', 1)[0]
    if name.lower() in _NOT_CREDENTIALS:
        return None
    return name if any(word in name.lower() for word in _CREDENTIAL_WORDS) else None


def _credentials(data: Any, where: str = '') -> list[str]:
    """One line per place in the raw config that holds a credential in clear text (never the value).

    A config travels into the compiled Kubeflow spec, the ML Metadata store and the run report,
    which the Kubeflow UI displays: a credential there is readable by anyone who can see a run.
    """
    if isinstance(data, dict):
        return [line for key, value in data.items() for line in _credentials(value, f'{where}.{key}'.lstrip('.'))]
    if isinstance(data, (list, tuple)):
        lines = [line for i, value in enumerate(data) for line in _credentials(value, f'{where}.{i}')]
        if where.endswith('beam_args'):
            lines += [f"{where}: '--{name}' carries a credential; {_WHERE_CREDENTIALS_GO}"
                      for name in filter(None, map(_beam_credential, data))]
        return lines
    if isinstance(data, str) and _URL_CREDENTIALS.search(data):
        return [f'{where}: a URL with user:password@ carries a credential; {_WHERE_CREDENTIALS_GO}']
    return []


def load_config(path: str, overrides: tuple[str, ...] = ()) -> Config:
    """Reads the YAML file at `path`, applies `key=value` overrides and validates the result."""
    data = read_config_file(path)
    for assignment in overrides:
        apply_override(data, assignment)
    credentials = _credentials(data)
    if credentials:
        raise ConfigError(credentials[0])
    return validate(data)
