"""Benchmark: the data steps' cost per example as the data grow (1x, 4x, 16x the embedded digits).

Runs the pipeline's data steps (ExampleGen, StatisticsGen, SchemaGen, ExampleValidator, the data
gate, Transform) on LocalDagRunner with the Beam arguments a local run chooses for that size
(pipeline/beam_mode.py), once per size in a fresh directory, and prints each step's seconds, the total
per example, and that cost as a ratio of the 1x run's (in the same process).

Usage: .venv/bin/python -m benchmarks.data_steps [--sizes 1 4 16] [--config configs/local.yaml]
"""

import argparse
import json
import os
import tempfile
import time

from components.shared import node_ids

DATA_STEPS = (node_ids.EXAMPLE_GEN, node_ids.STATISTICS_GEN, node_ids.SCHEMA_GEN, node_ids.EXAMPLE_VALIDATOR, node_ids.DATA_GATE,
              node_ids.TRANSFORM)


def write_replicated_digits(path: str, times: int, config) -> int:
    """The digits of `config` written `times` over (each copy a distinct example: its own id)."""
    import tensorflow as tf

    from components.training import digits

    images, labels = digits.load_digits_images(config.data.digits_classes)
    os.makedirs(path, exist_ok=True)
    count = 0
    with tf.io.TFRecordWriter(os.path.join(path, 'digits.tfrecord')) as writer:
        for copy in range(times):
            for image, label in zip(images, labels):
                writer.write(tf.train.Example(features=tf.train.Features(feature={
                    config.data.image_feature: tf.train.Feature(
                        bytes_list=tf.train.BytesList(value=[digits.encode_png(image)])),
                    config.data.label_feature: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
                    'copy': tf.train.Feature(int64_list=tf.train.Int64List(value=[copy])),
                })).SerializeToString())
                count += 1
    return count


def run_data_steps(config, data: str, root: str, beam_args=None) -> dict[str, float]:
    """Seconds per data step, from ML Metadata's execution times. `beam_args`: as a local run
    chooses them when None."""
    from ml_metadata import metadata_store
    from tfx import v1 as tfx

    from pipeline import beam_mode
    from pipeline.pipeline import data_steps

    connection = tfx.orchestration.metadata.sqlite_metadata_connection_config(os.path.join(root, 'metadata.sqlite'))
    dag = tfx.dsl.Pipeline(pipeline_name=config.pipeline.name, pipeline_root=os.path.join(root, 'pipeline'),
                           components=data_steps(config, data).nodes, enable_cache=False,
                           metadata_connection_config=connection,
                           beam_pipeline_args=list(beam_mode.local_beam_args(config, data) if beam_args is None
                                                   else beam_args))
    tfx.orchestration.LocalDagRunner().run(dag)
    store = metadata_store.MetadataStore(connection)
    seconds = {}
    for execution in store.get_executions():
        [node] = [c.name.split('.', 1)[1] for c in store.get_contexts_by_execution(execution.id)
                  if c.type_id == store.get_context_type('node').id]
        seconds[node] = (execution.last_update_time_since_epoch - execution.create_time_since_epoch) / 1000
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--config', default='configs/local.yaml')
    parser.add_argument('--sizes', type=int, nargs='+', default=[1, 4, 16])
    args = parser.parse_args()

    from pipeline import progress
    from components.config import load_config

    progress.quiet_libraries()
    config = load_config(args.config)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            root = os.path.join(tmp, f'x{size}')
            examples = write_replicated_digits(os.path.join(root, 'data'), size, config)
            started = time.monotonic()
            seconds = run_data_steps(config, os.path.join(root, 'data'), root)
            wall = time.monotonic() - started
            total = sum(seconds[s] for s in DATA_STEPS)
            rows.append({'size': size, 'examples': examples, 'wall_s': round(wall, 1), 'steps_s': round(total, 1),
                         'ms_per_example': round(1000 * total / examples, 3),
                         'per_step_s': {s: round(seconds[s], 1) for s in DATA_STEPS}})
    base = rows[0]['ms_per_example']
    for row in rows:
        row['ratio_to_first'] = round(row['ms_per_example'] / base, 3)
        print(json.dumps(row))


if __name__ == '__main__':
    main()
