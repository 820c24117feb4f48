"""`predict`: image files through the model in production, as a client of TF Serving sends them.

Each file's bytes go into a tf.Example under `data.image_feature`, unchanged (PNG or JPEG, up to
`data.max_image_pixels`: the served model's transform graph decodes and resizes them as it did the
training data), and the serialized examples go to the SavedModel's `serving_default` signature,
the one TF Serving's predict and classify APIs call.
"""

import contextlib
import io
import os
import re
import stat
import sys
import tempfile
import warnings
from typing import Iterator, Optional

from components.config import Config
from pipeline.paths import LocalPaths
from components.shared.serving_layout import incomplete, versions
from pipeline import registry
from pipeline.registry import RegistryError

_NOT_REGULAR = ((stat.S_ISDIR, 'a directory'), (stat.S_ISFIFO, 'a FIFO'), (stat.S_ISCHR, 'a character device'),
                (stat.S_ISBLK, 'a block device'), (stat.S_ISSOCK, 'a socket'))


class RefusedError(RuntimeError):
    """The served model refused some images; args[0]: one line per refused file."""


class UnloadableError(RuntimeError):
    """The SavedModel does not load; the message is TensorFlow's reason, on one line."""


def unreadable(files: list[str], max_pixels: int) -> list[str]:
    """One line per file that cannot be read as an image of at most `max_pixels` pixels, naming it
    and why (os.stat and Pillow, no TensorFlow)."""
    return [f'{path}: {problem}' for path in files
            if (problem := _not_a_regular_file(path) or _not_an_image(path, max_pixels))]


def _not_a_regular_file(path: str) -> Optional[str]:
    """Why `path` is not a regular file, from os.stat alone: opening a FIFO blocks until something
    writes to it, and opening a device can act on it."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return 'cannot read it as an image (no such file)'
    except OSError as error:
        return f'cannot read it ({error.strerror})'
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _NOT_REGULAR if test(mode)), 'not a file')
    return f'not a regular file ({kind}); expected an image file'


def _not_an_image(path: str, max_pixels: int) -> Optional[str]:
    """Why Pillow cannot read `path` as an image of at most `max_pixels` pixels. Image.open reads
    the header only; Pillow's own limit (Image.MAX_IMAGE_PIXELS, a process-wide setting) is off
    while it does, so that the size is compared here and named, and is `max_pixels` while the
    image is decoded (a GIF frame can be larger than its header says)."""
    from PIL import Image, UnidentifiedImageError

    pillow_limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                return f'{width}x{height} pixels is over data.max_image_pixels {max_pixels}'
            Image.MAX_IMAGE_PIXELS = max_pixels
            with warnings.catch_warnings():
                warnings.simplefilter('error', Image.DecompressionBombWarning)
                image.load()  # the whole file: a truncated one fails here
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        return f'over data.max_image_pixels {max_pixels} ({error})'
    except (OSError, UnidentifiedImageError, ValueError) as error:
        return f'cannot read it as an image ({" ".join(str(error).split())})'
    finally:
        Image.MAX_IMAGE_PIXELS = pillow_limit
    return None


def model_path(config: Config, version: Optional[str], rollback_command: str) -> str:
    """The served version's directory (the newest), or `version`'s. RegistryError when there is
    none, or it is not complete (for production, the line saying which rollback to run:
    `rollback_command`, without --to)."""
    serving = LocalPaths(os.path.abspath(config.run_dir)).serving
    available = versions(serving)
    if not available:
        raise RegistryError(f'no model in production under {serving}: run the pipeline first')
    if version is None:
        broken = registry.broken_production(config, rollback_command)
        if broken:
            raise RegistryError(broken)
        return os.path.join(serving, available[0])
    if version not in available:
        raise RegistryError(f'--version {version}: no such version (versions: {", ".join(available)})')
    path = os.path.join(serving, version)
    problem = incomplete(path)
    if problem:
        raise RegistryError(f'version {version} is broken ({registry.describe(path, problem)})')
    return path


def predict(config: Config, path: str, files: list[str]) -> list[str]:
    """Runs `files` through the SavedModel at `path`; one line per file. UnloadableError when the
    model does not load, RefusedError when its signature refuses some files."""
    import tensorflow as tf

    from components.training import export, features

    try:
        serve = tf.saved_model.load(path).signatures['serving_default']
    except Exception as error:  # noqa: BLE001 - TensorFlow raises by what broke (DataLossError, KeyError, ...)
        raise UnloadableError(f"{type(error).__name__}: {' '.join(str(error).split())[:300]}") from error
    examples = []
    for name in files:
        with open(name, 'rb') as f:
            feature = {config.data.image_feature: tf.train.Feature(bytes_list=tf.train.BytesList(value=[f.read()]))}
        examples.append(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    try:
        with _native_stderr():
            outputs = {k: v.numpy() for k, v in serve(examples=tf.constant(examples)).items()}
    except tf.errors.InvalidArgumentError:
        raise RefusedError(_refused(serve, files, examples)) from None
    probabilities = outputs[features.PREDICTION_KEY]
    lines = []
    if features.PREDICTED_CLASS_KEY in outputs:  # multiclass
        classes = config.classes
        for i, name in enumerate(files):
            ranked = sorted(zip(classes, probabilities[i]), key=lambda pair: -pair[1])
            lines.append(f"{name}: class {outputs[features.PREDICTED_CLASS_KEY][i]} "
                         f"(probabilities: {', '.join(f'{c} {p:.4f}' for c, p in ranked)})")
        return lines
    threshold = (export.read_decision_threshold(path) or {'value': 0.5})['value']
    positive = config.task.positive_class
    for i, name in enumerate(files):
        decision = int(outputs[features.DECISION_KEY][i])
        lines.append(f'{name}: probability {probabilities[i][0]:.4f} of class {positive}, '
                     f"decision {decision} ({'is' if decision else 'not'} {positive}; threshold {threshold:.4g})")
    return lines


def _refused(serve, files: list[str], examples: list[bytes]) -> list[str]:
    """One line per file the signature refuses on its own: the transform graph's limit is the one
    the model was trained with, which need not be the config's, and Pillow reads formats (a CMYK
    JPEG for a model of 1 channel) that tf.io.decode_image does not decode as the model asks."""
    import tensorflow as tf

    lines = []
    for name, example in zip(files, examples):
        try:
            with _native_stderr() as native:
                serve(examples=tf.constant([example]))
        except tf.errors.InvalidArgumentError as error:
            found = re.search(r'\[(\S+ pixels is over data\.max_image_pixels \d+)\]', error.message)
            if found:
                lines.append(f'{name}: the served model refuses it ({found[1]})')
            elif 'DecodeImage' in error.message:
                # TensorFlow says only that decoding failed; libjpeg printed why ("Unsupported color
                # conversion request") on the process's stderr.
                channels = _decoded_channels(serve)
                lines.append(f"{name}: does not decode as the model's {channels} channel{'s' * (channels != 1)} "
                             f'({_last_line(native.getvalue()) or _last_line(error.message)})')
            else:
                lines.append(f'{name}: the served model refuses it ({_first_line(error.message)})')
    return lines


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), '')


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith('[[')]
    return lines[-1] if lines else ''


def _decoded_channels(serve) -> int:
    """The channels the serving graph's DecodeImage asks for: the model's input channels."""
    graph = serve.graph.as_graph_def()
    nodes = [node for function in graph.library.function for node in function.node_def] + list(graph.node)
    return next(node.attr['channels'].i for node in nodes if node.op == 'DecodeImage')


@contextlib.contextmanager
def _native_stderr() -> Iterator[io.StringIO]:
    """What native code writes to the process's stderr (file descriptor 2) during the block goes
    into the StringIO it yields, instead of the terminal: libjpeg prints its reason for refusing a
    file there, beside TensorFlow's error."""
    sys.stderr.flush()
    text, saved = io.StringIO(), os.dup(2)
    with tempfile.TemporaryFile('w+', errors='replace') as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield text
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text.write(captured.read())
