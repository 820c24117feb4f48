"""Runs a compiled Kubeflow pipeline spec (build/kubeflow/pipeline.yaml) on this machine, step by
step, the way the open-source Kubeflow Pipelines v2 backend would hand the steps their work.

For each task of the root DAG, as soon as the tasks it depends on are done (tasks independent of
each other run at the same time, as on the cluster):
  * an importer task becomes its artifact (URI, type and metadata from the importer spec);
  * a container task runs its container's command and args as compiled (TFX's entrypoint
    `kubeflow_v2_run_executor`), with `{{$}}` replaced by the ExecutorInput JSON the KFP launcher
    builds: `parameterValues` resolved from constants and pipeline parameters (defaults from the
    spec, overridden per run), input artifacts taken from the producers' executor output, and an
    output URI per artifact under the run's root;
  * the executor output file the step writes is read back, as the launcher records it.

Each container task is a process of its own. A command of the form `python -m MODULE ARGS` (every
TFX step's) runs in a child forked from a server that has imported MODULE's imports once
(multiprocessing's forkserver, preloaded): the child runs MODULE as `__main__` with ARGS, in the
task's directory, its output to the task's log, and its exit code is the task's. A step then costs
its work, not a fresh import of TensorFlow, TFX and TFMA; what differs from a pod's fresh
interpreter is only that those modules were imported before the step began. Other commands run
as subprocesses.

Like the open-source launcher it does not run `lifecycle.preCacheCheck` hooks, and there is no
cache: every task runs. What it does not do: pull images or start pods (the commands run with this
virtualenv's Python, `python` in the command is replaced by it), apply resource requests, talk to
ML Metadata or object storage. It proves the compiled steps, their arguments and the way their
artifacts connect work; not that the images, the cluster or the storage do.

Usage:
  python -m tools.kfp_launcher --config configs/local.yaml --work-dir DIR [--param NAME=VALUE ...]
    compiles the config for Kubeflow with every location under DIR (data and backbone prepared
    as `run` does) and runs it;
  python -m tools.kfp_launcher --spec PIPELINE.yaml --work-dir DIR [--param ...]
    runs a spec already compiled, whose locations must be on this machine.
"""

import argparse
import dataclasses
import json
import multiprocessing
import os
import runpy
import subprocess
import sys
import time
import uuid
from typing import Any, Optional

import yaml

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TYPES = {'STRING': str, 'NUMBER_INTEGER': int, 'NUMBER_DOUBLE': float, 'BOOLEAN': bool}
EXECUTOR_OUTPUT = 'executor_output.json'


@dataclasses.dataclass
class TaskRun:
    name: str
    kind: str  # importer | container
    seconds: float
    outputs: dict[str, dict]  # output key -> RuntimeArtifact (JSON form), as the launcher records it
    log: Optional[str] = None
    # Wall-clock times (time.time()) the task's process started and wrote its executor output.
    began: Optional[float] = None
    ended: Optional[float] = None


def topological_order(tasks: dict[str, dict]) -> list[str]:
    """Task names so that every task comes after the tasks it depends on (ties by name)."""
    order, done = [], set()
    pending = dict(tasks)
    while pending:
        ready = sorted(n for n, t in pending.items() if set(_upstream(t)) <= done)
        if not ready:
            raise ValueError(f'the DAG has a cycle among {sorted(pending)}')
        for name in ready:
            order.append(name)
            done.add(name)
            del pending[name]
    return order


def _upstream(task: dict) -> list[str]:
    producers = [a['taskOutputArtifact']['producerTask'] for a in task.get('inputs', {}).get('artifacts', {}).values()]
    return sorted(set(task.get('dependentTasks', [])) | set(producers))


def pipeline_parameters(spec: dict, overrides: dict[str, str]) -> dict[str, Any]:
    """The run's parameter values: the spec's defaults, overridden by `overrides` (text, as typed
    into the run form), converted to the parameter's type."""
    definitions = spec['root'].get('inputDefinitions', {}).get('parameters', {})
    unknown = sorted(set(overrides) - set(definitions))
    if unknown:
        raise ValueError(f'unknown run parameters {unknown}; the pipeline has {sorted(definitions)}')
    values = {}
    for name, definition in definitions.items():
        kind = _TYPES[definition['parameterType']]
        if name in overrides:
            try:
                values[name] = kind(overrides[name])
            except ValueError:
                raise ValueError(f'run parameter {name} = {overrides[name]!r}: expected {definition["parameterType"]}')
        elif 'defaultValue' in definition:
            values[name] = kind(definition['defaultValue'])
        else:
            raise ValueError(f'run parameter {name} has no default and was not given')
    return values


def _parameter_value(name: str, source: dict, parameters: dict[str, Any]) -> Any:
    if 'componentInputParameter' in source:
        return parameters[source['componentInputParameter']]
    if 'constant' in source.get('runtimeValue', {}):
        return source['runtimeValue']['constant']
    raise NotImplementedError(f'parameter {name}: source {source} is not supported here')


def _executor_input(task_name: str, task: dict, component: dict, parameters: dict[str, Any],
                    produced: dict[str, dict[str, dict]], task_root: str) -> dict:
    inputs = task.get('inputs', {})
    artifacts = {}
    for name, source in inputs.get('artifacts', {}).items():
        producer = source['taskOutputArtifact']
        artifact = dict(produced[producer['producerTask']][producer['outputArtifactKey']])
        artifact['type'] = component['inputDefinitions']['artifacts'][name]['artifactType']
        artifacts[name] = {'artifacts': [artifact]}
    outputs = {}
    for key, definition in component.get('outputDefinitions', {}).get('artifacts', {}).items():
        outputs[key] = {'artifacts': [{
            'name': f'{os.path.basename(os.path.dirname(task_root))}/{task_name}/{key}',
            'type': definition['artifactType'], 'uri': os.path.join(task_root, key), 'metadata': {}}]}
    return {
        'inputs': {'parameterValues': {name: _parameter_value(name, source, parameters)
                                       for name, source in inputs.get('parameters', {}).items()},
                   'artifacts': artifacts},
        'outputs': {'artifacts': outputs, 'outputFile': os.path.join(task_root, EXECUTOR_OUTPUT)},
    }


def _executable(container: dict, python: str) -> list[str]:
    """The container's command with `python` as this machine's interpreter."""
    return [python if part == 'python' else part for part in container['command']]


def _command(container: dict, executor_input: dict, python: str) -> list[str]:
    command = _executable(container, python)
    args = []
    for arg in container.get('args', []):
        if '{{$' in arg and arg != '{{$}}':
            raise NotImplementedError(f'placeholder {arg!r} is not supported here')
        args.append(json.dumps(executor_input) if arg == '{{$}}' else arg)
    return command + args


def _run_module(module: str, args: list[str], cwd: str, log_path: str, env: dict[str, str]) -> None:
    """In a forked task process: `python -m module args` in `cwd`, its output to `log_path`."""
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    sys.path.insert(0, _REPO)
    sys.argv = [module, *args]
    sys.modules.pop(module, None)  # run it afresh as __main__, as `-m` would
    runpy.run_module(module, run_name='__main__', alter_sys=True)


def _module_command(command: list[str], python: str) -> Optional[str]:
    """MODULE when `command` is `python -m MODULE ...` with this interpreter, else None."""
    if command[0] == python == sys.executable and len(command) > 2 and command[1] == '-m':
        return command[2]
    return None


class _TaskProcesses:
    """Starts each task's command: `python -m MODULE ...` forked from multiprocessing's forkserver,
    which imports `modules` once when it starts (at the first task; the server is one per process,
    so a later run in the same process reuses it as it is); anything else as a subprocess.
    `start` returns a function that waits for the task and returns its exit code."""

    def __init__(self, python: str, env: dict[str, str], modules: list[str]):
        self.python, self.env = python, env
        self.context = multiprocessing.get_context('forkserver')
        self.context.set_forkserver_preload(modules)

    def start(self, command: list[str], cwd: str, log_path: str):
        module = _module_command(command, self.python)
        if module is None:
            log = open(log_path, 'a')
            child = subprocess.Popen(command, cwd=cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT)

            def wait_subprocess() -> int:
                try:
                    return child.wait()
                finally:
                    log.close()
            return wait_subprocess
        process = self.context.Process(target=_run_module, args=(module, command[3:], cwd, log_path, self.env))
        process.start()

        def wait_process() -> int:
            process.join()
            return process.exitcode
        return wait_process


def run_spec(spec: dict, run_root: str, overrides: Optional[dict[str, str]] = None,
             python: str = sys.executable, progress=print) -> list[TaskRun]:
    """Runs every task of `spec` under `<run_root>/<run id>/<task>/`; raises RuntimeError naming
    the task (and the end of its log) when a step fails.

    Tasks run as KFP runs them: each as soon as the tasks it depends on are done, so tasks that do
    not depend on each other (the workers of a parallel search) run at the same time, each in its
    own process. A failed task stops the run once the tasks running beside it have ended."""
    parameters = pipeline_parameters(spec, overrides or {})
    run_dir = os.path.join(run_root, f'run-{uuid.uuid4().hex[:8]}')
    tasks = spec['root']['dag']['tasks']
    executors = spec['deploymentSpec']['executors']
    produced: dict[str, dict[str, dict]] = {}
    runs = []
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [_REPO, os.environ.get('PYTHONPATH')]))}
    modules = {_module_command(_executable(e['container'], python), python)
               for e in executors.values() if 'container' in e}
    processes = _TaskProcesses(python, env, sorted(m for m in modules if m))
    topological_order(tasks)  # refuses a cycle before anything runs
    done: set[str] = set()
    while len(done) < len(tasks):
        ready = sorted(n for n, t in tasks.items() if n not in done and set(_upstream(t)) <= done)
        running = {}
        for name in ready:
            task = tasks[name]
            component = spec['components'][task['componentRef']['name']]
            executor = executors[component['executorLabel']]
            started = time.monotonic()
            if 'importer' in executor:
                importer = executor['importer']
                uri = importer['artifactUri'].get('constant')
                if uri is None:
                    uri = parameters[importer['artifactUri']['runtimeParameter']]
                [key] = component['outputDefinitions']['artifacts']
                produced[name] = {key: {'name': f'{os.path.basename(run_dir)}/{name}/{key}', 'uri': uri,
                                        'metadata': importer.get('metadata', {})}}
                runs.append(TaskRun(name, 'importer', time.monotonic() - started, produced[name]))
                progress(f'{name}: imported {uri}')
                continue
            task_root = os.path.join(run_dir, name)
            os.makedirs(task_root, exist_ok=True)
            executor_input = _executor_input(name, task, component, parameters, produced, task_root)
            log_path = os.path.join(task_root, 'log.txt')
            wait = processes.start(_command(executor['container'], executor_input, python), task_root, log_path)
            running[name] = (wait, executor_input, log_path, started, time.time())
        finished = {name: (wait(), *rest) for name, (wait, *rest) in running.items()}
        for name, (returncode, executor_input, log_path, started, began) in finished.items():
            if returncode != 0:
                with open(log_path) as f:
                    tail = f.read()[-3000:]
                raise RuntimeError(f'task {name} failed (exit {returncode}); log {log_path}:\n{tail}')
            with open(executor_input['outputs']['outputFile']) as f:
                written = json.load(f).get('artifacts', {})
            produced[name] = {}
            for key, passed in executor_input['outputs']['artifacts'].items():
                artifact = (written.get(key, {}).get('artifacts') or passed['artifacts'])[0]
                produced[name][key] = {'name': artifact.get('name') or passed['artifacts'][0]['name'],
                                       'uri': artifact.get('uri') or passed['artifacts'][0]['uri'],
                                       'metadata': artifact.get('metadata', {})}
            runs.append(TaskRun(name, 'container', time.monotonic() - started, produced[name], log_path,
                                began, os.path.getmtime(executor_input['outputs']['outputFile'])))
            progress(f'{name}: done in {time.monotonic() - started:.0f} s')
        done.update(ready)
    return runs


def compile_for_this_machine(config_path: str, work_dir: str, overrides: tuple[str, ...] = ()) -> tuple[Any, dict]:
    """Compiles `config_path` for Kubeflow with a kubeflow section whose locations are under
    `work_dir` (pipeline root, serving directory), the data and the backbone prepared the way
    `python -m pipeline run` prepares them, and Beam as a local run would choose it. Returns (config, spec)."""
    from components.training import backbone
    from pipeline import beam_mode, kubeflow_runner, local_runner
    from components.config import load_config

    work_dir = os.path.abspath(work_dir)
    config = load_config(config_path, overrides)
    paths = local_runner.LocalPaths(work_dir)
    data = local_runner.prepare_data(config, paths)
    backbone_uri = backbone.prepare_backbone(config.model.backbone, config.model.input, paths.backbones)
    kubeflow = {'pipeline_root': os.path.join(work_dir, 'pipeline-root'), 'backbone_uri': backbone_uri,
                'serving_dir': paths.serving, 'images': {'default': 'local'},
                'beam_args': list(beam_mode.local_beam_args(config, data))}
    # The embedded digits are written here once; a cluster reads files from data.path.
    data_overrides = (('data.source=tfrecord', f'data.path={data}', f'data.labels={json.dumps(list(config.known_labels))}')
                      if config.data.source == 'digits' else ())
    if config.tuning is not None and config.tuning.storage is not None:
        # The workers of a parallel search share a study in an SQLite file here (a cluster's database
        # is not reachable from this machine).
        data_overrides += (f"tuning.storage=sqlite:///{os.path.join(work_dir, 'tuning.db')}",)
    config = load_config(config_path, overrides + data_overrides + ('kubeflow=' + json.dumps(kubeflow),))
    spec = kubeflow_runner.compile_pipeline(config, os.path.join(work_dir, 'pipeline.yaml'))
    return config, spec


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m tools.kfp_launcher', description=__doc__.split('\n')[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--config', help='a config to compile for this machine and run')
    source.add_argument('--spec', help='a compiled pipeline spec (YAML) to run')
    parser.add_argument('--set', dest='overrides', action='append', default=[], metavar='KEY=VALUE',
                        help='config override (with --config)')
    parser.add_argument('--work-dir', required=True, help='where the run writes (task outputs, logs, serving)')
    parser.add_argument('--param', action='append', default=[], metavar='NAME=VALUE', help='run parameter')
    args = parser.parse_args(argv)
    if args.config:
        _, spec = compile_for_this_machine(args.config, args.work_dir, tuple(args.overrides))
    else:
        with open(args.spec) as f:
            spec = yaml.safe_load(f)
    overrides = dict(p.split('=', 1) for p in args.param)
    try:
        runs = run_spec(spec, os.path.join(os.path.abspath(args.work_dir), 'pipeline-root'), overrides)
    except (RuntimeError, ValueError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 1
    pushed = next((r.outputs['pushed_model'] for r in runs if 'pushed_model' in r.outputs), {}).get('metadata', {})
    print(json.dumps({r.name: r.outputs for r in runs}, indent=2, sort_keys=True))
    print('pushed: ' + pushed['pushed_destination'] if pushed.get('pushed') else 'not pushed', file=sys.stderr)
    return 0 if pushed.get('pushed') else 3


if __name__ == '__main__':
    sys.exit(main())
