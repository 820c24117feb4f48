"""The layout TF Serving reads under a serving directory: one numeric directory per model version,
each a complete SavedModel. A push stages under a non-numeric name and renames it into place, so a
version directory without its saved_model.pb is a push that has not finished, and is not listed.

A listed version can still be broken (files removed or cut short after the push, a disk error):
`incomplete` says what is wrong with one, from its files alone, before anything serves it again.

This module imports nothing heavy: `history` and `predict` list versions without loading TensorFlow,
and the release steps pass TFX's file system (object storage) in its place.
"""

import os
import re
from typing import Callable, NamedTuple, Optional

VERSION = re.compile(r'^\d+$')
SAVED_MODEL = 'saved_model.pb'
VARIABLES_INDEX = os.path.join('variables', 'variables.index')
_DATA_SHARD = re.compile(r'^variables\.data-(\d{5})-of-(\d{5})$')
# The MetaGraph TF Serving loads (tf.saved_model.SERVING): a SavedModel without it serves nothing.
SERVING_TAG = 'serve'


def versions(serving_dir: str, listdir: Callable[[str], list] = os.listdir,
             exists: Callable[[str], bool] = os.path.exists, isdir: Callable[[str], bool] = os.path.isdir) -> list[str]:
    """The complete versions under `serving_dir`, newest first ([] when it does not exist).
    `listdir`, `exists` and `isdir` read the file system (default: the local one); names that come
    back with a trailing '/' (object storage) count as their directory."""
    if not isdir(serving_dir):
        return []
    names = [name.rstrip('/') for name in listdir(serving_dir)]
    found = [v for v in names if VERSION.match(v) and exists(os.path.join(serving_dir, v, SAVED_MODEL))]
    return sorted(found, key=int, reverse=True)


def latest_version(serving_dir: str) -> 'str | None':
    """The newest complete version under `serving_dir` on TFX's file system (object storage too), or
    None. TFX is imported here, when called, not by this module."""
    from tfx.dsl.io import fileio

    found = versions(serving_dir, fileio.listdir, fileio.exists, fileio.isdir)
    return found[0] if found else None


class Files(NamedTuple):
    """How `incomplete` reads a file system: LOCAL, or tfx_files() (object storage too)."""

    listdir: Callable[[str], list]
    size: Callable[[str], Optional[int]]  # None: no such file
    read: Callable[[str], bytes]


def _local_size(path: str) -> Optional[int]:
    return os.path.getsize(path) if os.path.isfile(path) else None


def _local_read(path: str) -> bytes:
    with open(path, 'rb') as f:
        return f.read()


LOCAL = Files(lambda path: os.listdir(path) if os.path.isdir(path) else [], _local_size, _local_read)


def tfx_files() -> Files:
    """TFX's file system (imported here, when called)."""
    from tfx.dsl.io import filesystem, fileio

    def size(path: str) -> Optional[int]:
        try:
            return None if fileio.isdir(path) else fileio.stat(path).length
        except (filesystem.NotFoundError, OSError):
            return None

    def read(path: str) -> bytes:
        with fileio.open(path, 'rb') as f:
            return f.read()

    return Files(lambda path: fileio.listdir(path) if fileio.isdir(path) else [], size, read)


def incomplete(version_dir: str, files: Files = LOCAL) -> Optional[str]:
    """What keeps the SavedModel in `version_dir` from being served, or None when it is complete:
    saved_model.pb parses and holds the MetaGraph tagged 'serve', and variables.index and every
    variables data shard it names in its file names are there and not empty. One phrase that starts
    with the file's path relative to `version_dir` ('variables/variables.index is missing').

    The variables' bytes are not read: a shard cut short or altered in place passes here; see
    unreadable_variables."""
    problem = _file_problem(version_dir, SAVED_MODEL, files) or _saved_model_problem(
        files.read(os.path.join(version_dir, SAVED_MODEL)))
    if problem:
        return problem
    problem = _file_problem(version_dir, VARIABLES_INDEX, files)
    if problem:
        return problem
    shards = [m for m in map(_DATA_SHARD.match, (n.rstrip('/') for n in files.listdir(
        os.path.join(version_dir, 'variables')))) if m]
    if not shards:
        return f'{os.path.join("variables", "variables.data-00000-of-*")} is missing'
    count = max(int(m[2]) for m in shards)
    for shard in range(count):
        problem = _file_problem(version_dir, os.path.join('variables', f'variables.data-{shard:05d}-of-{count:05d}'),
                                files)
        if problem:
            return problem
    return None


def unreadable_variables(version_dir: str) -> Optional[str]:
    """What keeps the variables of a complete version (see `incomplete`) from reading back, or None:
    every variable is read through TensorFlow's checkpoint reader, which checks each one's CRC32C,
    so a shard cut short or altered in place is found without building the model's graphs (what
    tf.saved_model.load spends its time on). TensorFlow is imported here, when called."""
    import tensorflow as tf

    prefix = os.path.join(version_dir, 'variables', 'variables')
    try:
        reader = tf.train.load_checkpoint(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except Exception as error:  # noqa: BLE001 - by the status met: OpError, IndexError (a shard cut short), ...
        return f"variables/ does not read back ({type(error).__name__}: {' '.join(str(error).split())[:300]})"
    return None


def unservable(version_dir: str) -> Optional[str]:
    """`incomplete`, then `unreadable_variables` (TensorFlow imported): the whole check of a local version."""
    return incomplete(version_dir) or unreadable_variables(version_dir)


def _file_problem(version_dir: str, name: str, files: Files) -> Optional[str]:
    size = files.size(os.path.join(version_dir, name))
    if size is None:
        return f'{name} is missing'
    return f'{name} is empty' if size == 0 else None


def _saved_model_problem(data: bytes) -> Optional[str]:
    """Why `data` is not a SavedModel holding a 'serve' MetaGraph (its wire format parsed with
    TensorBoard's copy of the MetaGraphDef proto: TensorFlow's own takes seconds to import)."""
    from google.protobuf.message import DecodeError
    from tensorboard.compat.proto import meta_graph_pb2

    try:
        graphs = [meta_graph_pb2.MetaGraphDef.FromString(value) for number, value in _fields(data) if number == 2]
    except (DecodeError, ValueError) as error:
        return f'{SAVED_MODEL} does not parse as a SavedModel ({error or "cut short"})'
    if not any(SERVING_TAG in graph.meta_info_def.tags for graph in graphs):
        return f"{SAVED_MODEL} holds no MetaGraph tagged '{SERVING_TAG}' (the one TF Serving loads)"
    return None


def _fields(data: bytes):
    """(field number, value) of each top-level field of a serialized SavedModel message: 1 is its
    schema version (a varint), 2 each MetaGraphDef (length-delimited). ValueError on anything else,
    or on a length that runs past the end (a file cut short)."""
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, position = _varint(data, position)
        elif wire_type == 2:
            length, position = _varint(data, position)
            if position + length > len(data):
                raise ValueError(f'cut short: a field of {length} bytes at byte {position} of {len(data)}')
            value, position = data[position:position + length], position + length
        else:
            raise ValueError(f'wire type {wire_type} of field {number} at byte {position}')
        yield number, value


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if position >= len(data) or shift > 63:
            raise ValueError(f'cut short: a varint at byte {position} of {len(data)}')
        byte = data[position]
        value |= (byte & 0x7F) << shift
        position, shift = position + 1, shift + 7
        if not byte & 0x80:
            return value, position
