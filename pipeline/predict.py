"""`predict`: image files through the model in production, as a client of TF Serving sends them.

Each file's bytes go into a tf.Example under `data.image_feature`, unchanged (PNG or JPEG, any
size: the served model's transform graph decodes and resizes them as it did the training data),
and the serialized examples go to the SavedModel's `serving_default` signature, the one TF
Serving's predict and classify APIs call.
"""

import os
from typing import Optional

from pipeline.config import Config
from pipeline.paths import LocalPaths
from pipeline.registry import RegistryError, versions


def unreadable(files: list[str]) -> list[str]:
    """One line per file that cannot be read as an image, naming it and why (Pillow, no TensorFlow)."""
    from PIL import Image, UnidentifiedImageError

    lines = []
    for path in files:
        try:
            with Image.open(path) as image:
                image.load()  # the whole file: a truncated one fails here
        except (OSError, UnidentifiedImageError, ValueError) as error:
            reason = 'no such file' if isinstance(error, FileNotFoundError) else ' '.join(str(error).split())
            lines.append(f'{path}: cannot read it as an image ({reason})')
    return lines


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

    from components import export, features

    model = tf.saved_model.load(path)
    serve = model.signatures['serving_default']
    examples = []
    for name in files:
        with open(name, 'rb') as f:
            feature = {config.data.image_feature: tf.train.Feature(bytes_list=tf.train.BytesList(value=[f.read()]))}
        examples.append(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    outputs = {k: v.numpy() for k, v in serve(examples=tf.constant(examples)).items()}
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
