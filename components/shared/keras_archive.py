"""What a `.keras` backbone file holds, read with the standard library only (the preflight uses it
before TensorFlow is imported; components.training.backbone again where the Trainer reads the file).

A `.keras` file is a zip archive whose `config.json` names, for every object of the model, the
module and class Keras builds it from. Keras 3.12's safe_mode (on in components.training.backbone) refuses
serialized lambdas and imports no module outside Keras' own packages; `foreign_object` refuses
that and more before Keras reads the file at all: any module outside Keras, a Lambda layer, and
any function entry. A backbone holds layers, initializers and dtype policies (Keras writes
built-in activations as plain names); none of those needs code beyond Keras and the classes the
components register.
"""

import json
import zipfile
from typing import BinaryIO, Iterator, Optional

CONFIG_FILE = 'config.json'
# The package components register their Keras classes under (keras.saving.register_keras_serializable);
# Keras resolves `<package>>Name` from its registry of imported classes, never by importing a module.
PROJECT_PACKAGE = 'staged_finetune'
PROJECT_MODULES = 'components'
# Classes whose config carries code (a Lambda's function, a serialized lambda) or is a function.
CODE_CLASSES = ('Lambda', '__lambda__', 'function')
# Far above any network's config.json (EfficientNetB7's is a few MB); a zip entry announcing more
# is not read.
MAX_CONFIG_BYTES = 64 << 20


def _objects(config) -> Iterator[dict]:
    """Every dict in the JSON value `config` that names a Keras object, in the file's order
    (iteratively: a crafted file may nest deeper than Python's recursion limit)."""
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if {'module', 'class_name', 'registered_name'} & node.keys():
                yield node
            stack.extend(reversed(list(node.values())))
        elif isinstance(node, list):
            stack.extend(reversed(node))


def _in_keras(module) -> bool:
    return isinstance(module, str) and (module == 'keras' or module.startswith('keras.'))


def _project_class(entry: dict) -> bool:
    """A class a component registered (`staged_finetune>InputPreprocessing` from components.*)."""
    module, name, registered = entry.get('module'), entry.get('class_name'), entry.get('registered_name')
    return (isinstance(module, str) and module.split('.')[0] == PROJECT_MODULES
            and registered == f'{PROJECT_PACKAGE}>{name}')


def _refused(entry: dict) -> Optional[str]:
    """What is wrong with one object entry of config.json, or None when Keras builds it from its own
    classes or the project's."""
    module, name = entry.get('module'), entry.get('class_name')
    named = f'{module}.{name}' if module else repr(name)
    if name in CODE_CLASSES or not isinstance(name, str):
        return f'names {named}, which carries code'
    if module is None or _in_keras(module) or _project_class(entry):
        return None
    return f'names {named}'


def foreign_object(f: BinaryIO) -> Optional[str]:
    """Why the `.keras` file `f` is refused, as the rest of one line after the
    file's name, or None when its config.json names only Keras' classes and the project's."""
    try:
        with zipfile.ZipFile(f) as archive:
            info = archive.getinfo(CONFIG_FILE)
            if info.file_size > MAX_CONFIG_BYTES:
                return f'has a {CONFIG_FILE} of {info.file_size} bytes; expected at most {MAX_CONFIG_BYTES}'
            with archive.open(info) as member:
                config = json.loads(member.read(MAX_CONFIG_BYTES + 1))
    except KeyError:
        return f'holds no {CONFIG_FILE} (expected a model saved by Keras 3 as .keras)'
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RecursionError) as error:
        return f'has no readable {CONFIG_FILE} ({type(error).__name__}: {error})'
    for entry in _objects(config):
        reason = _refused(entry)
        if reason:
            return (f'{reason} in its {CONFIG_FILE}; a backbone may hold only Keras\' own classes and the '
                    f'project\'s registered ones ({PROJECT_PACKAGE}>...), no Lambda layer or function')
    return None
