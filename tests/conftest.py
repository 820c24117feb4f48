"""The real pipeline, run through the CLI on the embedded default, once per test session; the test
modules of this directory assert on these runs' outputs (tests/test_end_to_end.py says what each run
is). The first run is a `python -m pipeline run` process of its own; the later ones call the same
CLI in this process (the root conftest.py's run_cli)."""

import os
import subprocess
import sys
import types

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, 'configs', 'local.yaml')


def _run_args(runs_dir, *overrides) -> list[str]:
    args = ['run', '--config', CONFIG, '--set', f'pipeline.runs_dir={runs_dir}']
    for override in overrides:
        args += ['--set', override]
    return args


def _records(run_dir):
    from tfx import v1 as tfx

    from components.reporting import run_summary

    connection = tfx.orchestration.metadata.sqlite_metadata_connection_config(os.path.join(run_dir, 'metadata.sqlite'))
    return run_summary.latest_run(connection)


@pytest.fixture(scope='session')
def first_run(tmp_path_factory):
    runs_dir = tmp_path_factory.mktemp('runs')
    # The real command, in its own process: what a user or a scheduler runs, in a user's
    # environment (without the logging level the test session sets for itself).
    env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
    result = subprocess.run([sys.executable, '-m', 'pipeline', *_run_args(runs_dir)], cwd=REPO, capture_output=True,
                            text=True, timeout=1500, env=env)
    run_dir = os.path.join(runs_dir, 'digits-finetune')
    return types.SimpleNamespace(result=result, run_dir=run_dir, records=_records(run_dir),
                                 lines=result.stdout.strip().splitlines())


def uncertain_floors(records) -> dict[str, float]:
    """Recall and precision floors between the lower bound and the value the first run's gate found
    (3 decimals): the point rule passes them, the lower bound does not."""
    import json

    from components.shared import artifact_files

    with open(os.path.join(records['Evaluator'].outputs['evaluation'][0].uri, artifact_files.GATE_REPORT_JSON)) as f:
        checks = {c['metric']: c for c in json.load(f)['checks'] if c['kind'] == 'floor'}
    floors = {}
    for metric in ('recall', 'precision'):
        check = checks[metric]
        floors[metric] = round((check['interval']['low'] + check['value']) / 2, 3)
        assert check['interval']['low'] < floors[metric] <= check['value']
    return floors


@pytest.fixture(scope='session')
def rejected_run(first_run, tree_digest, run_cli):
    """Floors the first run's model clears on its values but not on their lower bounds."""
    serving = os.path.join(first_run.run_dir, 'serving')
    before = tree_digest(serving)
    floors = uncertain_floors(first_run.records)
    result = run_cli(*_run_args(os.path.dirname(first_run.run_dir),
                                *(f'evaluation.thresholds.{m}={v}' for m, v in floors.items())))
    return types.SimpleNamespace(result=result, serving_before=before, serving_after=tree_digest(serving),
                                 records=_records(first_run.run_dir), lines=result.stdout.strip().splitlines(),
                                 floors=floors)


@pytest.fixture(scope='session')
def point_rule_run(rejected_run, first_run, tree_digest, run_cli):
    """The rejected run's floors on the point rule (evaluation.confidence: null)."""
    serving = os.path.join(first_run.run_dir, 'serving')
    before = tree_digest(serving)
    result = run_cli(*_run_args(os.path.dirname(first_run.run_dir), 'evaluation.confidence=null',
                                *(f'evaluation.thresholds.{m}={v}' for m, v in rejected_run.floors.items())))
    return types.SimpleNamespace(result=result, serving_before=before, serving_after=tree_digest(serving),
                                 records=_records(first_run.run_dir), lines=result.stdout.strip().splitlines())


HEAD_ONLY = '[{name: head, epochs: 10, unfreeze: none, optimizer: {name: adam, learning_rate: 3e-3}}]'


def push_one_more_positive(records, serving: str) -> dict:
    """Puts into production a copy of the served model that catches one test positive more: its
    serving signature answers 0.99 for one positive the served model misses, every other example
    as the served model does. Returns {'path': the new version, 'example': that positive's bytes}."""
    import shutil
    import tempfile

    import numpy as np
    import tensorflow as tf

    from components.training import export
    from components.nodes import atomic_pusher
    from components.shared import serving_layout

    served = os.path.join(serving, serving_layout.latest_version(serving))
    model = tf.saved_model.load(served)
    examples_uri = records['ImportExampleGen'].outputs['examples'][0].uri
    files = tf.io.gfile.glob(os.path.join(examples_uri, 'Split-test', '*'))
    raw = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type='GZIP')]
    labels = np.array([tf.train.Example.FromString(r).features.feature['label'].int64_list.value[0] for r in raw])
    probabilities = model.signatures['serving_default'](examples=tf.constant(raw))['probabilities'].numpy()[:, 0]
    threshold = export.read_decision_threshold(served)['value']
    missed = next(r for r, label, p in zip(raw, labels, probabilities) if label == 9 and p <= threshold)

    class OneMore(tf.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name='examples')])
        def serve(self, serialized):
            p = self.inner.signatures['serving_default'](examples=serialized)['probabilities']
            p = tf.where(tf.equal(serialized, missed)[:, None], tf.constant(0.99, p.dtype), p)
            return export.outputs(p, (), threshold)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name='examples')])
        def transform_features(self, serialized):
            return self.inner.signatures['transform_features'](examples=serialized)

    planted = OneMore(model)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'model')
        tf.saved_model.save(planted, path, signatures={'serving_default': planted.serve,
                                                       'transform_features': planted.transform_features})
        shutil.copytree(os.path.join(served, 'assets.extra'), os.path.join(path, 'assets.extra'))
        _, destination = atomic_pusher.push_atomically(path, serving)
    return {'path': destination, 'example': missed}


@pytest.fixture(scope='session')
def one_apart_run(point_rule_run, first_run, run_cli):
    """The first run's model (the Trainer is cached) gated against a production model that catches
    one test positive more."""
    serving = os.path.join(first_run.run_dir, 'serving')
    production = push_one_more_positive(first_run.records, serving)
    result = run_cli(*_run_args(os.path.dirname(first_run.run_dir)))
    return types.SimpleNamespace(result=result, production=production, records=_records(first_run.run_dir),
                                 lines=result.stdout.strip().splitlines())


@pytest.fixture(scope='session')
def regressed_run(one_apart_run, first_run, tree_digest, run_cli):
    serving = os.path.join(first_run.run_dir, 'serving')
    before = tree_digest(serving)
    result = run_cli(*_run_args(os.path.dirname(first_run.run_dir), f'trainer.stages={HEAD_ONLY}',
                                'evaluation.thresholds.recall=0.3', 'evaluation.thresholds.precision=0.3'))
    return types.SimpleNamespace(result=result, serving_before=before, serving_after=tree_digest(serving),
                                 records=_records(first_run.run_dir), lines=result.stdout.strip().splitlines())




def image_files_and_served(run_dir, pushed: str, directory, count: int):
    """The first `count` examples of the embedded digits: their image bytes written as PNG files
    under `directory` (what `predict` is given), and the pushed SavedModel's serving outputs on the
    serialized examples themselves (what a TF Serving client gets). Returns (files, outputs)."""
    import tensorflow as tf

    raw = [r.numpy() for r in tf.data.TFRecordDataset(os.path.join(run_dir, 'data', 'digits.tfrecord')).take(count)]
    files = []
    for i, record in enumerate(raw):
        files.append(str(directory / f'{i}.png'))
        with open(files[-1], 'wb') as f:
            f.write(tf.train.Example.FromString(record).features.feature['image'].bytes_list.value[0])
    served = tf.saved_model.load(pushed).signatures['serving_default'](examples=tf.constant(raw))
    return files, {key: value.numpy() for key, value in served.items()}


def served_and_keras_predictions(records, pushed: str, config):
    """The pushed SavedModel's outputs on the raw serialized test tf.Examples, and the trained Keras
    model's predictions (rebuilt from the imported backbone and the weights pushed beside it) on
    the same images decoded with Pillow (PNG: lossless, so the pixels are the ones Transform
    stored). Returns (served outputs as arrays, Keras predictions, pixels)."""
    import io

    import numpy as np
    import tensorflow as tf
    from PIL import Image

    from components.training import backbone, export, network

    examples_uri = records['ImportExampleGen'].outputs['examples'][0].uri
    files = tf.io.gfile.glob(os.path.join(examples_uri, 'Split-test', '*'))
    raw = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type='GZIP')]
    outputs = tf.saved_model.load(pushed).signatures['serving_default'](examples=tf.constant(raw))
    served = {name: value.numpy() for name, value in outputs.items()}

    imported = records['backbone_importer'].outputs['result'][0].uri
    shape = config.model.input
    model = network.build_model(backbone.load_backbone(backbone.backbone_file(imported)), shape, config.model.head,
                                len(config.classes) if config.task.type == 'multiclass' else 1)
    export.load_weights(model, os.path.join(pushed, export.WARM_START_WEIGHTS))
    images = [tf.train.Example.FromString(r).features.feature[config.data.image_feature].bytes_list.value[0]
              for r in raw]
    mode = 'L' if shape.channels == 1 else 'RGB'
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(image)).convert(mode)).reshape(shape.height, shape.width,
                                                                                        shape.channels)
                       for image in images]).astype(np.float32)
    return served, model.predict(pixels, verbose=0), pixels
