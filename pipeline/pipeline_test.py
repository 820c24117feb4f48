import json
import os
import shutil

import pytest

from components.shared import node_ids
from pipeline import pipeline as pipeline_lib
from components.config import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _modules_run_by_transform_and_trainer() -> set[str]:
    """preprocessing_fn's and run_fn's modules and every module of this repository they import."""
    import grimp

    graph = grimp.build_graph('components')
    entries = {pipeline_lib.PREPROCESSING_FN.rpartition('.')[0], pipeline_lib.RUN_FN.rpartition('.')[0]}
    return entries.union(*(graph.find_upstream_modules(m) for m in entries))


def test_code_changes_reach_the_cache_key_of_transform_and_trainer(tmp_path):
    """An edit in any module Transform or the Trainer imports (from the import graph) changes the
    fingerprint in their custom_config; a test module, or a module they do not import, does not."""
    shutil.copytree(os.path.join(REPO, 'components'), tmp_path / 'components',
                    ignore=shutil.ignore_patterns('__pycache__'))
    before = pipeline_lib.code_fingerprint(str(tmp_path))
    assert before == pipeline_lib.code_fingerprint()
    used = _modules_run_by_transform_and_trainer()
    assert {'components.training.run_fn', 'components.training.transform', 'components.config',
            'components.statistics.proportions', 'components.shared.storage'} <= used
    for module in sorted(used):
        parts = module.split('.')
        path = tmp_path.joinpath(*parts).with_suffix('.py')
        if not path.exists():
            path = tmp_path.joinpath(*parts, '__init__.py')
        original = path.read_text()
        path.write_text(original + '\n# changed\n')
        assert pipeline_lib.code_fingerprint(str(tmp_path)) != before, module
        path.write_text(original)
    for unused in ('training/stage_loop_test.py', 'nodes/run_report.py', 'reporting/run_summary.py'):
        with open(tmp_path / 'components' / unused, 'a') as f:
            f.write('\n# changed\n')
    assert pipeline_lib.code_fingerprint(str(tmp_path)) == before

    config = load_config(os.path.join(REPO, 'configs', 'local.yaml'))
    dag = pipeline_lib.create_pipeline(config, data_uri='data', backbone_uri='backbone', pipeline_root='root',
                                       serving_dir='serving')
    nodes = {node.id: node for node in dag.components}
    assert sorted(nodes) == sorted(node_ids.ALL)  # every node has the id components.shared.node_ids gives it
    current = pipeline_lib.code_fingerprint()
    assert json.loads(nodes['Trainer'].exec_properties['custom_config'])['code'] == current
    assert json.loads(nodes['Transform'].exec_properties['custom_config'])['code'] == current


def test_run_parameters_are_the_knobs_a_person_changes_with_the_config_values():
    config = load_config(os.path.join(REPO, 'configs', 'local.yaml'), (
        'evaluation.thresholds={recall: 0.85}',
        'trainer.stages=[{name: head, epochs: 4, unfreeze: none, optimizer: {name: adam, learning_rate: 3e-3}},'
        ' {name: fine-tune, epochs: 6, unfreeze: all, optimizer: {name: sgd, learning_rate: auto}}]'))
    assert pipeline_lib.run_parameters(config, 'gs://bucket/data') == {
        'data_path': 'gs://bucket/data', 'recall_floor': 0.85,  # precision has no floor: no parameter
        'head_learning_rate': 3e-3, 'head_epochs': 4,
        'fine_tune_epochs': 6}  # a learning rate found by the range test is not a knob

    clash = load_config(os.path.join(REPO, 'configs', 'local.yaml'), (
        'trainer.stages=[{name: a.b, epochs: 1, unfreeze: none, optimizer: {name: adam, learning_rate: 0.1}},'
        ' {name: a_b, epochs: 1, unfreeze: all, optimizer: {name: adam, learning_rate: 0.1}}]',))
    with pytest.raises(ValueError, match=r"stage 'a_b' gives the run parameter 'a_b_learning_rate' a second"):
        pipeline_lib.run_parameters(clash, 'data')


def test_stage_parameters_reach_the_trainer_s_custom_config():
    from components.nodes import staged_trainer

    config = load_config(os.path.join(REPO, 'configs', 'local.yaml'))
    custom_config = pipeline_lib.trainer_config(config)
    changed = staged_trainer.apply_stage_parameters(
        custom_config, {'head_learning_rate': 0.05, 'finetune_epochs': 2, 'head_epochs': None, 'other': 1})
    assert changed == ['head.learning_rate=0.05', 'finetune.epochs=2']
    head, finetune = custom_config['trainer']['stages']
    assert head['optimizer']['learning_rate'] == 0.05 and head['epochs'] == 10
    assert finetune['epochs'] == 2 and finetune['optimizer']['learning_rate'] == 1e-3

    # Locally the knobs are constants on the Trainer and Evaluator; unknown ones are refused.
    dag = pipeline_lib.create_pipeline(config, data_uri='data', backbone_uri='backbone', pipeline_root='root',
                                       serving_dir='serving')
    nodes = {node.id: node for node in dag.components}
    assert nodes['Trainer'].exec_properties['finetune_epochs'] == 12
    assert nodes['Evaluator'].exec_properties['recall_floor'] == config.evaluation.thresholds.recall
    assert nodes['Evaluator'].exec_properties['confidence'] == 0.95
    assert nodes['ImportExampleGen'].exec_properties['input_base'] == 'data'
    with pytest.raises(ValueError, match=r"stage parameters \['tail_epochs'\] name no stage field"):
        staged_trainer.StagedTrainer(
            examples=nodes['Transform'].outputs['transformed_examples'],
            transform_graph=nodes['Transform'].outputs['transform_graph'], schema=nodes['SchemaGen'].outputs['schema'],
            base_model=nodes['backbone_importer'].outputs['result'], run_fn=pipeline_lib.RUN_FN,
            train_args=None, eval_args=None, custom_config=custom_config, stage_values={'tail_epochs': 3})


def test_warm_start_feeds_the_model_in_production_to_the_trainer():
    local = os.path.join(REPO, 'configs', 'local.yaml')
    warm = ('trainer.warm_start={stages: [{name: refresh, epochs: 2, unfreeze: all, '
            'optimizer: {name: adam, learning_rate: 1e-4}}]}',)
    for overrides, fed in (((), False), (warm, True)):
        dag = pipeline_lib.create_pipeline(load_config(local, overrides), data_uri='data', backbone_uri='backbone',
                                           pipeline_root='root', serving_dir='serving')
        nodes = {node.id: node for node in dag.components}
        trainer = nodes['Trainer']
        assert ('warm_start_model' in trainer.inputs) == fed
        assert ('ProductionModel' in {n.id for n in trainer.upstream_nodes}) == fed
        if fed:
            assert trainer.inputs['warm_start_model'].producer_component_id == 'ProductionModel'
            stages = json.loads(trainer.exec_properties['custom_config'])['trainer']['warm_start']['stages']
            assert [s['name'] for s in stages] == ['refresh']


def test_warm_start_stages_have_run_parameters_of_their_own():
    from components.nodes import staged_trainer

    local = os.path.join(REPO, 'configs', 'local.yaml')
    config = load_config(local, ('trainer.warm_start={stages: [{name: refresh, epochs: 2, unfreeze: all, '
                                 'optimizer: {name: adam, learning_rate: 1e-4}}]}',))
    knobs = pipeline_lib.run_parameters(config, 'data')
    assert knobs['refresh_learning_rate'] == 1e-4 and knobs['refresh_epochs'] == 2
    assert knobs['finetune_epochs'] == 12  # trainer.stages keep theirs

    # A value from the run form reaches the warm-start stage run_fn reads.
    custom_config = pipeline_lib.trainer_config(config)
    changed = staged_trainer.apply_stage_parameters(custom_config, {'refresh_epochs': 5, 'refresh_learning_rate': 3e-5})
    assert changed == ['refresh.learning_rate=3e-05', 'refresh.epochs=5']
    [refresh] = custom_config['trainer']['warm_start']['stages']
    assert refresh['epochs'] == 5 and refresh['optimizer']['learning_rate'] == 3e-5
    dag = pipeline_lib.create_pipeline(config, data_uri='data', backbone_uri='backbone', pipeline_root='root',
                                       serving_dir='serving')
    trainer = {node.id: node for node in dag.components}['Trainer']
    assert trainer.exec_properties['refresh_epochs'] == 2

    # A warm-start stage named like one of trainer.stages would make one knob set two stages.
    clash = load_config(local, ('trainer.warm_start={stages: [{name: head, epochs: 2, unfreeze: all, '
                                'optimizer: {name: adam, learning_rate: 1e-4}}]}',))
    with pytest.raises(ValueError, match=r"stage 'head' gives the run parameter 'head_learning_rate' a second"):
        pipeline_lib.run_parameters(clash, 'data')


def test_a_curated_schema_replaces_the_inferred_one(tmp_path):
    schema = tmp_path / 'schema.pbtxt'
    schema.write_text('feature { name: "label" type: INT }\n')
    config = load_config(os.path.join(REPO, 'configs', 'local.yaml'), (f'data.schema_file={schema}',))
    dag = pipeline_lib.create_pipeline(config, data_uri='data', backbone_uri='backbone', pipeline_root='root',
                                       serving_dir='serving')
    nodes = {node.id: node for node in dag.components}
    assert 'SchemaGen' not in nodes
    assert nodes['ImportSchemaGen'].exec_properties['schema_file'] == str(schema)
    for consumer in ('ExampleValidator', 'Transform', 'Trainer'):
        assert nodes[consumer].inputs['schema'].producer_component_id == 'ImportSchemaGen', consumer


def test_transform_and_the_trainer_get_one_typed_contract_and_a_missing_value_is_named():
    from components.config import ConfigError, TrainerInputs, TransformInputs, validate

    config = load_config(os.path.join(REPO, 'configs', 'local.yaml'))
    trainer = validate(pipeline_lib.trainer_config(config), TrainerInputs)
    assert trainer.trainer == config.trainer and trainer.head == config.model.head and trainer.input == config.model.input
    assert trainer.num_classes == 1 and trainer.classes == ()
    assert trainer.decision_threshold == config.evaluation.fixed_threshold and trainer.decision_target is None
    assert trainer.confidence is None and trainer.warm_start is None  # no target: the gate's confidence stays out
    transform = validate(pipeline_lib.transform_config(config), TransformInputs)
    assert (transform.task, transform.positive_class, transform.input) == ('binary', 9, config.model.input)

    multiclass = load_config(os.path.join(REPO, 'configs', 'local.yaml'), (
        'task.type=multiclass', 'task.positive_class=null', 'task.classes=[9, 5, 6, 7, 8]', 'evaluation.max_drop={}'))
    assert validate(pipeline_lib.trainer_config(multiclass), TrainerInputs).num_classes == 5
    targeted = load_config(os.path.join(REPO, 'configs', 'local.yaml'), ('evaluation.decision_threshold={target_recall: 0.8}',))
    chosen = validate(pipeline_lib.trainer_config(targeted), TrainerInputs)
    assert (chosen.confidence, chosen.interval) == (0.95, 'clopper_pearson')

    incomplete = pipeline_lib.trainer_config(config)
    del incomplete['label_feature']
    with pytest.raises(ConfigError, match='^label_feature: required key is missing$'):
        validate(incomplete, TrainerInputs)
    with pytest.raises(ConfigError, match='confidence and interval choose a threshold for decision_target'):
        validate({**pipeline_lib.trainer_config(config), 'confidence': 0.9}, TrainerInputs)


def test_a_tuning_section_adds_the_search_before_the_trainer_and_none_leaves_the_dag_as_it_was(tmp_path):
    local = os.path.join(REPO, 'configs', 'local.yaml')
    tuning = ('tuning={trials: 4, space: {trainer.stages.head.optimizer.learning_rate: '
              '{space: log_uniform, low: 1e-3, high: 3e-2}}}')

    def dag(*overrides):
        built = pipeline_lib.create_pipeline(load_config(local, overrides), data_uri='data', backbone_uri='backbone',
                                             pipeline_root='root', serving_dir='serving')
        return {node.id: node for node in built.components}

    plain = dag()
    assert set(plain) == set(node_ids.ALL)
    assert 'hyperparameters' not in plain['Trainer'].inputs
    assert 'hyperparameters_from' not in json.loads(plain['Trainer'].exec_properties['custom_config'])

    tuned = dag(tuning)
    assert set(tuned) - set(plain) == {node_ids.TUNER}
    tuner = tuned[node_ids.TUNER]
    # The search is given the train split to train on and the eval split to score; the test split is the gate's.
    assert json.loads(tuner.exec_properties['train_args']) == {'splits': ['train']}
    assert json.loads(tuner.exec_properties['eval_args']) == {'splits': ['eval']}
    assert tuner.inputs['examples'].producer_component_id == 'Transform'
    assert tuned['Trainer'].inputs['hyperparameters'].producer_component_id == node_ids.TUNER
    # The trials start from the Trainer's own inputs.
    config = json.loads(tuner.exec_properties['custom_config'])
    assert config['trainer'] == json.loads(plain['Trainer'].exec_properties['custom_config'])
    assert config['objective'] == 'auc_pr'

    parallel = dag(tuning, 'tuning.parallel_trials=3', 'tuning.storage=env:TUNING_DB')
    workers = [f'{node_ids.TUNING_WORKER}{k}' for k in (1, 2)]
    assert set(parallel) - set(plain) == {node_ids.TUNER, *workers}
    assert [parallel[w].exec_properties['worker_index'] for w in workers] == [1, 2]
    assert {n.id for n in parallel['Trainer'].upstream_nodes} >= {node_ids.TUNER, *workers}

    (tmp_path / 'best_hyperparameters.txt').write_text(
        json.dumps({'values': {'trainer.stages.head.optimizer.learning_rate': 0.01}}))
    reused = dag(tuning, f'tuning.reuse={tmp_path}')
    assert set(reused) - set(plain) == {node_ids.HYPERPARAMETERS_IMPORTER}
