"""`predict`: image files through the model in production, as a client of TF Serving sends them.

Each file's bytes go into a tf.Example under `data.image_feature`, unchanged (PNG or JPEG, up to
`data.max_image_pixels`: the served model's transform graph decodes and resizes them as it did the
training data), and the serialized examples go to the SavedModel's `serving_default` signature,
the one TF Serving's predict and classify APIs call.
"""

import os
import re
import stat
import warnings
from typing import Optional

from components.config import Config
from pipeline.paths import LocalPaths
from components.shared.serving_layout import versions
from pipeline.registry import RegistryError

_NOT_REGULAR = ((stat.S_ISDIR, 'a directory'), (stat.S_ISFIFO, 'a FIFO'), (stat.S_ISCHR, 'a character device'),
                (stat.S_ISBLK, 'a block device'), (stat.S_ISSOCK, 'a socket'))


class RefusedError(RuntimeError):
    """The served model refused some images; args[0]: one line per refused file."""


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


def model_path(config: Config, version: Optional[str]) -> str:
    """The served version's directory (the newest), or `version`'s."""
    serving = LocalPaths(os.path.abspath(config.run_dir)).serving
    available = versions(serving)
    if not available:
        raise RegistryError(f'no model in production under {serving}: run the pipeline first')
    if version is None:
        return os.path.join(serving, available[0])
    if version not in available:
        raise RegistryError(f'--version {version}: no such version (versions: {", ".join(available)})')
    return os.path.join(serving, version)


def predict(config: Config, path: str, files: list[str]) -> list[str]:
    """Runs `files` through the SavedModel at `path`; one line per file."""
    import tensorflow as tf

    from components.training import export, features

    model = tf.saved_model.load(path)
    serve = model.signatures['serving_default']
    examples = []
    for name in files:
        with open(name, 'rb') as f:
            feature = {config.data.image_feature: tf.train.Feature(bytes_list=tf.train.BytesList(value=[f.read()]))}
        examples.append(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    try:
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
    the model was trained with, which need not be the config's, and Pillow reads formats that
    tf.io.decode_image does not."""
    import tensorflow as tf

    lines = []
    for name, example in zip(files, examples):
        try:
            serve(examples=tf.constant([example]))
        except tf.errors.InvalidArgumentError as error:
            found = re.search(r'\[(\S+ pixels is over data\.max_image_pixels \d+)\]', error.message)
            reason = found[1] if found else next(line.strip() for line in error.message.splitlines() if line.strip())
            lines.append(f'{name}: the served model refuses it ({reason})')
    return lines
