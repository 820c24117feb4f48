"""`python -m pipeline run --config PATH [--set key=value ...] [--wait]`: run the pipeline here.
`python -m pipeline compile --config PATH --output PATH`: compile it for Kubeflow Pipelines.
`python -m pipeline schedule --config PATH --endpoint URL [--dry-run]`: compile, upload, and create
or replace the recurring run (kubeflow.schedule) through the kfp client.
`python -m pipeline compare --config PATH [--strategies scratch,full,head,staged] [--seeds 3]`: the
same data through each fine-tuning strategy; a table and a plot of the gate metrics (medians).
`python -m pipeline tensorboard --config PATH [--port 6006]`: TensorBoard on the latest run's training logs.
`python -m pipeline backbone --config PATH [--output URI]`: build model.backbone and write it as
one .keras file (default: kubeflow.backbone_uri, which may be on object storage).
`python -m pipeline history --config PATH [--json]`: the versions pushed, newest (served) first.
`python -m pipeline rollback --config PATH --to VERSION [--wait]`: serve VERSION's model again (pushed anew).
`python -m pipeline predict --config PATH [--version N] IMAGE...`: the served model on image files.

A run and a rollback hold the pipeline's lock (its run directory) from start to end: one of them
pushes at a time. Another one started meanwhile exits with code 5, or waits with --wait.

Exit codes: 0 blessed and pushed (or already the model in production); 1 anything else failed;
2 invalid config or usage, or refused before anything was done (a broken model in production, an ML
Metadata store that cannot be used, a version to roll back to that is not complete);
3 not blessed (nothing pushed); 4 data failed validation (nothing trained or pushed);
5 another run or rollback of this pipeline holds its lock (nothing done; see --wait);
6 blessed, not pushed: production changed after the gate read it (run again).
"""

import argparse
import shlex
import sys
import time
from typing import Callable, Optional

from components.config import ConfigError, load_config
from components.shared.exit_codes import EXIT_BAD_DATA, EXIT_FAILED, EXIT_USAGE

WAIT_HELP = ('when another run or rollback of this pipeline is under way, wait for it to end '
             '(default: exit at once with code 5)')


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='python -m pipeline', description=__doc__.split('\n')[0])
    commands = parser.add_subparsers(dest='command', required=True)
    # Every command reads a config, takes --set overrides; the Kubeflow ones also write the spec.
    config_args = argparse.ArgumentParser(add_help=False)
    config_args.add_argument('--config', required=True, help='YAML config file')
    config_args.add_argument('--set', dest='overrides', action='append', default=[], metavar='KEY=VALUE',
                             help='override a config value, e.g. --set trainer.batch_size=64 (repeatable)')
    spec_args = argparse.ArgumentParser(add_help=False, parents=[config_args])
    spec_args.add_argument('--output', default='build/kubeflow/pipeline.yaml', help='where to write the spec')
    run = commands.add_parser('run', parents=[config_args], help='run the pipeline locally')
    run.add_argument('--verbose', action='store_true', help="show every library's logging")
    run.add_argument('--wait', action='store_true', help=WAIT_HELP)
    commands.add_parser('compile', parents=[spec_args], help='compile for Kubeflow Pipelines (needs a kubeflow section)')
    schedule = commands.add_parser('schedule', parents=[spec_args],
                                   help='upload to Kubeflow Pipelines and schedule recurring runs')
    schedule.add_argument('--endpoint', required=True, help='Kubeflow Pipelines API, e.g. http://localhost:8888')
    schedule.add_argument('--experiment', default='scheduled-retraining', help='experiment of the recurring run')
    schedule.add_argument('--dry-run', action='store_true', help='print what would be sent, send nothing')
    backbone = commands.add_parser('backbone', parents=[config_args],
                                   help='build model.backbone and write it where the pipeline imports it from')
    backbone.add_argument('--output', help='a .keras file or a directory (default: kubeflow.backbone_uri)')
    compare = commands.add_parser('compare', parents=[config_args],
                                  help='run the same data through several fine-tuning strategies and compare the gate metrics')
    compare.add_argument('--strategies', default='scratch,full,head,staged',
                         help='comma-separated: scratch, full, head, staged, or paths to YAML configs '
                              '(their trainer.stages) (default: %(default)s)')
    compare.add_argument('--seeds', type=int, default=3, help='seeds per strategy; the table shows medians')
    compare.add_argument('--verbose', action='store_true', help="show every library's logging")
    tensorboard = commands.add_parser('tensorboard', parents=[config_args],
                                      help="serve TensorBoard on the latest local run's training logs")
    tensorboard.add_argument('--port', type=int, default=6006)
    history = commands.add_parser('history', parents=[config_args], help='the model versions pushed, newest first')
    history.add_argument('--json', action='store_true', help='one JSON list, for scripts')
    rollback = commands.add_parser('rollback', parents=[config_args],
                                   help='put an earlier version back in production (as a new, newest version)')
    rollback.add_argument('--to', required=True, metavar='VERSION', help='the version to serve again')
    rollback.add_argument('--wait', action='store_true', help=WAIT_HELP)
    predict = commands.add_parser('predict', parents=[config_args],
                                  help="image files through the served model's serving signature")
    predict.add_argument('--version', help='a version other than the one in production')
    predict.add_argument('images', nargs='+', metavar='IMAGE', help='PNG or JPEG files')
    return parser


def _rollback_command(args) -> str:
    """`python -m pipeline rollback` with this command's --config and --set, for a line that says
    which rollback to run (without --to)."""
    settings = [word for override in args.overrides for word in ('--set', override)]
    return shlex.join(['python', '-m', 'pipeline', 'rollback', '--config', args.config, *settings])


def _failed(config, args, line: str, code: int) -> int:
    """Prints `line` and where the traceback of the exception being handled went: a file
    runs/<name>/logs/<time>.<command>.traceback.txt, as a failed run writes its own."""
    import datetime
    import os
    import traceback

    from components.reporting.mlmd_records import display_path
    from components.shared import storage

    log = os.path.join(config.run_dir, 'logs', f'{datetime.datetime.now().isoformat()}.{args.command}.traceback.txt')
    os.umask(0o077)  # for this user only, as all under runs/ (see _private_run_dir)
    try:
        os.makedirs(os.path.dirname(log), exist_ok=True)
        storage.write_text_atomically(log, traceback.format_exc())
        where = f'full traceback: {display_path(log)}'
    except OSError as error:
        where = f'no traceback file ({error.strerror}: {log})'
    print(f'{line}; {where}', file=sys.stderr)
    return code


def _history(config, args) -> int:
    import json

    from pipeline import registry

    try:
        rows = registry.history(config)
        unfinished = registry.unfinished_rollbacks(config)
    except registry.StoreError as error:
        return _failed(config, args, f'cannot read the history: {error}', EXIT_USAGE)
    notes = registry.notes(config, rows, unfinished, _rollback_command(args))
    if args.json:
        print(json.dumps(rows, indent=2))
        for line in notes:  # stdout stays one JSON document
            print(line, file=sys.stderr)
    elif not rows:
        print(f'no version pushed under {config.run_dir} yet')
    else:
        print('\n'.join(registry.table(rows) + notes))
    return 0


def _one_at_a_time(config, args, refusal: str, work: Callable[[], int]) -> int:
    """`work()` under the exclusive lock of the pipeline's run directory (pipeline.run_lock), so
    that one run or rollback of a pipeline pushes at a time. Held by another process: waits with
    --wait, else one line naming the holder and exit code 5."""
    from pipeline import run_lock

    def say_waiting(holder: dict) -> None:
        print(f'waiting: {config.run_dir} is in use by {run_lock.describe(holder)}', file=sys.stderr, flush=True)

    try:
        with run_lock.hold(config.run_dir, args.command_line, wait=args.wait, on_wait=say_waiting):
            return work()
    except run_lock.Locked as error:
        print(f'{refusal}: {error}; give --wait to wait for it', file=sys.stderr)
        return run_lock.EXIT_LOCKED


def _rollback(config, args) -> int:
    return _one_at_a_time(config, args, 'cannot roll back', lambda: _rollback_locked(config, args))


def _rollback_locked(config, args) -> int:
    from pipeline import progress, registry

    progress.quiet_libraries()
    refusal = f'cannot roll back to {args.to}'
    try:
        done = registry.rollback(config, args.to)
    except registry.BrokenVersion as error:
        print(f'{refusal}: {error}', file=sys.stderr)
        return EXIT_USAGE
    except registry.RegistryError as error:
        print(f'cannot roll back: {error}', file=sys.stderr)
        return EXIT_USAGE
    except registry.StoreError as error:
        return _failed(config, args, f'{refusal}: {error}', EXIT_USAGE)
    except registry.PushFailed as error:
        return _failed(config, args, f'{refusal}: {error}', EXIT_FAILED)
    except registry.NotRecorded as error:
        return _failed(config, args, f'rolled back, not recorded: {error}', EXIT_FAILED)
    if not done.pushed:
        print(f'recorded: version {args.to} was in production again already, as version {done.version} '
              f'({registry.display_path(done.destination)}), pushed by a rollback whose record had failed; '
              f'nothing pushed now')
        return 0
    print(f'rolled back: version {args.to} is in production again, as version {done.version} '
          f'({registry.display_path(done.destination)})')
    return 0


def _predict(config, args) -> int:
    from pipeline import predict, registry

    problems = predict.unreadable(args.images, config.data.max_image_pixels)
    try:
        path = predict.model_path(config, args.version, _rollback_command(args))
    except registry.RegistryError as error:
        problems.append(str(error))
    if problems:
        for line in problems:
            print(f'cannot predict: {line}', file=sys.stderr)
        return EXIT_USAGE
    from pipeline import progress

    progress.quiet_libraries()
    try:
        lines = predict.predict(config, path, args.images)
    except predict.RefusedError as error:
        for line in error.args[0]:
            print(f'cannot predict: {line}', file=sys.stderr)
        return EXIT_USAGE
    except predict.UnloadableError as error:
        why = f'{registry.display_path(path)} does not load: {error}'
        broken = (registry.broken_production(config, _rollback_command(args), why=why) if args.version is None
                  else f'version {args.version} is broken ({why})')
        return _failed(config, args, f'cannot predict: {broken}', EXIT_USAGE)
    print(f'model: {registry.display_path(path)}')
    print('\n'.join(lines))
    return 0


def _compare(config, args) -> int:
    from pipeline import compare

    names = [name.strip() for name in args.strategies.split(',') if name.strip()]
    try:
        if args.seeds < 1:
            raise ConfigError(f'--seeds: expected at least 1, got {args.seeds}')
        if not names:
            raise ConfigError('--strategies: expected at least one strategy')
        for name in names:  # a bad name or config file stops here, before TensorFlow loads
            compare.strategy(config, name)
    except ConfigError as error:
        print(f'invalid config: {error}', file=sys.stderr)
        return EXIT_USAGE
    from pipeline import progress

    if not args.verbose:
        progress.quiet_libraries()
    from pipeline import local_runner  # noqa: F401 - TensorFlow and TFX load here

    if not args.verbose:
        progress.show_component_progress()
    started = time.monotonic()
    code, lines = compare.run(config, names, args.seeds)
    print(f'\n=== {config.pipeline.name}: {len(names)} strategies x {args.seeds} seed(s) '
          f'in {time.monotonic() - started:.0f} s ===')
    print('\n'.join(lines))
    return code


def _tensorboard(config, args) -> int:
    """Runs TensorBoard (until interrupted or terminated) on the Keras logs of the latest run's Trainer.

    In this process, not a child process: SIGTERM or Ctrl-C then ends TensorBoard with the command,
    and a SIGKILL cannot leave an orphan behind either. TensorBoard's own data server (a child it
    starts) exits when this process does, since TensorBoard starts it with --die-after-stdin.
    """
    import os

    from pipeline import progress

    progress.quiet_libraries()
    from components.reporting import run_summary

    metadata = os.path.join(config.run_dir, 'metadata.sqlite')
    logs = run_summary.training_logs_dir(metadata) if os.path.exists(metadata) else None
    if logs is None:
        print(f'no training logs: nothing has been trained under {config.run_dir} yet (make run-local)', file=sys.stderr)
        return 1
    from tensorboard import default, main_lib, program

    main_lib.global_init()
    server = program.TensorBoard(plugins=default.get_plugins())
    server.configure(argv=['', '--logdir', logs, '--port', str(args.port)])
    print(f'TensorBoard on {run_summary.display_path(logs)}: http://localhost:{args.port}/', flush=True)
    try:
        # TensorBoard's SIGTERM handler exits with 0 through sys.exit, running atexit hooks.
        return server.main()
    except KeyboardInterrupt:
        return 0


def _schedule(config, args) -> int:
    """Compiles, then hands upload and scheduling to the kfp client in its own virtualenv."""
    import datetime
    import json
    import os
    import subprocess

    from pipeline import kubeflow_runner

    spec = kubeflow_runner.compile_pipeline(config, args.output)
    # Every run of the schedule gets the config's values (after --set) for the run parameters.
    params = {name: p['defaultValue'] for name, p in spec['root']['inputDefinitions']['parameters'].items()}
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    python = os.environ.get('KFP_PYTHON', os.path.join(repo, '.venv-kfp', 'bin', 'python'))
    if not os.path.exists(python):
        print(f'error: the kfp tool virtualenv is missing ({python}); `make schedule` creates it', file=sys.stderr)
        return EXIT_USAGE
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%d-%H%M%S')
    request = {'package': os.path.abspath(args.output), 'endpoint': args.endpoint, 'pipeline': config.pipeline.name,
               'version': f'{config.pipeline.name}-{stamp}', 'experiment': args.experiment,
               'cron': config.kubeflow.schedule.cron, 'max_concurrency': config.kubeflow.schedule.max_concurrency,
               'params': params, 'dry_run': args.dry_run}
    result = subprocess.run([python, os.path.join(repo, 'tools', 'kfp', 'schedule.py'), json.dumps(request)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        print(f'scheduling failed:\n{result.stderr.strip()[-3000:]}', file=sys.stderr)
        return 1
    # The kfp client prints links of its own; the result is the last line.
    print(json.dumps(json.loads(result.stdout.strip().splitlines()[-1]), indent=2, sort_keys=True))
    return 0


def _backbone(config, args) -> int:
    """Builds the backbone here (downloading ImageNet weights if the config asks for them) and
    copies its .keras file to the target, under a temporary name first."""
    import os

    target = args.output or (config.kubeflow.backbone_uri if config.kubeflow else None)
    if not target:
        print('invalid config: give --output or set kubeflow.backbone_uri', file=sys.stderr)
        return EXIT_USAGE
    from components.training import backbone
    from tfx.dsl.io import fileio

    built = backbone.backbone_file(backbone.prepare_backbone(
        config.model.backbone, config.model.input, os.path.join(config.run_dir, 'backbones')))
    if not target.endswith('.keras'):
        target = os.path.join(target, backbone.BACKBONE_FILE)
    fileio.makedirs(os.path.dirname(target) or '.')
    partial = target + '.partial'
    fileio.copy(built, partial, overwrite=True)
    fileio.rename(partial, target, overwrite=True)
    print(f'wrote {target} (from {built})')
    return 0


# The commands that write under pipeline.runs_dir (runs, models, reports, the metadata store).
_WRITES_RUNS = ('run', 'compare', 'backbone', 'rollback')


def _private_run_dir(config) -> None:
    """What this process writes is readable by its user only (umask 077: the Examples hold the
    input images, the store and reports what was trained on), and so is the run directory, where
    an earlier run made it with the default mode."""
    import os

    os.umask(0o077)
    if os.path.isdir(config.run_dir):
        os.chmod(config.run_dir, 0o700)


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    # What a process refused by this one's lock is told it runs.
    args.command_line = shlex.join(['python', '-m', 'pipeline', *argv])
    try:
        config = load_config(args.config, tuple(args.overrides))
    except ConfigError as error:
        print(f'invalid config: {error}', file=sys.stderr)
        return EXIT_USAGE

    if args.command in _WRITES_RUNS:
        _private_run_dir(config)
    if args.command == 'tensorboard':
        return _tensorboard(config, args)
    if args.command == 'history':
        return _history(config, args)
    if args.command == 'rollback':
        return _rollback(config, args)
    if args.command == 'predict':
        return _predict(config, args)
    if args.command == 'compare':
        return _compare(config, args)
    if args.command == 'backbone':
        from pipeline import progress

        progress.quiet_libraries()
        return _backbone(config, args)
    if args.command in ('compile', 'schedule'):
        if config.kubeflow is None:
            print(f'invalid config: {args.config} has no `kubeflow` section (see configs/kubeflow.yaml)',
                  file=sys.stderr)
            return EXIT_USAGE
        from pipeline import progress

        progress.quiet_libraries()
        if args.command == 'schedule':
            if config.kubeflow.schedule is None:
                print(f'invalid config: {args.config} has no kubeflow.schedule (cron)', file=sys.stderr)
                return EXIT_USAGE
            return _schedule(config, args)
        from pipeline import kubeflow_runner

        spec = kubeflow_runner.compile_pipeline(config, args.output)
        tasks = spec['root']['dag']['tasks']
        print(f'wrote {args.output}: {len(tasks)} tasks, trainer image '
              f'{config.kubeflow.images.trainer or config.kubeflow.images.default}')
        return 0

    return _run(config, args)


def _run(config, args) -> int:
    """The preflight checks, then the local run under the pipeline's lock."""
    from pipeline import preflight

    problems = preflight.check(config)
    if problems:
        for line in problems:
            print(f'cannot start: {line}', file=sys.stderr)
        return EXIT_USAGE
    return _one_at_a_time(config, args, 'cannot start', lambda: _run_locked(config, args))


def _run_locked(config, args) -> int:
    from pipeline import preflight, registry

    try:
        registry.check_store(config)
    except registry.StoreError as error:
        return _failed(config, args, f'cannot start: {error}', EXIT_USAGE)

    bad_files = preflight.check_data(config)
    if bad_files:
        print('data failed validation; nothing was trained or pushed:\n' + '\n'.join('  ' + line for line in bad_files))
        return EXIT_BAD_DATA
    taken = preflight.claim_name(config, args.config)
    if taken:
        print(f'cannot start: {taken}', file=sys.stderr)
        return EXIT_USAGE

    from pipeline import progress

    if not args.verbose:
        progress.quiet_libraries()
    from components.shared import serving_layout

    # Under the lock, so that a rollback repairing production has ended; after the checks that
    # answer without TensorFlow, which reading production's variables imports.
    broken = registry.broken_production(config, _rollback_command(args), serving_layout.unservable)
    if broken:
        print(f'cannot start: {broken}', file=sys.stderr)
        return EXIT_USAGE
    from pipeline import local_runner  # TFX loads here, after the config is known good.

    if not args.verbose:
        progress.show_component_progress()

    started = time.monotonic()
    result = local_runner.run(config)
    print(f'\n=== {config.pipeline.name}: finished in {time.monotonic() - started:.0f} s ===')
    print('\n'.join(result.lines))
    return result.exit_code
