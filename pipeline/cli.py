"""`python -m pipeline run --config PATH [--set key=value ...]`: run the pipeline here.
`python -m pipeline compile --config PATH --output PATH`: compile it for Kubeflow Pipelines.

Exit codes: 0 blessed and pushed; 1 anything else failed; 2 invalid config or usage;
3 not blessed (nothing pushed); 4 data failed validation (nothing trained or pushed).
"""

import argparse
import sys
import time
from typing import Optional

from pipeline.config import ConfigError, load_config

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='python -m pipeline', description=__doc__.split('\n')[0])
    commands = parser.add_subparsers(dest='command', required=True)
    run = commands.add_parser('run', help='run the pipeline locally')
    run.add_argument('--config', required=True, help='YAML config file')
    run.add_argument('--set', dest='overrides', action='append', default=[], metavar='KEY=VALUE',
                     help='override a config value, e.g. --set trainer.batch_size=64 (repeatable)')
    run.add_argument('--verbose', action='store_true', help="show every library's logging")
    compile_ = commands.add_parser('compile', help='compile for Kubeflow Pipelines (needs a kubeflow section)')
    compile_.add_argument('--config', required=True, help='YAML config file')
    compile_.add_argument('--set', dest='overrides', action='append', default=[], metavar='KEY=VALUE',
                          help='override a config value (repeatable)')
    compile_.add_argument('--output', default='build/kubeflow/pipeline.yaml', help='where to write the spec')
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config, tuple(args.overrides))
    except ConfigError as error:
        print(f'invalid config: {error}', file=sys.stderr)
        return EXIT_USAGE

    if args.command == 'compile':
        if config.kubeflow is None:
            print(f'invalid config: {args.config} has no `kubeflow` section (see configs/kubeflow.yaml)',
                  file=sys.stderr)
            return EXIT_USAGE
        from pipeline import progress

        progress.quiet_libraries()
        from pipeline import kubeflow_runner

        spec = kubeflow_runner.compile_pipeline(config, args.output)
        tasks = spec['root']['dag']['tasks']
        print(f'wrote {args.output}: {len(tasks)} tasks, trainer image '
              f'{config.kubeflow.images.trainer or config.kubeflow.images.default}')
        return 0

    from pipeline import progress

    if not args.verbose:
        progress.quiet_libraries()
    from pipeline import local_runner  # TensorFlow and TFX load here, after the config is known good.

    if not args.verbose:
        progress.show_component_progress()

    started = time.monotonic()
    result = local_runner.run(config)
    print(f'\n=== {config.pipeline.name}: finished in {time.monotonic() - started:.0f} s ===')
    print('\n'.join(result.lines))
    return result.exit_code
