"""Benchmark: where in-process Beam (in_memory) stops beating one worker process per core
(multi_processing) on the data steps, the measurement behind pipeline/beam_mode.py's threshold.

For each input size (the embedded digits written N times over, or `--shape photos`: 96x96 RGB
JPEG crops of scikit-learn's two sample photographs), runs the data steps (ExampleGen,
StatisticsGen, SchemaGen, ExampleValidator, the data gate, Transform) in both modes in this
process, prints their seconds, fits seconds = fixed + per_byte * input bytes per mode, and prints
the input size where the two lines cross.

Usage: .venv/bin/python -m benchmarks.beam_mode [--sizes 1 8 32] [--shape digits|photos]
"""

import argparse
import json
import os
import tempfile
import time

from benchmarks.data_steps import DATA_STEPS, run_data_steps, write_replicated_digits

MODES = {'in_memory': (), 'multi_processing': ('--direct_running_mode=multi_processing', '--direct_num_workers=0')}


def write_photos(path: str, count: int, size: int = 96, seed: int = 0) -> int:
    """`count` JPEG crops (random position and scale) of scikit-learn's sample photographs, as
    TFRecords of tf.Example (image, label 0-9)."""
    import io

    import numpy as np
    import tensorflow as tf
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    os.makedirs(path, exist_ok=True)
    with tf.io.TFRecordWriter(os.path.join(path, 'photos.tfrecord')) as writer:
        for i in range(count):
            photo = photos[i % len(photos)]
            side = int(rng.integers(size, min(photo.shape[:2])))
            top, left = (int(rng.integers(0, photo.shape[d] - side + 1)) for d in (0, 1))
            crop = Image.fromarray(photo[top:top + side, left:left + side]).resize((size, size), Image.BILINEAR)
            encoded = io.BytesIO()
            crop.save(encoded, format='JPEG', quality=90)
            writer.write(tf.train.Example(features=tf.train.Features(feature={
                'image': tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded.getvalue()])),
                'label': tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 10])),
            })).SerializeToString())
    return count


def _fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of y over x."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else 0.0
    return mean_y - slope * mean_x, slope


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--config', default='configs/local.yaml')
    parser.add_argument('--sizes', type=int, nargs='+', default=[1, 8, 32],
                        help='digits: copies of the digits; photos: hundreds of photos')
    parser.add_argument('--shape', choices=['digits', 'photos'], default='digits')
    args = parser.parse_args()

    from pipeline import beam_mode, progress
    from components.config import load_config

    progress.quiet_libraries()
    overrides = ()
    if args.shape == 'photos':
        overrides = ('data.source=tfrecord', 'data.path=.', 'task.positive_class=9', 'data.labels=[0,1,2,3,4,5,6,7,8,9]',
                     'model.input={height: 96, width: 96, channels: 3}')
    config = load_config(args.config, overrides)
    points: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            data = os.path.join(tmp, f'data-x{size}')
            if args.shape == 'photos':
                examples = write_photos(data, 100 * size)
            else:
                examples = write_replicated_digits(data, size, config)
            size_bytes = sum(os.path.getsize(os.path.join(data, f)) for f in os.listdir(data))
            for mode, beam_args in MODES.items():
                started = time.monotonic()
                seconds = run_data_steps(config, data, os.path.join(tmp, f'x{size}-{mode}'), beam_args)
                total = sum(seconds[s] for s in DATA_STEPS)
                points[mode].append((size_bytes, total))
                print(json.dumps({'shape': args.shape, 'examples': examples, 'input_mb': round(size_bytes / 2 ** 20, 2),
                                  'mode': mode, 'data_steps_s': round(total, 1),
                                  'wall_s': round(time.monotonic() - started, 1),
                                  'per_step_s': {s: round(seconds[s], 1) for s in DATA_STEPS}}), flush=True)
    lines = {mode: _fit(p) for mode, p in points.items()}
    (fixed_in, per_byte_in), (fixed_mp, per_byte_mp) = lines['in_memory'], lines['multi_processing']
    crossover = (fixed_mp - fixed_in) / (per_byte_in - per_byte_mp) if per_byte_in > per_byte_mp else float('inf')
    print(json.dumps({
        'shape': args.shape,
        'fit': {mode: {'fixed_s': round(a, 1), 'ms_per_mb': round(1000 * b * 2 ** 20, 1)} for mode, (a, b) in lines.items()},
        'crossover_mb': round(crossover / 2 ** 20, 1) if crossover != float('inf') else None,
        'threshold_mb': beam_mode.IN_MEMORY_BELOW_BYTES / 2 ** 20,
    }))


if __name__ == '__main__':
    main()
