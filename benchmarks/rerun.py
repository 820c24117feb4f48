"""Benchmark: a cold `python -m pipeline run` of the embedded default against an immediate re-run
with the same config and data (which ML Metadata's cache should answer), wall time of each as
the user sees it (process start and imports included), and their ratio.

Usage: .venv/bin/python -m benchmarks.rerun [--config configs/local.yaml] [--set key=value ...]
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time


def timed_run(config: str, runs_dir: str, overrides: tuple[str, ...] = ()) -> tuple[float, int, str]:
    started = time.monotonic()
    result = subprocess.run([sys.executable, '-m', 'pipeline', 'run', '--config', config,
                             *[a for o in (*overrides, f'pipeline.runs_dir={runs_dir}') for a in ('--set', o)]],
                            capture_output=True, text=True)
    return time.monotonic() - started, result.returncode, result.stdout


def rerun_states(config: str, runs_dir: str, overrides: tuple[str, ...] = ()) -> dict[str, str]:
    """Node -> ML Metadata state (COMPLETE, CACHED, ...) of the newest run."""
    import os

    from tfx import v1 as tfx

    from components.reporting import run_summary
    from components.config import load_config

    run_dir = load_config(config, (*overrides, f'pipeline.runs_dir={runs_dir}')).run_dir
    connection = tfx.orchestration.metadata.sqlite_metadata_connection_config(os.path.join(run_dir, 'metadata.sqlite'))
    return {node: record.state for node, record in run_summary.latest_run(connection).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--config', default='configs/local.yaml')
    parser.add_argument('--set', dest='overrides', action='append', default=[])
    args = parser.parse_args()
    overrides = tuple(args.overrides)
    with tempfile.TemporaryDirectory() as runs_dir:
        cold, cold_rc, _ = timed_run(args.config, runs_dir, overrides)
        again, again_rc, _ = timed_run(args.config, runs_dir, overrides)
        states = rerun_states(args.config, runs_dir, overrides)
    executed = sorted(node for node, state in states.items() if state != 'CACHED')
    print(json.dumps({'cold_s': round(cold, 1), 'cold_exit': cold_rc, 'rerun_s': round(again, 1),
                      'rerun_exit': again_rc, 'rerun_to_cold': round(again / cold, 3),
                      'steps_executed_on_rerun': executed}))


if __name__ == '__main__':
    main()
