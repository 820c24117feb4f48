"""How the data steps and the Evaluator run Beam on this machine: in this process for small inputs,
in worker processes for large ones.

DirectRunner's multi_processing mode starts a worker process per core for every Beam step, and each
worker imports TensorFlow, whatever the data (README "Speed" gives the seconds). In-process
(in_memory) pays none of it but uses one core. `benchmarks/beam_mode.py` measures both modes on
the data steps at several input sizes and prints where the lines cross. `pipeline.beam_args` in
the config overrides the choice, and a cluster run uses `kubeflow.beam_args`.
"""

import os

from components.config import Config, DataSection

# Inputs smaller than this run in-process. On 2 cores and digits the two modes' lines cross far
# below it (README "Speed" gives the fit, `benchmarks.beam_mode`): most of the per-MB cost is the
# data gate's per-example work, so the crossing in bytes depends on the bytes per example. More
# cores move it down (the per-MB cost of worker processes falls with their number).
IN_MEMORY_BELOW_BYTES = 200 * 1024 * 1024

# DirectRunner's default mode is in_memory; passing no flag at all matters: with any Beam argument
# set, TFX builds an sdist of itself for every Beam step for remote workers to
# install, which in-process execution never uses.
IN_MEMORY: tuple[str, ...] = ()
# One worker process per core.
MULTI_PROCESSING = ('--direct_running_mode=multi_processing', '--direct_num_workers=0')


def _file_size(path: str) -> int:
    from tfx.dsl.io import fileio

    return 0 if fileio.isdir(path) else int(fileio.stat(path).length)


def input_bytes(data: DataSection, data_uri: str) -> int:
    """Bytes ExampleGen will read from `data_uri`: the files `data.pattern` matches (with `{SPAN}`,
    the newest `data.rolling_spans` spans; any `{VERSION}`), or for a CSV source everything under
    `data_uri`, since the images the rows name live beside the CSV files."""
    from tfx.dsl.io import fileio

    from components.nodes.example_gen import window_patterns

    base = data_uri.rstrip('/')
    if data.source == 'csv':
        return sum(_file_size(os.path.join(root, name)) for root, _, files in fileio.walk(base) for name in files)
    pattern = data.input_pattern.replace('{VERSION}', '*')
    if '{SPAN}' in pattern:
        patterns = [p for _, p in window_patterns(base, pattern, newest=2 ** 62, count=data.rolling_spans)]
    else:
        patterns = [pattern]
    return sum(_file_size(path) for p in patterns for path in fileio.glob(f'{base}/{p}'))


def local_beam_args(config: Config, data_uri: str) -> tuple[str, ...]:
    """`pipeline.beam_args` when the config sets them; otherwise in-process below
    IN_MEMORY_BELOW_BYTES of input, and one worker process per core above."""
    if config.pipeline.beam_args is not None:
        return config.pipeline.beam_args
    return IN_MEMORY if input_bytes(config.data, data_uri) < IN_MEMORY_BELOW_BYTES else MULTI_PROCESSING

