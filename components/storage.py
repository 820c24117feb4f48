"""Files that may be on object storage (gs://, s3://, ...) for libraries that need a local path."""

import contextlib
import os
import tempfile
from typing import Iterator


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
