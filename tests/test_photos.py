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

from components.shared import input_files
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
                 'model.backbone.keras_application.weights=null', 'data.splits={train: 5, eval: 3, test: 2}',
                 # About 27 eval positives: a recall target of 0.6 tolerates a few misses there (the
                 # data gate stops a target that only every positive could meet).
                 'evaluation.decision_threshold={target_recall: 0.6}',
                 # A short plan; the head trains on cached features, so its epochs are cheap: 10 at
                 # 1e-2 move it off its start on a random-weight backbone (3 called every photo ok).
                 'trainer.stages.0.epochs=10', 'trainer.stages.0.optimizer.learning_rate=1e-2',
                 'trainer.stages.1.epochs=2',
                 'evaluation.thresholds={recall: 0.5, precision: 0.2}',
                 # The template's stages as written: its search is tested in tests/test_tuning.py.
                 'tuning=null')
    args = ['run', '--config', PHOTOS]
    for override in overrides:
        args += ['--set', override]
    result = run_cli(*args)
    config = load_config(PHOTOS, overrides)
    records = _records(config.run_dir)
    with open(os.path.join(records['Trainer'].outputs['model_run'][0].uri, TRAINING_LOG)) as f:
        log = json.load(f)
    return types.SimpleNamespace(result=result, lines=result.stdout.strip().splitlines(), records=records,
                                 config=config, log=log, photos=photos, overrides=overrides)


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


def _orientation_pair(orientation: int):
    """(a JPEG stored as a camera does, with EXIF orientation `orientation`; the same photo with its
    pixels turned upright and no EXIF), from an 80x48 picture that no turn or mirror maps onto itself."""
    import io

    from PIL import Image, ImageOps

    rng = np.random.default_rng(orientation)
    pixels = np.zeros((48, 80, 3), np.uint8)
    pixels[:, :, 0] = np.linspace(0, 255, 80, dtype=np.uint8)[None, :]
    pixels[:, :, 1] = np.linspace(0, 255, 48, dtype=np.uint8)[:, None]
    pixels[4:20, 6:30] = (230, 40, 30)
    pixels += rng.integers(0, 8, pixels.shape, np.uint8)
    stored = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = orientation
    camera, upright = io.BytesIO(), io.BytesIO()
    stored.save(camera, 'JPEG', quality=95, exif=exif.tobytes())
    ImageOps.exif_transpose(Image.open(io.BytesIO(camera.getvalue()))).save(upright, 'JPEG', quality=95)
    return camera.getvalue(), upright.getvalue()


def test_the_served_model_applies_exif_orientation_as_the_pixels_would(run, run_cli, tmp_path):
    """For each of the 8 EXIF orientations, a photo as a phone stores it and the same photo with its
    pixels turned upright: the serving signature's transformed pixels agree (within JPEG's
    re-encoding), and `predict` gives both the same probability and decision; the stored pixels
    unturned do not agree for a turned orientation."""
    import tensorflow as tf

    from components.training import features

    pushed = run.lines[-1][len('pushed: '):]
    transform = tf.saved_model.load(pushed).signatures['transform_features']

    def pixels(data: bytes) -> np.ndarray:
        # Every raw feature the data carried, as the Evaluator gives transform_features a test example.
        example = tf.train.Example(features=tf.train.Features(feature={
            'image': tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])),
            'label': tf.train.Feature(int64_list=tf.train.Int64List(value=[0])),
            input_files.SOURCE_FILE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[b'ok/x.jpg'])),
            input_files.SPLIT_GROUP: tf.train.Feature(bytes_list=tf.train.BytesList(value=[b'ok/x.jpg']))}))
        example = example.SerializeToString()
        encoded = transform(examples=tf.constant([example]))[features.IMAGE_KEY].numpy()[0]
        return tf.io.decode_image(encoded).numpy().astype(np.float32)

    files = []
    for orientation in range(1, 9):
        camera, upright = _orientation_pair(orientation)
        served, expected = pixels(camera), pixels(upright)
        assert np.abs(served - expected).mean() < 4, orientation
        if orientation in (3, 6, 8):
            from PIL import Image
            import io

            unturned = io.BytesIO()
            Image.open(io.BytesIO(camera)).save(unturned, 'JPEG', quality=95)  # EXIF dropped, pixels as stored
            assert np.abs(pixels(unturned.getvalue()) - expected).mean() > 20, orientation
        for name, data in ((f'{orientation}-camera.jpg', camera), (f'{orientation}-upright.jpg', upright)):
            (tmp_path / name).write_bytes(data)
            files.append(str(tmp_path / name))
    result = run_cli('predict', '--config', PHOTOS, *[arg for o in run.overrides for arg in ('--set', o)], *files)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.strip().splitlines() if ': probability ' in line]
    assert len(lines) == 16, result.stdout
    for camera_line, upright_line in zip(lines[0::2], lines[1::2]):
        p_camera = float(camera_line.split('probability ')[1].split()[0])
        p_upright = float(upright_line.split('probability ')[1].split()[0])
        assert abs(p_camera - p_upright) < 0.02, (camera_line, upright_line)
        assert camera_line.split('decision ')[1][:1] == upright_line.split('decision ')[1][:1]
