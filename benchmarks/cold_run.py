"""Benchmark: where the seconds of a cold `python -m pipeline run` go, and what an immediate re-run
costs.

Runs the CLI on a config (default: the embedded default) in a fresh runs directory, in a child
process that records process start (the interpreter up to our first line), the imports the run
path needs (`pipeline.local_runner` and everything it pulls in), and the backbone build. From the
same run it then reads each component's execution time from ML Metadata, the training time (the
sum of the stages' `wall_time_s` in training_log.json) and the pipeline time the CLI prints
("finished in"), and prints them with the cold wall time and the ratio pipeline / training.

Then it runs `python -m pipeline run` again with the same config and data, in the same runs
directory, as the user would (its wall time, process start and imports included), and prints its
seconds, their ratio to the cold run's, and the steps ML Metadata's cache did not answer.

Usage: .venv/bin/python -m benchmarks.cold_run [--config configs/local.yaml] [--set key=value ...]
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

_STARTED = time.time()


def child(t0: float, config: str, overrides: list[str], report: str) -> int:
    """The measured run: the CLI's `run` command in this process, with its phases timed."""
    process_start = _STARTED - t0
    from pipeline import progress

    progress.quiet_libraries()
    started = time.monotonic()
    from pipeline import local_runner  # noqa: F401 - the run path's imports, timed
    imports = time.monotonic() - started

    from components.training import backbone
    from pipeline import cli

    build = {}
    prepare = backbone.prepare_backbone

    def timed_prepare(*args, **kwargs):
        begun = time.monotonic()
        try:
            return prepare(*args, **kwargs)
        finally:
            build['seconds'] = time.monotonic() - begun

    backbone.prepare_backbone = timed_prepare
    argv = ['run', '--config', config] + [a for o in overrides for a in ('--set', o)]
    code = cli.main(argv)
    with open(report, 'w') as f:
        json.dump({'process_start_s': process_start, 'imports_s': imports, 'backbone_build_s': build.get('seconds'),
                   'exit_code': code}, f)
    return code


def component_seconds(run_dir: str) -> dict[str, float]:
    """Node id -> seconds of its execution in the newest run (ML Metadata's create and last update times)."""
    import ml_metadata as mlmd
    from tfx.orchestration import metadata

    from components.reporting import mlmd_records

    store = mlmd.MetadataStore(metadata.sqlite_metadata_connection_config(os.path.join(run_dir, 'metadata.sqlite')))
    node_type = store.get_context_type('node')
    run = mlmd_records.latest_run_context(store)
    seconds = {}
    for execution in store.get_executions_by_context(run.id):
        for context in store.get_contexts_by_execution(execution.id):
            if context.type_id == node_type.id:
                seconds[context.name.split('.', 1)[1]] = (
                    execution.last_update_time_since_epoch - execution.create_time_since_epoch) / 1000
    return seconds


def node_states(run_dir: str) -> dict[str, str]:
    """Node id -> ML Metadata state (COMPLETE, CACHED, ...) in the newest run."""
    from tfx.orchestration import metadata

    from components.reporting import run_summary

    connection = metadata.sqlite_metadata_connection_config(os.path.join(run_dir, 'metadata.sqlite'))
    return {node: record.state for node, record in run_summary.latest_run(connection).items()}


def training_seconds(stdout: str) -> float:
    """The sum of the stages' wall_time_s in the training log the run's summary names."""
    path = re.search(r'^training log: (.+)$', stdout, re.M).group(1)
    with open(path) as f:
        return sum(stage['wall_time_s'] for stage in json.load(f)['stages'])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--config', default='configs/local.yaml')
    parser.add_argument('--set', dest='overrides', action='append', default=[])
    parser.add_argument('--child', nargs=2, metavar=('T0', 'REPORT'), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.exit(child(float(args.child[0]), args.config, args.overrides, args.child[1]))

    from components.config import load_config

    with tempfile.TemporaryDirectory() as runs_dir:
        overrides = args.overrides + [f'pipeline.runs_dir={runs_dir}']
        set_args = [a for o in overrides for a in ('--set', o)]
        report = os.path.join(runs_dir, 'phases.json')
        t0 = time.time()
        result = subprocess.run([sys.executable, '-m', 'benchmarks.cold_run', '--config', args.config,
                                 *set_args, '--child', repr(t0), report],
                                capture_output=True, text=True)
        wall = time.time() - t0
        if result.returncode != 0:
            sys.exit(f'the run exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}')
        with open(report) as f:
            phases = json.load(f)
        pipeline_s = float(re.search(r'finished in (\d+) s', result.stdout).group(1))
        training = training_seconds(result.stdout)
        run_dir = load_config(args.config, tuple(overrides)).run_dir
        components = component_seconds(run_dir)

        started = time.monotonic()
        again = subprocess.run([sys.executable, '-m', 'pipeline', 'run', '--config', args.config, *set_args],
                               capture_output=True, text=True)
        rerun = time.monotonic() - started
        executed = sorted(node for node, state in node_states(run_dir).items() if state != 'CACHED')
    print(json.dumps({
        'wall_s': round(wall, 1),
        'process_start_s': round(phases['process_start_s'], 1),
        'imports_s': round(phases['imports_s'], 1),
        'backbone_build_s': round(phases['backbone_build_s'], 1),
        'components_s': {name: round(s, 1) for name, s in sorted(components.items(), key=lambda kv: -kv[1])},
        'pipeline_s': pipeline_s,
        'training_s': round(training, 1),
        'rerun_s': round(rerun, 1),
        'rerun_exit': again.returncode,
        'rerun_to_cold': round(rerun / wall, 3),
        'steps_executed_on_rerun': executed,
    }, indent=2))
    print(f'pipeline {pipeline_s:.0f} s / training {training:.1f} s = {pipeline_s / training:.2f}')
    print(f're-run {rerun:.1f} s / cold {wall:.1f} s = {rerun / wall:.3f}')


if __name__ == '__main__':
    main()
