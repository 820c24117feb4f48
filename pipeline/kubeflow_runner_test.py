import os
import subprocess
import sys

import pytest
import yaml

from pipeline import kubeflow_runner
from components.config import Resources, load_config
from pipeline.pipeline import create_pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KUBEFLOW = os.path.join(REPO, 'configs', 'kubeflow.yaml')


@pytest.fixture(scope='module')
def compiled(tmp_path_factory, run_cli):
    output = tmp_path_factory.mktemp('kubeflow') / 'pipeline.yaml'
    result = run_cli('compile', '--config', KUBEFLOW, '--output', str(output))
    assert result.returncode == 0, result.stderr[-3000:]
    with open(output) as f:
        return yaml.safe_load(f)


def _local_dag():
    config = load_config(KUBEFLOW)
    return create_pipeline(config, data_uri='data', backbone_uri='backbone', pipeline_root='root', serving_dir='serving')


def test_task_graph_is_the_local_pipeline_s(compiled):
    tasks = compiled['root']['dag']['tasks']
    local = {c.id: sorted(u.id for u in c.upstream_nodes) for c in _local_dag().components}
    assert {name: sorted(task.get('dependentTasks', [])) for name, task in tasks.items()} == local


def test_no_resolver_executor_and_the_backbone_comes_from_an_importer(compiled):
    executors = compiled['deploymentSpec']['executors']
    assert not [name for name, e in executors.items() if 'resolver' in e]
    assert 'importer' in executors['backbone_importer_executor']
    assert executors['backbone_importer_executor']['importer']['artifactUri']['constant'] == \
        load_config(KUBEFLOW).kubeflow.backbone_uri


def test_accelerator_and_gpu_image_on_the_trainer_only(compiled):
    config = load_config(KUBEFLOW).kubeflow
    executors = compiled['deploymentSpec']['executors']
    trainer = executors['Trainer_executor']['container']
    assert trainer['resources']['accelerator'] == {'type': 'nvidia.com/gpu', 'count': '1'}
    assert trainer['image'] == config.images.trainer
    assert trainer['resources']['cpuLimit'] == 8.0
    others = {name: e['container'] for name, e in executors.items() if 'container' in e and name != 'Trainer_executor'}
    assert len(others) == 10
    for name, container in others.items():
        assert container['image'] == config.images.default, name
        assert 'accelerator' not in container.get('resources', {}), name
        assert container['resources']['cpuLimit'] == 2.0, name
        assert container['resources']['memoryLimit'] == pytest.approx(8 * 1024 ** 3 / 1e9), name


def test_data_steps_get_the_cluster_beam_args(compiled):
    executors = compiled['deploymentSpec']['executors']
    for name in ('StatisticsGen_executor', 'Transform_executor', 'Evaluator_executor'):
        assert '--runner=DataflowRunner' in executors[name]['container']['args'], name
    assert '--direct_running_mode=multi_processing' not in str(executors)


def test_the_production_model_lookup_and_the_data_import_are_never_cached(compiled):
    tasks = compiled['root']['dag']['tasks']
    cached = {name for name, task in tasks.items() if task.get('cachingOptions') == {'enableCache': True}}
    assert set(tasks) - cached == {'ProductionModel', 'ImportExampleGen'}


@pytest.mark.parametrize('resources, cpu, memory', [
    ({'cpu': '500m', 'memory': '512Mi'}, 0.5, 512 * 1024 ** 2 / 1e9),
    ({'cpu': '4', 'memory': '16G'}, 4.0, 16.0),
])
def test_kubernetes_quantities_become_kfp_limits(resources, cpu, memory):
    spec = kubeflow_runner.resource_spec(Resources(**resources))
    assert spec.cpu_limit == cpu and spec.memory_limit == pytest.approx(memory)
    assert not spec.HasField('accelerator')


def test_compile_without_a_kubeflow_section_is_a_usage_error():
    result = subprocess.run([sys.executable, '-m', 'pipeline', 'compile', '--config',
                             os.path.join(REPO, 'configs', 'local.yaml'), '--output', os.devnull],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert 'has no `kubeflow` section' in result.stderr


KFP_PYTHON = os.path.join(REPO, '.venv-kfp', 'bin', 'python')


def test_the_kfp_sdk_loads_the_compiled_pipeline(compiled, tmp_path):
    """The real kfp SDK (its own virtualenv, made by `make test`) reads the spec as TFX wrote it."""
    import json

    path = tmp_path / 'pipeline.yaml'
    with open(path, 'w') as f:
        yaml.safe_dump(compiled, f)
    result = subprocess.run([KFP_PYTHON, os.path.join(REPO, 'tools', 'kfp', 'inspect_spec.py'), str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout)
    assert seen['name'] == 'defects-finetune'
    assert seen['tasks'] == {c.id: sorted(u.id for u in c.upstream_nodes) for c in _local_dag().components}
    with_gpu = [name for name, e in seen['executors'].items() if 'accelerator' in e['resources']]
    assert with_gpu == ['Trainer_executor']
    assert {e['kind'] for e in seen['executors'].values()} == {'container', 'importer'}
    config = load_config(KUBEFLOW)
    assert seen['pipeline_root'] == config.kubeflow.pipeline_root
    # The run form: the knobs, typed, with the config's values as defaults.
    assert seen['inputs'] == {
        'data_path': {'type': 'String', 'default': config.data.path, 'optional': True},
        'recall_floor': {'type': 'Float', 'default': 0.9, 'optional': True},
        'precision_floor': {'type': 'Float', 'default': 0.8, 'optional': True},
        'head_learning_rate': {'type': 'Float', 'default': 1e-3, 'optional': True},
        'head_epochs': {'type': 'Integer', 'default': 5, 'optional': True},
        'top_learning_rate': {'type': 'Float', 'default': 1e-4, 'optional': True},
        'top_epochs': {'type': 'Integer', 'default': 10, 'optional': True},
    }


def test_run_parameters_feed_the_steps_that_use_them(compiled):
    tasks = compiled['root']['dag']['tasks']

    def source(task, name):
        return tasks[task]['inputs']['parameters'][name]

    assert source('ImportExampleGen', 'input_base') == {'componentInputParameter': 'data_path'}
    for name in ('head_learning_rate', 'head_epochs', 'top_learning_rate', 'top_epochs'):
        assert source('Trainer', name) == {'componentInputParameter': name}
    for name in ('recall_floor', 'precision_floor'):
        assert source('Evaluator', name) == {'componentInputParameter': name}
    # Schema 2.1: the open-source backend passes parameterValues, which the TFX entrypoint reads
    # only when the step carries its inputs spec.
    assert compiled['schemaVersion'] == '2.1.0'
    args = compiled['deploymentSpec']['executors']['Trainer_executor']['container']['args']
    assert '--json_serialized_inputs_spec_args' in args


def test_backbone_command_writes_the_backbone_where_the_pipeline_imports_it(tmp_path, run_cli):
    local = os.path.join(REPO, 'configs', 'local.yaml')
    command = ['backbone', '--config', local,
               '--set', f'pipeline.runs_dir={tmp_path / "runs"}', '--set', 'model.backbone.source_task.epochs=1']
    missing = run_cli(*command)
    assert missing.returncode == 2 and 'give --output or set kubeflow.backbone_uri' in missing.stderr

    target = tmp_path / 'store' / 'backbones'
    result = run_cli(*command, '--output', str(target))
    assert result.returncode == 0, result.stderr[-3000:]
    written = target / 'backbone.keras'
    assert os.listdir(target) == ['backbone.keras']  # no temporary file left behind
    from components.training import backbone

    assert backbone.backbone_file(str(target / 'Format-Serving')) == str(written)
    assert backbone.load_backbone(str(written)).output.shape[-1] == 64


def test_warm_start_stages_are_run_parameters_too(tmp_path, run_cli):
    output = tmp_path / 'pipeline.yaml'
    result = run_cli('compile', '--config', KUBEFLOW, '--output', str(output), '--set',
                     'trainer.warm_start={stages: [{name: refresh, epochs: 3, unfreeze: all, '
                     'optimizer: {name: adam, learning_rate: 2e-5}}]}')
    assert result.returncode == 0, result.stderr[-3000:]
    spec = yaml.safe_load(output.read_text())
    inputs = spec['root']['inputDefinitions']['parameters']
    assert inputs['refresh_learning_rate']['defaultValue'] == 2e-5
    assert inputs['refresh_epochs']['defaultValue'] == 3
    trainer = spec['root']['dag']['tasks']['Trainer']['inputs']['parameters']
    for name in ('refresh_learning_rate', 'refresh_epochs', 'top_epochs'):
        assert trainer[name] == {'componentInputParameter': name}


def test_the_run_report_is_a_system_html_artifact_that_tfx_s_entrypoint_can_load(compiled):
    """The Kubeflow UI renders an artifact as a page when its type is `system.HTML`; TFX's v2
    entrypoint imports the schema title as a class path when the step runs."""
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2
    from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_entrypoint_utils

    from components.nodes.run_report import HTML

    tasks = compiled['root']['dag']['tasks']
    assert set(tasks['RunReport']['dependentTasks']) >= {'Pusher', 'Evaluator', 'Trainer'}
    component = compiled['components'][tasks['RunReport']['componentRef']['name']]
    artifact_type = component['outputDefinitions']['artifacts']['report']['artifactType']
    assert yaml.safe_load(artifact_type['instanceSchema'])['title'] == 'system.HTML'
    assert 'properties' not in yaml.safe_load(artifact_type['instanceSchema'])

    runtime = json_format.ParseDict({'artifacts': [{'name': 'run/RunReport/report', 'uri': 'gs://b/report',
                                                    'type': artifact_type}]}, pipeline_spec_pb2.ArtifactList())
    [artifact] = kubeflow_v2_entrypoint_utils.parse_raw_artifact_dict({'report': runtime}, {})['report']
    assert type(artifact) is HTML and artifact.uri == 'gs://b/report'


def test_a_parallel_search_compiles_to_one_task_per_worker_each_with_the_trainer_s_gpu(tmp_path, run_cli):
    output = tmp_path / 'pipeline.yaml'
    tuning = ('tuning={trials: 12, parallel_trials: 3, storage: "mysql+pymysql://tuner@mysql.kubeflow:3306/tuning", '
              'space: {trainer.stages.top.optimizer.learning_rate: {space: log_uniform, low: 1e-5, high: 1e-3}}}')
    result = run_cli('compile', '--config', KUBEFLOW, '--output', str(output), '--set', tuning)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(output) as f:
        spec = yaml.safe_load(f)
    config = load_config(KUBEFLOW).kubeflow
    tasks, executors = spec['root']['dag']['tasks'], spec['deploymentSpec']['executors']
    searchers = ['Tuner', 'TuningWorker1', 'TuningWorker2']
    for index, name in enumerate(searchers):
        container = executors[f'{name}_executor']['container']
        assert container['resources']['accelerator'] == {'type': 'nvidia.com/gpu', 'count': '1'}, name
        assert container['image'] == config.images.trainer, name
        assert tasks[name]['inputs']['parameters']['worker_index']['runtimeValue']['constant'] == index
        # Each worker starts once Transform is done, independently of the others.
        assert not set(tasks[name].get('dependentTasks', [])) & set(searchers), name
    assert set(searchers) <= set(tasks['Trainer']['dependentTasks'])
