"""Files that may be on object storage (gs://, s3://, ...) for libraries that need a local path."""

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from typing import BinaryIO, Callable, Iterator, Optional


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = '') -> Iterator[str]:
    """A temporary local path to write `path` (a file, or a directory) at; renamed to `path` when
    the block ends, so a crash leaves the old `path` or the new one, never half of one. When the
    block raises, whatever it wrote is removed. `suffix`: an ending the temporary name must keep
    (Keras' `.weights.h5`), e.g. `x.weights.h5` is written as `x.partial.weights.h5`."""
    partial = (path[:-len(suffix)] if suffix and path.endswith(suffix) else path) + '.partial' + suffix
    try:
        yield partial
    except BaseException:
        if os.path.isdir(partial):
            shutil.rmtree(partial, ignore_errors=True)
        elif os.path.exists(partial):
            os.remove(partial)
        raise
    os.replace(partial, path)


def write_text_atomically(path: str, text: str) -> None:
    """Writes `text` to the local file `path` (atomic_path)."""
    with atomic_path(path) as partial, open(partial, 'w') as f:
        f.write(text)


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
    """A local path holding the file at `path`: `path` itself when it is local, else a temporary
    copy (Keras' loaders and h5py read local files only)."""
    if '://' not in path:
        yield path
        return
    from tfx.dsl.io import fileio

    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, os.path.basename(path))
        fileio.copy(path, local)
        yield local


def _files(root: str) -> dict[str, int]:
    """Relative path -> size of every file under `root`."""
    from tfx.dsl.io import fileio

    files = {}
    for directory, _, names in fileio.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            files[os.path.relpath(path, root)] = fileio.stat(path).length
    return files


def sha256_of(f: BinaryIO) -> str:
    """The SHA-256 of the rest of the binary file `f`, read in 1 MB blocks (stdlib only: the
    preflight checks a pinned backbone with it before TensorFlow is imported)."""
    digest = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 20), b''):
        digest.update(block)
    return digest.hexdigest()


def _digest(path: str) -> str:
    from tfx.dsl.io import fileio

    with fileio.open(path, 'rb') as f:
        return sha256_of(f)


def same_files(first: str, second: str) -> bool:
    """Whether the directories hold the same files with the same bytes (sizes are compared before
    any content is read)."""
    files = _files(first)
    if files != _files(second):
        return False
    return all(_digest(os.path.join(first, name)) == _digest(os.path.join(second, name)) for name in files)


def read_json(directory: Optional[str], name: str, exists: Callable[[str], bool] = os.path.exists,
              open_file: Callable = open) -> Optional[dict]:
    """The JSON file `name` in `directory`, or None when there is no directory or no such file.
    `exists` and `open_file` read the file system: the local one by default (`history`, which must
    not import TFX), TFX's for an artifact that may be on object storage (the run report)."""
    path = os.path.join(directory, name) if directory else None
    if not path or not exists(path):
        return None
    with open_file(path, 'r') as f:
        return json.load(f)
