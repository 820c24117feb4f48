"""The compiled Kubeflow spec, executed step by step on this machine as the open-source KFP launcher
would (tools.kfp_launcher): one run for the module, many assertions on it."""

import json
import os

import pytest
import tensorflow as tf

from components.shared.artifact_files import GATE_REPORT_JSON, TRAINING_LOG
from tools import kfp_launcher

pytestmark = pytest.mark.e2e

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# A search of two workers at once (one trial each): the cluster's database URL becomes an SQLite file here.
TUNING = ('tuning={trials: 2, parallel_trials: 2, storage: "mysql+pymysql://tuner@mysql.kubeflow:3306/tuning", '
          'pruner: none, space: {trainer.stages.finetune.optimizer.learning_rate: '
          '{space: log_uniform, low: 3e-4, high: 3e-3}}}')


@pytest.fixture(scope='module')
def launched(tmp_path_factory):
    work = tmp_path_factory.mktemp('kfp-local')
    config, spec = kfp_launcher.compile_for_this_machine(os.path.join(REPO, 'configs', 'local.yaml'), str(work),
                                                         (TUNING,))
    runs = kfp_launcher.run_spec(spec, str(work / 'pipeline-root'), {'head_epochs': '3'}, progress=lambda _: None)
    return config, spec, {r.name: r for r in runs}, work


def test_every_compiled_task_ran_after_the_tasks_it_depends_on(launched):
    _, spec, runs, _ = launched
    tasks = spec['root']['dag']['tasks']
    assert set(runs) == set(tasks)
    order = list(runs)
    for name, task in tasks.items():
        for upstream in task.get('dependentTasks', []):
            assert order.index(upstream) < order.index(name), (upstream, name)
    assert runs['backbone_importer'].kind == 'importer'


def test_example_gen_runs_without_its_driver_hook(launched):
    """The open-source backend ignores lifecycle.preCacheCheck; the executor alone splits the data."""
    _, spec, runs, _ = launched
    assert 'preCacheCheck' in spec['deploymentSpec']['executors']['ImportExampleGen_executor']['container']['lifecycle']
    examples = runs['ImportExampleGen'].outputs['examples']
    assert json.loads(examples['metadata']['split_names']) == ['train', 'eval', 'test']
    for split in ('train', 'eval', 'test'):
        assert tf.io.gfile.glob(os.path.join(examples['uri'], f'Split-{split}', '*.gz')), split


def test_the_run_ends_blessed_and_pushed(launched):
    config, _, runs, work = launched
    blessing = runs['Evaluator'].outputs['blessing']['metadata']
    assert blessing['blessed'] == 1.0
    assert blessing['current_model_id'] == runs['Trainer'].outputs['model']['name']
    pushed = runs['Pusher'].outputs['pushed_model']['metadata']
    assert pushed['pushed'] == 1.0
    destination = pushed['pushed_destination']
    assert os.path.dirname(destination) == str(work / 'serving')
    assert os.path.isfile(os.path.join(destination, 'saved_model.pb'))
    # The served model answers on raw examples of the data.
    loaded = tf.saved_model.load(destination)
    examples = runs['ImportExampleGen'].outputs['examples']['uri']
    records = [r.numpy() for r in tf.data.TFRecordDataset(
        tf.io.gfile.glob(os.path.join(examples, 'Split-test', '*.gz')), compression_type='GZIP').take(4)]
    scores = loaded.signatures['serving_default'](tf.constant(records))
    assert next(iter(scores.values())).shape[0] == 4


def test_the_run_form_values_reach_the_steps(launched):
    config, _, runs, _ = launched
    with open(os.path.join(runs['Trainer'].outputs['model_run']['uri'], TRAINING_LOG)) as f:
        log = json.load(f)
    epochs = {stage['name']: len(stage['epochs']) for stage in log['stages']}
    assert config.trainer.stages[0].epochs == 10
    assert epochs['head'] == 3  # head_epochs=3 from the run, not the config's 10
    with open(os.path.join(runs['Evaluator'].outputs['evaluation']['uri'], GATE_REPORT_JSON)) as f:
        report = json.load(f)
    floors = {c['metric']: c['threshold'] for c in report['checks'] if c['kind'] == 'floor'}
    assert floors == {'recall': config.evaluation.thresholds.recall, 'precision': config.evaluation.thresholds.precision}
    assert report['baseline'] is None  # first run: nothing in production yet


def test_the_search_s_workers_ran_at_once_sharing_one_study(launched):
    config, _, runs, work = launched
    assert config.tuning.storage == f"sqlite:///{work / 'tuning.db'}"
    tuner, worker = runs['Tuner'], runs['TuningWorker1']
    # Two processes at the same time: each began before the other ended.
    assert tuner.began < worker.ended and worker.began < tuner.ended
    for run in (tuner, worker):
        with open(run.log) as f:
            assert 'tuning: trial ' in f.read(), run.name
    with open(os.path.join(tuner.outputs['best_hyperparameters']['uri'], 'best_hyperparameters.txt')) as f:
        best = json.load(f)
    assert best['completed'] + best['pruned'] >= 2
    with open(os.path.join(runs['Trainer'].outputs['model_run']['uri'], TRAINING_LOG)) as f:
        assert json.load(f)['tuning']['values'] == best['values']


def test_run_parameters_are_typed_and_checked_by_name():
    spec = {'root': {'inputDefinitions': {'parameters': {
        'recall_floor': {'parameterType': 'NUMBER_DOUBLE', 'defaultValue': 0.8},
        'head_epochs': {'parameterType': 'NUMBER_INTEGER', 'defaultValue': 10},
        'data_path': {'parameterType': 'STRING', 'defaultValue': 'gs://b/d'}}}}}
    assert kfp_launcher.pipeline_parameters(spec, {'head_epochs': '3'}) == {
        'recall_floor': 0.8, 'head_epochs': 3, 'data_path': 'gs://b/d'}
    with pytest.raises(ValueError, match=r"run parameter head_epochs = 'three': expected NUMBER_INTEGER"):
        kfp_launcher.pipeline_parameters(spec, {'head_epochs': 'three'})
    with pytest.raises(ValueError, match=r"unknown run parameters \['tail_epochs'\]"):
        kfp_launcher.pipeline_parameters(spec, {'tail_epochs': '3'})


def test_topological_order_and_cycles():
    tasks = {'c': {'dependentTasks': ['a', 'b']}, 'b': {'dependentTasks': ['a']}, 'a': {}}
    assert kfp_launcher.topological_order(tasks) == ['a', 'b', 'c']
    with pytest.raises(ValueError, match='cycle'):
        kfp_launcher.topological_order({'a': {'dependentTasks': ['b']}, 'b': {'dependentTasks': ['a']}})


def test_the_run_report_step_writes_one_html_page_at_its_uri(launched):
    """What the Kubeflow UI would render: a single file at the system.HTML artifact's URI, with the
    sections of a local run's report (tests/test_run_report.py)."""
    import re

    _, spec, runs, _ = launched
    report = runs['RunReport'].outputs['report']
    assert os.path.isfile(report['uri'])
    assert report['metadata']['display_name'] == 'run report'
    with open(report['uri']) as f:
        page = f.read()
    assert re.findall(r'<h2 id="([^"]+)"', page) == ['summary', 'data', 'training', 'gate', 'lineage', 'config']
    assert '<h1>digits-finetune: blessed</h1>' in page
    pushed = runs['Pusher'].outputs['pushed_model']['metadata']['pushed_destination']
    assert f'pushed: {pushed}' in page


def test_a_failing_step_stops_the_run_naming_the_task_and_the_end_of_its_log(tmp_path):
    """The step's process exits non-zero (the entrypoint cannot import its executor class): the run
    raises with the task's name and exit code and the end of the step's own output."""
    entrypoint = ['python', '-m', 'tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor']
    spec = {'root': {'dag': {'tasks': {'Broken': {'componentRef': {'name': 'comp-broken'}}}}},
            'components': {'comp-broken': {'executorLabel': 'broken'}},
            'deploymentSpec': {'executors': {'broken': {'container': {'command': entrypoint, 'args': [
                '--executor_class_path', 'components.nodes.no_such_module.Executor',
                '--json_serialized_invocation_args', '{{$}}']}}}}}
    with pytest.raises(RuntimeError, match=r'(?s)task Broken failed \(exit 1\); log .*no_such_module'):
        kfp_launcher.run_spec(spec, str(tmp_path), progress=lambda _: None)
