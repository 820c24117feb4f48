"""Checks a local run can start, in seconds and before TensorFlow is imported. Each problem is one
line naming the key, the path and what was expected.

check (the CLI exits 2): the places it writes, the backbone file (the pinned one, naming no code),
the input files present, the pipeline name not taken by another pipeline (claim_name records it
on the first run).
check_data (the CLI exits 4): the input files usable: inside data.path, TFRecord files whole, CSV
files UTF-8 naming images that are there, labels that are numbers or data.class_names entries.

Paths on object storage (gs://, s3://, ...) are checked by the steps that read them (the Trainer
for the backbone, ImageExampleGen for image folders and CSV files).
"""

import csv
import glob
import gzip
import io
import json
import os
import re
import struct
import zipfile
from typing import Optional

from components.shared import input_files, keras_archive, storage
from components.config import BackboneSection, Config
from pipeline.paths import LocalPaths

_HDF5_SIGNATURE = b'\x89HDF\r\n\x1a\n'

# What the run directory (<runs_dir>/<name>/) records of the pipeline that first ran in it. Runs of
# one pipeline change floors, epochs, learning rates and the spans data.pattern reads; where the
# data come from and what the model predicts stay. A config copied with its pipeline.name kept but
# other data or another task would share the run directory, and its model would be gated against
# the other pipeline's model in production.
PIPELINE_FILE = 'pipeline.json'


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
        mismatch = backbone.sha256_mismatch(path, storage.sha256_of(f), backbone.sha256)
    return [mismatch] if mismatch else []


def _backbone_file(config: Config) -> list[str]:
    """The backbone file is the one pinned, opens as what it claims to be, and (a .keras file) names
    no code in its config (components.shared.keras_archive)."""
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


def _skip(f, count: int) -> int:
    """Reads past up to `count` bytes of the stream `f` in 1 MB blocks (never allocating `count`,
    which a corrupt header may set to 2^64); the number of bytes there were."""
    skipped = 0
    while skipped < count:
        block = f.read(min(1 << 20, count - skipped))
        if not block:
            break
        skipped += len(block)
    return skipped


def truncated_tfrecord(path: str) -> Optional[str]:
    """Why the TFRecord file at `path` (gzipped when named *.gz) is cut short, or None when every
    record it announces is there. Reads the record headers only (8-byte length, 4-byte CRC, data,
    4-byte CRC), not the data's CRCs: a file a killed writer or an interrupted copy left behind
    ends in the middle of a record, and a header that is not one announces more than the file
    holds. TensorFlow is not imported for this (it takes seconds)."""
    gzipped = path.endswith('.gz')
    size = None if gzipped else os.path.getsize(path)
    records = 0
    try:
        with (gzip.open if gzipped else open)(path, 'rb') as f:
            while True:
                header = f.read(12)
                if not header:
                    return None
                if len(header) < 12:
                    return f'ends inside the header of record {records + 1}'
                (length,) = struct.unpack('<Q', header[:8])
                if gzipped:
                    got = _skip(f, length + 4)
                    total = f'{f.tell()} uncompressed'
                else:  # the size is known: compare, and seek past the record
                    got = min(length + 4, size - f.tell())
                    f.seek(got, os.SEEK_CUR)
                    total = str(size)
                if got < length + 4:
                    if length > f.tell():
                        return f'record {records + 1} announces {length} bytes; the file has {total}'
                    return f'ends inside record {records + 1} ({got} of {length + 4} bytes)'
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


def _first_of(problems: list[str], kind: str) -> list[str]:
    """The first of one `kind` of problem in one file, with how many more there are."""
    if len(problems) > 1:
        return [f'{problems[0]} (and {len(problems) - 1} more rows {kind})']
    return problems


def _files_outside(config: Config) -> list[str]:
    """Input files (or symlinks to them) that resolve outside data.path."""
    if config.data.source == 'digits':
        return []
    problems = (input_files.file_outside(config.data.path, path) for path in _local_files_of(config, config.data.source))
    return [problem for problem in problems if problem]


def _folder_labels(config: Config) -> list[str]:
    """Class folders that are neither in data.class_names nor plain numbers, one line each."""
    folders = sorted({os.path.dirname(path) for path in _local_files_of(config, 'images') if input_files.is_image(path)})
    problems = (input_files.label_problem(os.path.basename(folder), config.data.class_names, f'data.path: folder {folder}')
                for folder in folders)
    return [problem for problem in problems if problem]


def _csv_file(config: Config, path: str) -> list[str]:
    """What is wrong with one CSV file: its encoding; else its rows naming images outside data.path
    or not there, and its labels (each kind once, with a count)."""
    data = config.data
    with open(path, 'rb') as f:
        try:
            text = input_files.csv_text(path, f.read())
        except ValueError as error:
            return [str(error)]
    outside, missing, labels = [], [], []
    for number, row in enumerate(csv.DictReader(io.StringIO(text, newline='')), start=2):
        name, value = row.get(data.image_feature), row.get(data.label_feature)
        if name:
            image, problem = input_files.image_path(data.path, path, number, name)
            if problem:
                outside.append(problem)
            elif not os.path.isfile(image):
                missing.append((number, name))
        if value:
            problem = input_files.label_problem(value, data.class_names, f'data.path: {path} line {number}')
            if problem:
                labels.append(problem)
    problems = _first_of(outside, 'outside data.path')
    if missing:
        number, name = missing[0]
        many = len(missing) > 1
        problems.append(f"data.path: {path} names {len(missing)} image file{'s' if many else ''} "
                        f"that do{'' if many else 'es'} not exist (first: line {number}, {name!r})")
    return problems + _first_of(labels, 'with such a label')


def _csv_files(config: Config) -> list[str]:
    return [problem for path in _local_files_of(config, 'csv') for problem in _csv_file(config, path)]


def _identity(config: Config) -> dict:
    """The settings that make a pipeline the one it is: where its data come from (data.path, or
    for source=digits the digits) and its task."""
    data = config.data
    if data.source == 'digits':
        where = {'data.digits_classes': list(data.digits_classes)}
    else:
        where = {'data.path': os.path.abspath(data.path) if _local(data.path) else data.path.rstrip('/')}
    return {'data.source': data.source, **where, 'task.type': config.task.type,
            'task.positive_class': config.task.positive_class, 'task.classes': list(config.output_classes) or None}


def _settings(identity: dict) -> str:
    return ', '.join(f'{key} {value}' for key, value in identity.items() if value is not None)


def reused_name(config: Config) -> Optional[str]:
    """The line refusing a config whose pipeline.name another pipeline (other data or another
    task) recorded in the run directory; None when the name is free or this pipeline's."""
    path = os.path.join(config.run_dir, PIPELINE_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            recorded = json.load(f)
        identity, config_file = recorded['identity'], recorded['config']
    except (OSError, ValueError, KeyError, TypeError) as error:
        return (f'pipeline.name: {path} does not hold the pipeline that ran here ({type(error).__name__}: {error}); '
                'delete it and the next run records this config')
    mine = _identity(config)
    if identity == mine:
        return None
    differing = {key: value for key, value in mine.items() if identity.get(key) != value}
    moved = f' (or delete {path} if the data moved)' if 'data.path' in differing else ''
    return (f'pipeline.name {config.pipeline.name!r} is already used in {config.run_dir} by a pipeline with '
            f'{_settings(identity)} (first run from {config_file}); this config has '
            f'{_settings(differing)}: give it its own pipeline.name{moved}')


def claim_name(config: Config, config_file: str) -> Optional[str]:
    """reused_name, or else records this pipeline in its run directory (on its first run that gets
    past the data checks) and returns None. Called under the run directory's lock: of two first runs
    with other data, the second finds the first's record."""
    problem = reused_name(config)
    path = os.path.join(config.run_dir, PIPELINE_FILE)
    if problem or os.path.exists(path):
        return problem
    os.makedirs(config.run_dir, exist_ok=True)
    with open(path + '.partial', 'w') as f:
        json.dump({'identity': _identity(config), 'config': os.path.abspath(config_file)}, f, indent=2)
    os.replace(path + '.partial', path)
    return None


def check(config: Config) -> list[str]:
    """Every problem found, one line each; [] when the run can start."""
    paths = LocalPaths(os.path.abspath(config.run_dir))
    places = [problem for path in (paths.pipeline_root, paths.serving, paths.reports, paths.backbones, paths.data)
              for problem in _writable_place('pipeline.runs_dir', path)]
    name = reused_name(config)
    return places[:1] + ([name] if name else []) + _backbone_file(config) + _input_files(config)


def check_data(config: Config) -> list[str]:
    """Input files that are there but not usable, one line each (the CLI exits 4: bad data): files
    resolving outside data.path (then nothing is read from them), TFRecord files not whole, CSV
    files not UTF-8 or with rows naming images outside data.path or not there, and class folders or
    CSV labels that are no plain number and not in data.class_names (components.shared.input_files)."""
    if _input_files(config):
        return []
    outside = _files_outside(config)
    return outside or _tfrecord_files(config) + _csv_files(config) + _folder_labels(config)
