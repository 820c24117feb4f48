"""`make bench`: the Trainer's path against a bare Keras fit, in one process, and the bytes
Transform writes per example.

Data: photos, as users bring them: JPEG crops (quality 90) of scikit-learn's two sample
photographs, 10 classes, written as TFRecords of tf.Example and run through the pipeline's real
data steps (ExampleGen ... Transform on LocalDagRunner, Beam as a local run chooses it).

Model: MobileNetV2 (random weights) at 96x96x3 (the last of `--sizes`) with the pipeline's head,
10 classes, every layer but BatchNorm training (the costly fine-tuning stage), Adam at a
cosine-scheduled rate.

* pipeline: what run_fn does: Transform's output read with tfxio through TFX's DataAccessor, the
  images decoded in the input pipeline (components.training.training_data.batched_dataset), and stage_loop.train_stage with
  the stage's callbacks (learning rate at every step, one line per epoch, the NaN check, TensorBoard,
  BackupAndRestore).
* bare: `model.fit` on the same examples, decoded beforehand into NumPy arrays, with the same
  model, optimizer, batch size, number of optimizer steps and validation data, and no callbacks.

Both fit the same number of optimizer steps with a callback timing the steady state (step_timer:
from the second epoch on, between consecutive batch ends, so the trace and the validation runs,
equal in both, stay out of the figure), alternately, `--repeats` times; examples/s is the batch
size over the median step of all repeats, and `ratio <pipeline / bare>` is the ratio of the two.
Each line also shows the whole fit's seconds.
`head stage` is a stage that trains only the head (backbone frozen, no augmentation) on the same
data, run by stage_loop.train_stage without and with its feature cache (FeatureCache: the
backbone's features computed once per stage), alternately, `--repeats` times; it prints the median
seconds of each, caching included, and `uncached / cached`.
`input path` is the training dataset iterated with no model: what the input pipeline could feed a
faster accelerator. `bytes` compares the encoded images in the raw examples with what Transform
writes per example (gzipped TFRecords), at each of `--sizes` (224x224 and 96x96); the Trainer's
figures are on the last size's examples.

Usage: .venv/bin/python -m benchmarks.trainer [--photos 800] [--steps 20] [--epochs 3] [--repeats 4]
       [--sizes 224 96]
"""

import argparse
import json
import os
import statistics
import tempfile
import time

from components.shared import node_ids

BATCH_SIZE = 32
CLASSES = 10
STAGE = {'name': 'finetune', 'unfreeze': 'all', 'optimizer': {'name': 'adam', 'learning_rate': 1e-4},
         'schedule': {'name': 'cosine', 'warmup_steps': 5}}
HEAD_STAGE = {'name': 'head', 'unfreeze': 'none', 'optimizer': {'name': 'adam', 'learning_rate': 1e-3},
              'schedule': {'name': 'cosine', 'warmup_steps': 5}}


def photo_config(size: int, data: str):
    """The embedded default's config, reading 10-class photos at `size` x `size` x 3 from `data`.
    Crops of two photographs overlap, so some are near-duplicates across the splits: the data gate
    warns instead of stopping (the benchmark measures speed, not what a model learns)."""
    from components.config import load_config

    return load_config('configs/local.yaml', (
        'data.source=tfrecord', f'data.path={data}', 'data.splits={train: 8, eval: 1, test: 1}',
        'data.duplicates.across_splits=warn',
        'task={type: multiclass, classes: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}',
        f'model.input={{height: {size}, width: {size}, channels: 3}}',
        'evaluation.thresholds={accuracy: 0.1}', 'evaluation.max_drop={}'))


def transformed_examples(config, data: str, root: str):
    """Runs the data steps; returns (Transform's transformed_examples, transform_graph) as TFX artifacts."""
    from tfx.orchestration import metadata
    from tfx.types import standard_artifacts

    from benchmarks.data_steps import run_data_steps
    from components.reporting import run_summary

    run_data_steps(config, data, root)
    transform = run_summary.latest_run(metadata.sqlite_metadata_connection_config(
        os.path.join(root, 'metadata.sqlite')))[node_ids.TRANSFORM]
    examples = standard_artifacts.Examples()
    stored = transform.outputs['transformed_examples'][0]
    examples.uri, examples.split_names = stored.uri, stored.properties['split_names'].string_value
    graph = standard_artifacts.TransformGraph()
    graph.uri = transform.outputs['transform_graph'][0].uri
    return examples, graph


def bytes_per_example(examples, raw_tfrecord: str, image_feature: str = 'image') -> dict:
    """Encoded image bytes per raw example, and Transform's output bytes (all splits) per example."""
    import tensorflow as tf

    raw = [tf.train.Example.FromString(r.numpy()).features.feature[image_feature].bytes_list.value[0]
           for r in tf.data.TFRecordDataset(raw_tfrecord)]
    files = tf.io.gfile.glob(os.path.join(examples.uri, 'Split-*', '*'))
    count = sum(1 for _ in tf.data.TFRecordDataset(files, compression_type='GZIP'))
    transformed = sum(tf.io.gfile.stat(f).length for f in files)
    raw_mean = sum(len(image) for image in raw) / len(raw)
    return {'raw_image_bytes': round(raw_mean), 'transformed_bytes': round(transformed / count),
            'transformed_to_raw': round(transformed / count / raw_mean, 2)}


def step_timer():
    """A Keras callback timing the steady state: the time between consecutive training-batch ends
    within an epoch, from the second epoch on (the first pays the trace; an epoch's first interval
    would span the validation). It runs last, so each interval holds a whole step: fetching the
    batch, the update, and every other callback's work."""
    import keras

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.intervals: list[float] = []
            self._epoch, self._last = 0, None

        def on_epoch_begin(self, epoch, logs=None):
            self._epoch, self._last = epoch, None

        def on_train_batch_end(self, batch, logs=None):
            now = time.perf_counter()
            if self._epoch > 0 and self._last is not None:
                self.intervals.append(now - self._last)
            self._last = now


    return StepTimer()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--photos', type=int, default=800)
    parser.add_argument('--steps', type=int, default=20, help='optimizer steps per epoch')
    parser.add_argument('--epochs', type=int, default=3)
    parser.add_argument('--repeats', type=int, default=4)
    parser.add_argument('--sizes', type=int, nargs='+', default=[224, 96],
                        help='image sides whose bytes are compared; the last is trained on')
    args = parser.parse_args()

    from absl import logging as absl_logging

    from pipeline import progress

    progress.quiet_libraries()
    absl_logging.set_verbosity(absl_logging.ERROR)
    import keras
    import numpy as np
    import tensorflow as tf
    import tensorflow_transform as tft
    from tfx.components.trainer import fn_args_utils

    from benchmarks.beam_mode import write_photos
    from components.training import backbone as backbone_lib
    from components.training import features, schedules
    from components.training import network, stage_loop, training_data
    from components.training.feature_cache import FeatureCache
    from components.config import HeadSection, Stage, validate

    results: dict = {'bytes': {}}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            data = os.path.join(tmp, f'photos-{size}')
            write_photos(data, args.photos, size=size)
            config = photo_config(size, data)
            examples, graph = transformed_examples(config, data, os.path.join(tmp, f'root-{size}'))
            results['bytes'][f'{size}x{size}'] = bytes_per_example(examples, os.path.join(data, 'photos.tfrecord'))
            print(json.dumps({'bytes': {f'{size}x{size}': results['bytes'][f'{size}x{size}']}}), flush=True)

        # The Trainer's input, as run_fn gets it (examples and graph are the last size's run).
        shape = config.model.input
        fn_args = fn_args_utils.get_common_fn_args(
            {'examples': [examples], 'transform_graph': [graph]},
            {'train_args': '{"splits": ["train"]}', 'eval_args': '{"splits": ["eval"]}'})
        schema = tft.TFTransformOutput(fn_args.transform_graph_path).transformed_metadata.schema
        train_data = training_data.batched_dataset(fn_args, fn_args.train_files, schema, BATCH_SIZE, 0, True, shape)
        eval_data = training_data.batched_dataset(fn_args, fn_args.eval_files, schema, BATCH_SIZE, 0, False, shape)

        # The same examples in memory, decoded once.
        def arrays(files):
            once = training_data.batched_dataset(fn_args, files, schema, BATCH_SIZE, 0, False, shape)
            batches = list(once.as_numpy_iterator())
            return (np.concatenate([b[0][features.IMAGE_KEY] for b in batches]),
                    np.concatenate([np.reshape(b[1], [-1]) for b in batches]))

        x_train, y_train = arrays(fn_args.train_files)
        x_eval, y_eval = arrays(fn_args.eval_files)
        steps = min(args.steps, len(y_train) // BATCH_SIZE)
        x_train, y_train = x_train[:steps * BATCH_SIZE], y_train[:steps * BATCH_SIZE]

        started, seen = time.monotonic(), 0
        for batch in train_data.take(steps * args.epochs):
            seen += int(tf.shape(batch[1])[0])
        results['input_path_examples_per_s'] = round(seen / (time.monotonic() - started), 1)

        keras.utils.set_random_seed(0)
        backbone = backbone_lib.build_keras_application('MobileNetV2', None, {}, shape)
        model = network.build_model(backbone, shape, HeadSection(), num_classes=CLASSES)
        initial = model.get_weights()
        stage = validate({**STAGE, 'epochs': args.epochs}, Stage)

        def pipeline_run(timer) -> None:
            with tempfile.TemporaryDirectory() as work:
                stage_loop.train_stage(model, backbone, stage, train_data, eval_data, steps, 0.5, BATCH_SIZE,
                                    log_dir=os.path.join(work, 'logs'), backup_dir=os.path.join(work, 'backup'),
                                    extra_callbacks=[timer])

        def bare_run(timer) -> None:
            loss, metrics = network.loss_and_metrics(model, 0.5)
            rate = schedules.build_learning_rate(1e-4, stage.schedule, steps * args.epochs, steps)
            model.compile(optimizer=schedules.build_optimizer(stage.optimizer, rate), loss=loss, metrics=metrics)
            model.fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=args.epochs,
                      validation_data=(x_eval, y_eval), callbacks=[timer], verbose=0)

        intervals: dict[str, list[float]] = {'pipeline': [], 'bare': []}
        for repeat in range(args.repeats):
            for name, run in (('pipeline', pipeline_run), ('bare', bare_run)):
                model.set_weights(initial)
                timer = step_timer()
                started = time.monotonic()
                run(timer)
                intervals[name] += timer.intervals
                print(json.dumps({'repeat': repeat + 1, 'path': name, 'fit_s': round(time.monotonic() - started, 2),
                                  'examples_per_s': round(BATCH_SIZE / statistics.median(timer.intervals), 1)}),
                      flush=True)

        # A head stage, uncached and cached, on the same data.
        head_stage = validate({**HEAD_STAGE, 'epochs': args.epochs}, Stage)
        train_once = training_data.batched_dataset(fn_args, fn_args.train_files, schema, BATCH_SIZE, 0, False, shape)
        cache = FeatureCache([train_once, eval_data], training_data.count_records(fn_args.train_files)
                                     + training_data.count_records(fn_args.eval_files))
        head_s: dict[str, list[float]] = {'uncached': [], 'cached': []}
        for repeat in range(args.repeats):
            for name, feature_cache in (('uncached', None), ('cached', cache)):
                model.set_weights(initial)
                with tempfile.TemporaryDirectory() as work:
                    entry = stage_loop.train_stage(model, backbone, head_stage, train_data, eval_data, steps, 0.5,
                                                BATCH_SIZE, log_dir=os.path.join(work, 'logs'),
                                                backup_dir=os.path.join(work, 'backup'), feature_cache=feature_cache)
                head_s[name].append(entry['wall_time_s'])
                print(json.dumps({'repeat': repeat + 1, 'head_stage': name, 'stage_s': round(entry['wall_time_s'], 2),
                                  'feature_cache': entry['feature_cache']}), flush=True)

    # The median step of all repeats: a pause of the machine's (another process, a collection)
    # that lands on either path does not decide the ratio; a cost every step pays still shows.
    rate = {name: BATCH_SIZE / statistics.median(values) for name, values in intervals.items()}
    results.update({
        'model': f'MobileNetV2 {args.sizes[-1]}x{args.sizes[-1]}x3, 10 classes', 'batch_size': BATCH_SIZE,
        'optimizer_steps': steps * args.epochs,
        'pipeline_examples_per_s': round(rate['pipeline'], 1), 'bare_examples_per_s': round(rate['bare'], 1),
        'head_stage_s': {name: round(statistics.median(values), 2) for name, values in head_s.items()},
    })
    print(json.dumps(results, indent=2))
    print(f"input path {results['input_path_examples_per_s']} examples/s")
    largest = f'{max(args.sizes)}x{max(args.sizes)}'
    print(f"transformed/raw bytes at {largest}: {results['bytes'][largest]['transformed_to_raw']}")
    print(f"ratio {rate['pipeline'] / rate['bare']:.3f}")
    head = results['head_stage_s']
    print(f"head stage uncached {head['uncached']} s, cached {head['cached']} s, "
          f"ratio uncached/cached {head['uncached'] / head['cached']:.2f}")


if __name__ == '__main__':
    main()
