"""Pre-trained backbones: built once, saved as a `.keras` file, imported into the pipeline as an artifact.

Every kind of backbone (a source-task run here, a user's saved Keras model, a keras.applications
network) ends up as one `.keras` file, so the Trainer has a single loading path and ML Metadata
records exactly which weights each model started from.
"""

import hashlib
import json
import os
from typing import Optional

import numpy as np

from components.training import digits
from components.shared import keras_archive, storage
from components.config import APPLICATION_PREPROCESSING, BackboneSection, ImageShape, SourceTask

BACKBONE_FILE = 'backbone.keras'
# Part of the cache key of built backbones: bump it when build_digits_cnn or the pre-training changes.
RECIPE_VERSION = 2
SOURCE_TASK_REPORT = 'source_task.json'


def _fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def build_digits_cnn(shape: ImageShape):
    """A small convolutional feature extractor: [H, W, C] images -> 64 features.

    Three conv blocks with BatchNorm, so that freezing and BatchNorm inference mode matter
    exactly as they do in ImageNet backbones.
    """
    import keras

    inputs = keras.Input((shape.height, shape.width, shape.channels), name='image')
    x = inputs
    # momentum 0.9 rather than Keras' 0.99: with a few hundred steps of pre-training, 0.99 leaves the
    # moving statistics far from the batch statistics and inference-mode accuracy at chance.
    for block, filters in enumerate((16, 32, 64), start=1):
        x = keras.layers.Conv2D(filters, 3, padding='same', use_bias=False, name=f'block{block}_conv')(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f'block{block}_bn')(x)
        x = keras.layers.Activation('relu', name=f'block{block}_relu')(x)
        if block < 3:
            x = keras.layers.MaxPooling2D(2, padding='same', name=f'block{block}_pool')(x)
    outputs = keras.layers.GlobalAveragePooling2D(name='features')(x)
    return keras.Model(inputs, outputs, name='digits_backbone')


def _source_task_images(task: SourceTask, shape: ImageShape) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow as tf

    images, labels = digits.load_digits_images(task.classes)
    x = tf.image.resize(images[..., None].astype(np.float32) / 255.0, [shape.height, shape.width]).numpy()
    if shape.channels == 3:
        x = np.repeat(x, 3, axis=-1)
    y = np.searchsorted(np.array(sorted(task.classes)), labels)
    return x, y


def pretrain_source_task(task: SourceTask, shape: ImageShape, output_dir: str) -> dict:
    """Trains build_digits_cnn + a softmax head on digits `task.classes`; saves only the backbone.

    Writes `backbone.keras` and `source_task.json` (held-out accuracy on the source task) into
    `output_dir` through a temporary directory, so a half-written backbone is never imported.
    Returns the report.
    """
    import keras

    keras.utils.set_random_seed(task.seed)
    x, y = _source_task_images(task, shape)
    order = np.random.default_rng(task.seed).permutation(len(y))
    held_out = order[: len(y) // 5]
    train = order[len(y) // 5:]

    backbone = build_digits_cnn(shape)
    classifier = keras.Sequential([backbone, keras.layers.Dense(len(task.classes), activation='softmax')])
    classifier.compile(optimizer=keras.optimizers.Adam(1e-3), loss='sparse_categorical_crossentropy',
                       metrics=['accuracy'])
    classifier.fit(x[train], y[train], batch_size=32, epochs=task.epochs, verbose=0)
    _, accuracy = classifier.evaluate(x[held_out], y[held_out], verbose=0)

    report = {'classes': list(task.classes), 'epochs': task.epochs, 'train_examples': len(train),
              'held_out_examples': len(held_out), 'held_out_accuracy': float(accuracy)}
    with storage.atomic_path(output_dir) as staging:
        os.makedirs(staging, exist_ok=True)
        backbone.save(os.path.join(staging, BACKBONE_FILE))
        with open(os.path.join(staging, SOURCE_TASK_REPORT), 'w') as f:
            json.dump(report, f, indent=2)
    return report


def build_keras_application(name: str, weights, kwargs: dict, shape: ImageShape, preprocessing: Optional[str] = None):
    """keras.applications.<name> without its top, with global average pooling: [0, 1] images -> features.

    Its first layer applies the input preprocessing the network's weights expect
    (components.training.backbone_inputs): `preprocessing`, or by default its family's own; the network
    follows as one nested model.
    """
    import keras

    from components.training import backbone_inputs

    constructor = getattr(keras.applications, name, None)
    if constructor is None:
        raise ValueError(f'model.backbone.keras_application.name = {name!r}: not in keras.applications')
    mode = preprocessing or APPLICATION_PREPROCESSING.get(name)
    if mode is None:
        raise ValueError(f'model.backbone.keras_application.name = {name!r}: its input preprocessing is not known; '
                         'state it with model.backbone.keras_application.preprocessing')
    network = constructor(include_top=False, weights=weights, pooling='avg',
                          input_shape=(shape.height, shape.width, shape.channels), **kwargs)
    # The application is nested whole rather than built on the preprocessed tensor (input_tensor=):
    # some constructors (ConvNeXt in Keras 3.3) would silently start from the raw input instead.
    # Freezing looks through nested models (components.training.freezing.leaf_layers).
    inputs = keras.Input((shape.height, shape.width, shape.channels), name='image')
    prepared = backbone_inputs.InputPreprocessing(mode, name=backbone_inputs.LAYER_NAME)(inputs)
    return keras.Model(inputs, network(prepared), name=f'{network.name}_backbone')


def prepare_backbone(backbone: BackboneSection, shape: ImageShape, backbones_dir: str) -> str:
    """Returns the URI to import as the backbone artifact, building it first when needed.

    Built backbones are cached under `backbones_dir` by a fingerprint of their settings (a pinned
    weights file's sha256 among them). The file a backbone is read from is verified first (verify_file).
    """
    if backbone.pinned_file is not None:
        verify_file(backbone.pinned_file, backbone.sha256)
    if backbone.keras_file is not None:
        return os.path.abspath(backbone.keras_file)
    if backbone.source_task is not None:
        task = backbone.source_task
        output_dir = os.path.join(backbones_dir, 'source-task-' + _fingerprint(RECIPE_VERSION, task.model_dump(), shape.model_dump()))
        if not os.path.exists(os.path.join(output_dir, BACKBONE_FILE)):
            pretrain_source_task(task, shape, output_dir)
        return os.path.abspath(output_dir)
    app = backbone.keras_application
    pinned = (backbone.sha256.lower(),) if backbone.sha256 else ()
    output_dir = os.path.join(backbones_dir, f'{app.name}-' + _fingerprint(
        app.model_dump(), app.input_preprocessing, shape.model_dump(), *pinned))
    if not os.path.exists(os.path.join(output_dir, BACKBONE_FILE)):
        model = build_keras_application(app.name, app.weights, app.kwargs, shape, app.input_preprocessing)
        with storage.atomic_path(output_dir) as staging:
            os.makedirs(staging, exist_ok=True)
            model.save(os.path.join(staging, BACKBONE_FILE))
    return os.path.abspath(output_dir)


def backbone_file(imported_uri: str) -> str:
    """The `.keras` file inside an imported backbone artifact (a local path or an object-storage
    URI such as gs://...).

    TFX hands the Trainer `<artifact uri>/Format-Serving` as `base_model`; a backbone artifact is
    either a `.keras` file or a directory holding `backbone.keras`, so the artifact URI is tried too.
    """
    from tfx.dsl.io import fileio

    for candidate in (imported_uri, os.path.dirname(imported_uri)):
        if candidate.endswith('.keras') and fileio.exists(candidate) and not fileio.isdir(candidate):
            return candidate
        if fileio.exists(os.path.join(candidate, BACKBONE_FILE)):
            return os.path.join(candidate, BACKBONE_FILE)
    raise FileNotFoundError(f'no {BACKBONE_FILE} (or .keras file) at backbone artifact {imported_uri}')


def verify_file(path: str, sha256: Optional[str] = None, shown: Optional[str] = None) -> None:
    """Raises ValueError, one line naming the file (`shown`, by default `path`), when the file at
    `path` (local or on object storage) is not the one `sha256` pins (model.backbone.sha256), or,
    being a `.keras` file, names code in its config (components.shared.keras_archive)."""
    from tfx.dsl.io import fileio

    shown = shown or path
    if sha256 is not None:
        with fileio.open(path, 'rb') as f:
            mismatch = BackboneSection.sha256_mismatch(shown, storage.sha256_of(f), sha256)
        if mismatch:
            raise ValueError(mismatch)
    if path.endswith('.keras'):
        with fileio.open(path, 'rb') as f:
            refused = keras_archive.foreign_object(f)
        if refused:
            raise ValueError(f'model.backbone: {shown} {refused}')


def load_backbone(path: str, sha256: Optional[str] = None):
    """Loads a backbone `.keras` file (local or on object storage, which is copied to a local
    temporary file first) once verify_file passes; a feature map output is pooled to a feature vector."""
    import keras

    # Registers the preprocessing layer that keras.applications backbones carry.
    from components.training import backbone_inputs  # noqa: F401

    with storage.local_copy(path) as local:
        # The bytes verified are the bytes Keras reads: the local copy.
        verify_file(local, sha256, shown=path)
        model = keras.saving.load_model(local, compile=False, safe_mode=True)
    if len(model.output.shape) == 4:
        pooled = keras.layers.GlobalAveragePooling2D(name='backbone_pool')(model.output)
        model = keras.Model(model.input, pooled, name=model.name)
    return model
