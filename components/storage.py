"""Files that may be on object storage (gs://, s3://, ...) for libraries that need a local path."""

import contextlib
import hashlib
import os
import tempfile
from typing import BinaryIO, Iterator


def write_text_atomically(path: str, text: str) -> None:
    """Writes `text` to the local file `path` through a temporary name and a rename, so a crash
    leaves the old file or the new one, never half of one."""
    partial = path + '.partial'
    with open(partial, 'w') as f:
        f.write(text)
    os.replace(partial, path)


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
