"""What an input file may name, with the standard library only: the preflight checks local data
with it before TensorFlow is imported, and ImageExampleGen (components.nodes.example_gen) checks every
file it reads with it again, on object storage too. Each problem is one line naming the file (and
the CSV line), so both places report a problem in the same words.

* Inputs stay inside data.path: a CSV row naming an absolute path, or a path (`..`, a symlink)
  that resolves outside data.path, is refused, and so is an input file that resolves outside it.
  Otherwise any file the pipeline's user can read would land in the Examples artifact.
* Labels are numbers written plainly: a class folder or CSV value without a data.class_names entry
  must be ASCII decimal digits (optionally with a leading '-') within int64. Python's int() would
  also read '٣', '0_9' and ' 7 ', silently merging differently named folders into one label.
* CSV files are UTF-8 (a leading byte order mark, as spreadsheet programs write, is skipped).
"""

import codecs
import os
import posixpath
import re
from typing import Optional

# What tf.io.decode_image reads; data.extra_extensions adds others (their bytes must still be one of these).
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.gif', '.bmp')
INT64 = (-(1 << 63), (1 << 63) - 1)
_NUMBER = re.compile(r'-?[0-9]+', re.ASCII)
# Features ImageExampleGen adds to each example: the image file, relative to data.path (the data
# gate names problems by it), and the key of its near-duplicate group (ExampleGen splits on it).
SOURCE_FILE = 'source_file'
SPLIT_GROUP = 'split_group'


def is_image(path: str, extra_extensions: tuple = ()) -> bool:
    """Whether an image folder's file is an example (by its name; the data gate checks the bytes)."""
    return path.lower().endswith(IMAGE_EXTENSIONS + tuple(extra_extensions))


def skipped_extensions(paths, extra_extensions: tuple = ()) -> dict[str, int]:
    """{extension (lower case, '' for none): files} of the files among `paths` that an image folder
    does not read, most first."""
    counts: dict[str, int] = {}
    for path in paths:
        if not is_image(path, extra_extensions):
            extension = os.path.splitext(path)[1].lower()
            counts[extension] = counts.get(extension, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _remote(path: str) -> bool:
    return '://' in path


def _resolved(path: str) -> str:
    """`path` with `..` and (locally) symlinks resolved. Object storage has no symlinks."""
    if _remote(path):
        scheme, rest = path.split('://', 1)
        return f'{scheme}://{posixpath.normpath(rest)}'
    return os.path.realpath(path)


def _inside(root: str, path: str) -> bool:
    root = _resolved(root)
    return path == root or path.startswith(root.rstrip('/') + '/')


def file_outside(root: str, path: str) -> Optional[str]:
    """The error line when the input file `path` (found under data.path `root`) resolves outside it."""
    resolved = _resolved(path)
    if _inside(root, resolved):
        return None
    return f'data.path: {path} resolves to {resolved}, outside data.path {root}'


def image_path(root: str, csv_path: str, line: int, name: str) -> tuple[str, Optional[str]]:
    """(the image file a CSV row names, relative to the CSV file's directory; the error line when
    it is absolute or resolves outside data.path `root`, else None)."""
    where = f'data.path: {csv_path} line {line}: image {name!r}'
    if os.path.isabs(name) or _remote(name):
        return name, (f"{where} is an absolute path; expected a path relative to the CSV file's directory, "
                      f'inside data.path {root}')
    path = os.path.join(os.path.dirname(csv_path), name)
    resolved = _resolved(path)
    if not _inside(root, resolved):
        return path, f'{where} resolves to {resolved}, outside data.path {root}'
    return path, None


def label(value: str, class_names: dict, where: str) -> int:
    """The label of a class folder or CSV value: its data.class_names entry, else the number it is.
    Raises ValueError (label_problem) for anything else."""
    if value in class_names:
        return int(class_names[value])
    problem = label_problem(value, class_names, where)
    if problem:
        raise ValueError(problem)
    return int(value)


def label_problem(value: str, class_names: dict, where: str) -> Optional[str]:
    """The error line when `value` (of the folder or CSV line `where`) is neither in class_names nor
    a plain int64 number; None when it is a label."""
    if value in class_names:
        return None
    if _NUMBER.fullmatch(value) and INT64[0] <= int(value) <= INT64[1]:
        return None
    return (f'{where}: class {value!r} is neither in data.class_names {sorted(class_names)} nor a whole number '
            f'in ASCII digits within int64; give its label in data.class_names, e.g. {{{value!r}: 1}}')


def csv_text(path: str, data: bytes) -> str:
    """The text of the CSV file `path` holding `data`; ValueError naming the byte offset when it is
    not UTF-8."""
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[start:].decode('utf-8')
    except UnicodeDecodeError as error:
        raise ValueError(f'data.path: {path} is not UTF-8 text: byte {start + error.start} '
                         f'({data[start + error.start:start + error.start + 1].hex()}) {error.reason}; '
                         'save it as UTF-8') from None
