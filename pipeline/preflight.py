"""Checks a local run can start, in seconds and before TensorFlow is imported: the places it
writes, the backbone file, the input files (present, and TFRecord files whole). Each problem is one line naming the key,
the path and what was expected; the CLI exits 2 on any of them.

Paths on object storage (gs://, s3://, ...) are checked by the steps that read them.
"""

import csv
import glob
import gzip
import os
import re
import struct
import zipfile
from typing import Optional

from components import keras_archive
from pipeline.config import BackboneSection, Config
from pipeline.paths import LocalPaths

_HDF5_SIGNATURE = b'\x89HDF\r\n\x1a\n'


def _local(path: str) -> bool:
    return '://' not in path


def _writable_place(key: str, path: str) -> list[str]:
    """`path` can be created (or exists as a directory) and written, without creating anything."""
    path = os.path.abspath(path)
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        return [f'{key}: {probe} is a file; expected a directory there (for {path})']
    if not os.access(probe, os.W_OK | os.X_OK):
        return [f'{key}: {probe} is not writable; expected to create and write {path}']
    return []


def _first_bytes(path: str, count: int) -> bytes:
    with open(path, 'rb') as f:
        return f.read(count)


def _pinned_digest(backbone: BackboneSection) -> list[str]:
    path = backbone.pinned_file
    if backbone.sha256 is None or not _local(path) or os.path.isdir(path):
        return []
    with open(path, 'rb') as f:
        mismatch = backbone.sha256_mismatch(path, keras_archive.sha256_of(f), backbone.sha256)
    return [mismatch] if mismatch else []


def _backbone_file(config: Config) -> list[str]:
    """The backbone file is the one pinned, opens as what it claims to be, and (a .keras file) names
    no code in its config (components.keras_archive)."""
    backbone = config.model.backbone
    mismatch = _pinned_digest(backbone)
    if mismatch:
        return mismatch
    if backbone.keras_file is not None and _local(backbone.keras_file):
        path = backbone.keras_file
        if os.path.isdir(path) or not zipfile.is_zipfile(path):
            return [f'model.backbone.keras_file: {path} does not open as a Keras model file (.keras is a zip archive)']
        with open(path, 'rb') as f:
            refused = keras_archive.foreign_object(f)
        if refused:
            return [f'model.backbone.keras_file: {path} {refused}']
    app = backbone.keras_application
    if app is not None and app.weights not in (None, 'imagenet') and _local(app.weights):
        if os.path.isdir(app.weights) or _first_bytes(app.weights, 8) != _HDF5_SIGNATURE:
            return [f'model.backbone.keras_application.weights: {app.weights} does not open as a weights '
                    'file (expected HDF5, e.g. the ..._notop.h5 Keras publishes)']
    return []


def _matching_files(config: Config) -> list[str]:
    """The local files under data.path that data.pattern matches, every span and version counted
    (ExampleGen then reads the newest)."""
    pattern = re.sub(r'\{(SPAN|VERSION)[^}]*\}', '*', config.data.input_pattern)
    return sorted(p for p in glob.iglob(os.path.join(config.data.path, pattern)) if os.path.isfile(p))


def _input_files(config: Config) -> list[str]:
    data = config.data
    if data.source == 'digits' or not _local(data.path):
        return []
    if not os.path.isdir(data.path):
        return [f'data.path: {data.path} is not a directory; expected the directory holding the data']
    if not _matching_files(config):
        return [f'data.path: no file under {data.path} matches data.pattern {data.input_pattern!r}']
    return []


def truncated_tfrecord(path: str) -> Optional[str]:
    """Why the TFRecord file at `path` (gzipped when named *.gz) is cut short, or None when every
    record it announces is there. Reads the record headers only (8-byte length, 4-byte CRC, data,
    4-byte CRC), not the data's CRCs: a file a killed writer or an interrupted copy left behind
    ends in the middle of a record. TensorFlow is not imported for this (it takes seconds)."""
    opener = gzip.open if path.endswith('.gz') else open
    records = 0
    try:
        with opener(path, 'rb') as f:
            while True:
                header = f.read(12)
                if not header:
                    return None
                if len(header) < 12:
                    return f'ends inside the header of record {records + 1}'
                (length,) = struct.unpack('<Q', header[:8])
                body = f.read(length + 4)
                if len(body) < length + 4:
                    return f'ends inside record {records + 1} ({len(body)} of {length + 4} bytes)'
                records += 1
    except (OSError, EOFError) as error:  # gzip: a cut-short or corrupt stream
        return f'cannot be read after {records} records ({type(error).__name__}: {error})'


def _local_files_of(config: Config, source: str) -> list[str]:
    """_matching_files when the data come from `source` in a local directory; [] otherwise."""
    data = config.data
    if data.source != source or not _local(data.path) or not os.path.isdir(data.path):
        return []
    return _matching_files(config)


def _tfrecord_files(config: Config) -> list[str]:
    problems = []
    for path in _local_files_of(config, 'tfrecord'):
        reason = truncated_tfrecord(path)
        if reason:
            problems.append(f'data.path: {path} is not a whole TFRecord file: {reason}')
    return problems


def _csv_rows_naming_missing_images(config: Config) -> list[str]:
    data = config.data
    problems = []
    for path in _local_files_of(config, 'csv'):
        with open(path, newline='') as f:
            missing = [(number, row[data.image_feature]) for number, row in enumerate(csv.DictReader(f), start=2)
                       if row.get(data.image_feature)
                       and not os.path.isfile(os.path.join(os.path.dirname(path), row[data.image_feature]))]
        if missing:
            number, name = missing[0]
            many = len(missing) > 1
            problems.append(f"data.path: {path} names {len(missing)} image file{'s' if many else ''} "
                            f"that do{'' if many else 'es'} not exist (first: line {number}, {name!r})")
    return problems


def check(config: Config) -> list[str]:
    """Every problem found, one line each; [] when the run can start."""
    paths = LocalPaths(os.path.abspath(config.run_dir))
    places = [problem for path in (paths.pipeline_root, paths.serving, paths.reports, paths.backbones, paths.data)
              for problem in _writable_place('pipeline.runs_dir', path)]
    return places[:1] + _backbone_file(config) + _input_files(config)


def check_data(config: Config) -> list[str]:
    """Input files that are there but not whole, and CSV rows naming image files that are not
    there, one line each (the CLI exits 4: bad data)."""
    return [] if _input_files(config) else _tfrecord_files(config) + _csv_rows_naming_missing_images(config)
