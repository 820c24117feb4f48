"""The layout TF Serving reads under a serving directory: one numeric directory per model version,
each a complete SavedModel. A push stages under a non-numeric name and renames it into place, so a
version directory without its saved_model.pb is a push that has not finished, and is not listed.

This module imports nothing heavy: `history` and `predict` list versions without loading TensorFlow,
and the release steps pass TFX's file system (object storage) in its place.
"""

import os
import re
from typing import Callable

VERSION = re.compile(r'^\d+$')
SAVED_MODEL = 'saved_model.pb'


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
