"""configs/photos.yaml, the config a user copies, run as they would run it on photos their own
tools wrote: RGB JPEGs (and a few PNGs) of assorted sizes in one folder per class. The changes:
random weights instead of ImageNet's (no download here), the folder, fewer epochs, splits that give
a small set enough eval and test positives, and floors a random-weight backbone can meet (its
features carry next to nothing, so this proves the path, not the accuracy)."""

import json
import os
import types

import numpy as np
import pytest

from components.shared.artifact_files import TRAINING_LOG
from tests.conftest import REPO, _records


pytestmark = pytest.mark.e2e
PHOTOS = os.path.join(REPO, 'configs', 'photos.yaml')


def write_photos(root, per_class: int = 90, seed: int = 0) -> None:
    """`root/ok/*.jpg` (dark, noisy) and `root/defect/*.jpg` (the same, with a bright red blotch
    somewhere), sizes from 50x40 to 160x120; every tenth a PNG."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for folder in ('ok', 'defect'):
        os.makedirs(os.path.join(root, folder))
        for i in range(per_class):
            width, height = int(rng.integers(50, 161)), int(rng.integers(40, 121))
            pixels = rng.integers(0, 90, (height, width, 3)).astype(np.uint8)
            if folder == 'defect':
                size = max(8, min(width, height) // 2)  # a quarter of the picture: a random backbone sees it
                top, left = int(rng.integers(0, height - size)), int(rng.integers(0, width - size))
                pixels[top:top + size, left:left + size] = (230, 40, 30)
            name = os.path.join(root, folder, f'IMG_{i:04d}.{"png" if i % 10 == 0 else "jpg"}')
            Image.fromarray(pixels).save(name, **({} if name.endswith('png') else {'quality': 90}))


@pytest.fixture(scope='module')
def run(tmp_path_factory, run_cli):
    from components.config import load_config

    photos = str(tmp_path_factory.mktemp('photos') / 'my-photos')
    write_photos(photos)
    overrides = (f'pipeline.runs_dir={tmp_path_factory.mktemp("runs")}', f'data.path={photos}',
                 'model.backbone.keras_application.weights=null', 'data.splits={train: 6, eval: 2, test: 2}',
                 # A short plan; the head trains on cached features, so its epochs are cheap: 10 at
                 # 1e-2 move it off its start on a random-weight backbone (3 called every photo ok).
                 'trainer.stages.0.epochs=10', 'trainer.stages.0.optimizer.learning_rate=1e-2',
                 'trainer.stages.1.epochs=2',
                 'evaluation.thresholds={recall: 0.5, precision: 0.2}')
    args = ['run', '--config', PHOTOS]
    for override in overrides:
        args += ['--set', override]
    result = run_cli(*args)
    config = load_config(PHOTOS, overrides)
    records = _records(config.run_dir)
    with open(os.path.join(records['Trainer'].outputs['model_run'][0].uri, TRAINING_LOG)) as f:
        log = json.load(f)
    return types.SimpleNamespace(result=result, lines=result.stdout.strip().splitlines(), records=records,
                                 config=config, log=log, photos=photos)


def test_photos_config_runs_end_to_end_and_pushes(run):
    assert run.result.returncode == 0, run.result.stdout[-3000:] + run.result.stderr[-3000:]
    assert run.lines[-1].startswith('pushed: ')
    assert any(line.startswith('decision threshold: ') for line in run.lines)
    assert run.log['augmentation'] == {'flip': 'horizontal', 'rotation': 0.05, 'zoom': 0.1, 'translation': 0.1,
                                       'contrast': 0.2}
    assert set(run.log['class_weight']) == {'0', '1'}
    # The head trains on the photos as they are, on backbone features computed once; the top on
    # augmented photos, through the backbone.
    head, top = run.log['stages']
    assert (head['augmented'], head['feature_cache']['cached']) == (False, True)
    assert head['feature_cache']['examples'] > run.log['train_examples']  # the training and the eval photos
    assert top['augmented'] is True and top['feature_cache']['cached'] is False


def test_the_backbone_gets_mobilenet_v2_preprocessing(run):
    from components.training import backbone, backbone_inputs

    imported = run.records['backbone_importer'].outputs['result'][0].uri
    model = backbone.load_backbone(backbone.backbone_file(imported))
    assert model.get_layer(backbone_inputs.LAYER_NAME).mode == 'tf'
    assert model.input_shape == (None, 96, 96, 3)


def test_pushed_model_serves_a_users_jpeg_as_a_client_would(run):
    """A raw tf.Example with the user's JPEG bytes, as TF Serving receives it: probability and
    decision at the model's threshold."""
    import tensorflow as tf

    pushed = run.lines[-1][len('pushed: '):]
    serve = tf.saved_model.load(pushed).signatures['serving_default']
    examples = []
    for folder in ('ok', 'defect'):
        with open(os.path.join(run.photos, folder, 'IMG_0001.jpg'), 'rb') as f:
            examples.append(tf.train.Example(features=tf.train.Features(feature={
                'image': tf.train.Feature(bytes_list=tf.train.BytesList(value=[f.read()]))})).SerializeToString())
    out = serve(examples=tf.constant(examples))
    probabilities = out['probabilities'].numpy()[:, 0]
    assert probabilities.shape == (2,) and np.all((probabilities >= 0) & (probabilities <= 1))
    threshold = run.log['decision_threshold']['value']
    np.testing.assert_array_equal(out['decision'].numpy(), (probabilities > threshold).astype(np.int64))
