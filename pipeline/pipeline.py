"""create_pipeline: the TFX DAG, built from a validated config. No runner."""

import dataclasses
import hashlib
import json
import os
from typing import Any, Optional, Union

from ml_metadata.proto import metadata_store_pb2
# Modules, not `tfx.v1`: the public facade also imports the Google Cloud extensions (seconds).
from tfx.components import ExampleValidator, SchemaGen, StatisticsGen, Transform
from tfx.components.schema_gen.import_schema_gen.component import ImportSchemaGen
from tfx.dsl.components.common.importer import Importer
from tfx.dsl.placeholder.placeholder import execution_invocation
from tfx.orchestration import data_types
from tfx.orchestration import pipeline as tfx_pipeline
from tfx.proto import example_gen_pb2, pusher_pb2, trainer_pb2
from tfx.types import standard_artifacts

from components.gate import tfma_checks
from components.shared import input_files, node_ids
from components.nodes.data_gate import DataValidationGate
from components.nodes import example_gen as example_gen_lib
from components.nodes.example_gen import ImageExampleGen, SpanImportExampleGen
from components.nodes.atomic_pusher import AtomicPusher
from components.nodes.gate_evaluator import GateEvaluator, floor_parameter
from components.nodes.production_model import ProductionModel
from components.nodes.run_report import RunReport
from components.nodes.staged_trainer import EPOCHS, LEARNING_RATE, StagedTrainer, stage_parameter
from components.nodes.stage_tuner import BEST_HYPERPARAMETERS, StageTuner
from components.config import GATE_METRICS, Config, TrainerInputs, TransformInputs, TunerInputs, validate
from components.config.tuning import reused_directory

PREPROCESSING_FN = 'components.training.transform.preprocessing_fn'
RUN_FN = 'components.training.run_fn.run_fn'
# Resolved by the orchestrator to the id of the running pipeline run.
RUN_ID = execution_invocation().pipeline_run_id
# Run parameter naming where the data are read from (ImportExampleGen's input_base).
DATA_PATH = 'data_path'


# The code Transform's preprocessing_fn and the Trainer's run_fn run, relative to the repository:
# the packages below the TFX nodes in the import layers (pyproject.toml), which they import from,
# and nothing above them.
FINGERPRINTED_CODE = tuple(os.path.join('components', p) for p in ('config', 'shared', 'statistics', 'training'))


def code_fingerprint(root: Optional[str] = None) -> str:
    """A digest of the source Transform and the Trainer run (FINGERPRINTED_CODE under `root`,
    default this repository; tests left out).

    preprocessing_fn and run_fn are given by dotted path, so TFX's cache key does not see their
    code (it hashes a module_file, not an installed package). The digest goes into their
    custom_config: after a code change Transform and the Trainer run again instead of reusing
    outputs the old code made.
    """
    root = root or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    files = []
    for package in FINGERPRINTED_CODE:
        for directory, subdirectories, names in os.walk(os.path.join(root, package)):
            subdirectories[:] = sorted(d for d in subdirectories if d != '__pycache__')
            files.extend(os.path.relpath(os.path.join(directory, name), root) for name in names
                         if name.endswith('.py') and not name.endswith('_test.py'))
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode())
        with open(os.path.join(root, name), 'rb') as f:
            digest.update(f.read())
    return digest.hexdigest()[:16]


def transform_config(config: Config) -> dict:
    """custom_config for Transform's preprocessing_fn: its TransformInputs, as JSON data."""
    return validate({
        'code': code_fingerprint(),
        'image_feature': config.data.image_feature,
        'label_feature': config.data.label_feature,
        'task': config.task.type,
        'positive_class': config.task.positive_class,
        'classes': list(config.output_classes),
        'max_image_pixels': config.data.max_image_pixels,
        'input': config.model.input.model_dump(mode='json'),
    }, TransformInputs).model_dump(mode='json')


def trainer_config(config: Config, from_scratch: bool = False) -> dict:
    """custom_config for the Trainer's run_fn: its TrainerInputs, as JSON data (the Trainer step's
    executor adds `warm_start`). `from_scratch`: the backbone's architecture with freshly
    initialised weights (pipeline.compare)."""
    target = config.evaluation.decision_target
    return validate({
        'code': code_fingerprint(),
        'trainer': config.trainer.model_dump(mode='json'),
        'head': config.model.head.model_dump(mode='json'),
        'input': config.model.input.model_dump(mode='json'),
        'augmentation': config.model.augmentation and config.model.augmentation.model_dump(mode='json'),
        'label_feature': config.data.label_feature,
        'classes': list(config.output_classes),
        'decision_threshold': config.evaluation.fixed_threshold,
        'decision_target': target and target.model_dump(mode='json'),
        # Only with a target (TrainerInputs.confidence says why).
        'confidence': config.evaluation.confidence if target else None,
        'interval': config.evaluation.interval if target else None,
        'mixed_precision': config.model.mixed_precision,
        'from_scratch': from_scratch,
        'class_weight': config.class_weight,
        'train_examples_per_class': config.data.train_examples_per_class,
        # The Trainer reads a copy of keras_file's bytes (locally the file, on Kubeflow
        # kubeflow.backbone_uri), so that pin holds there too; a pinned weights file was verified
        # where the backbone was built from it.
        'backbone_sha256': config.model.backbone.sha256 if config.model.backbone.keras_file else None,
    }, TrainerInputs).model_dump(mode='json', exclude={'hyperparameters_from'})


def run_parameters(config: Config, data_uri: str) -> dict[str, Union[str, int, float]]:
    """The knobs a person changes between runs, with their values from the config: the data
    location, each gate floor that is set (`recall_floor`, ...), and each stage's learning rate
    (unless `auto`) and epochs (`<stage>_learning_rate`, `<stage>_epochs`), the stages of
    trainer.warm_start included. On Kubeflow they are the pipeline's runtime parameters, with these
    values as defaults."""
    values: dict[str, Union[str, int, float]] = {DATA_PATH: data_uri}
    for metric in GATE_METRICS:
        floor = getattr(config.evaluation.thresholds, metric)
        if floor is not None:
            values[floor_parameter(metric)] = floor
    warm_start = config.trainer.warm_start.stages if config.trainer.warm_start else ()
    for stage in config.trainer.stages + warm_start:
        rate = stage.optimizer.learning_rate
        for field, value in ((LEARNING_RATE, None if rate == 'auto' else float(rate)), (EPOCHS, int(stage.epochs))):
            if value is None:  # a rate found by the range test is not a knob
                continue
            name = stage_parameter(stage.name, field)
            if name in values:
                raise ValueError(f'trainer.stages, trainer.warm_start.stages: stage {stage.name!r} gives the run '
                                 f'parameter {name!r} a second meaning; rename the stage')
            values[name] = value
    return values


@dataclasses.dataclass(frozen=True)
class DataSteps:
    """ExampleGen -> StatisticsGen -> SchemaGen (or ImportSchemaGen) -> ExampleValidator ->
    DataValidationGate -> Transform, as create_pipeline wires them."""

    example_gen: Any
    statistics_gen: Any
    schema_gen: Any
    example_validator: Any
    data_gate: Any
    transform: Any

    @property
    def nodes(self) -> list:
        return [self.example_gen, self.statistics_gen, self.schema_gen, self.example_validator, self.data_gate,
                self.transform]


def _decision_target(config: Config) -> Optional[dict]:
    """{metric, target} of the decision threshold chosen on eval, or None (a fixed threshold)."""
    target = config.evaluation.decision_target
    if target is None:
        return None
    if target.target_recall is not None:
        return {'metric': 'recall', 'target': target.target_recall}
    return {'metric': 'precision', 'target': target.target_precision}


def data_steps(config: Config, input_base: Any) -> DataSteps:
    """The data steps: read, describe, validate (stopping the run on bad data) and preprocess.
    `input_base`: where the data are (a path, or a RuntimeParameter)."""
    splits = config.data.splits
    # Both ExampleGens resolve {SPAN} themselves where their driver does not run (open-source Kubeflow).
    data, evaluation = config.data, config.evaluation
    if data.source in ('images', 'csv'):
        example_gen_class = ImageExampleGen
        settings = {'layout': 'folders' if data.source == 'images' else 'csv', 'image_feature': data.image_feature,
                    'label_feature': data.label_feature, 'class_names': data.class_names,
                    'max_distance': data.duplicates.max_distance, 'group_feature': data.group_feature,
                    'extra_extensions': list(data.extra_extensions), 'max_image_pixels': data.max_image_pixels}
        # ImageExampleGen keys each example by its group of near-duplicates (and group_feature).
        partition = input_files.SPLIT_GROUP
    else:
        example_gen_class, settings, partition = SpanImportExampleGen, {}, data.group_feature
    example_gen = example_gen_class(
        input_base=input_base,
        input_config=example_gen_pb2.Input(splits=[example_gen_pb2.Input.Split(name='single_split', pattern=data.input_pattern)]),
        custom_config=example_gen_lib.custom_config(data.input_pattern, data.rolling_spans, **settings),
        output_config=example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(splits=[
            example_gen_pb2.SplitConfig.Split(name='train', hash_buckets=splits.train),
            example_gen_pb2.SplitConfig.Split(name='eval', hash_buckets=splits.eval),
            example_gen_pb2.SplitConfig.Split(name='test', hash_buckets=splits.test),
        ], partition_feature_name=partition)))
    statistics_gen = StatisticsGen(examples=example_gen.outputs['examples'])
    if data.schema_file:
        # A curated schema: drift from it is an anomaly (an inferred one would follow the data).
        schema_gen = ImportSchemaGen(
            schema_file=data.schema_file if '://' in data.schema_file else os.path.abspath(data.schema_file))
    else:
        schema_gen = SchemaGen(statistics=statistics_gen.outputs['statistics'],
                                              infer_feature_shape=True)
    example_validator = ExampleValidator(
        statistics=statistics_gen.outputs['statistics'], schema=schema_gen.outputs['schema'])
    data_gate = DataValidationGate(
        anomalies=example_validator.outputs['anomalies'], statistics=statistics_gen.outputs['statistics'],
        examples=example_gen.outputs['examples'],
        checks=json.dumps({'image_feature': data.image_feature, 'label_feature': data.label_feature,
                           'known_labels': None if config.known_labels is None else list(config.known_labels),
                           'positive_class': config.task.positive_class if config.task.type == 'binary' else None,
                           'classes': list(config.output_classes) or None,
                           'max_image_pixels': data.max_image_pixels,
                           'input': config.model.input.model_dump(mode='json'),
                           'max_distance': data.duplicates.max_distance,
                           'across_splits': data.duplicates.across_splits,
                           'decision_target': _decision_target(config),
                           'floors': dict(evaluation.thresholds.items()),
                           'class_floors': {str(label): dict(floors.items())
                                            for label, floors in evaluation.class_thresholds.items()},
                           'confidence': evaluation.confidence, 'interval': evaluation.interval}))

    # disable_statistics: Transform would otherwise compute the raw data's statistics again
    # (StatisticsGen's work) and those of its output, which nothing reads.
    transform = Transform(
        examples=example_gen.outputs['examples'], schema=schema_gen.outputs['schema'],
        preprocessing_fn=PREPROCESSING_FN, custom_config=transform_config(config), disable_statistics=True)
    transform.add_upstream_node(data_gate)
    return DataSteps(example_gen, statistics_gen, schema_gen, example_validator, data_gate, transform)


def backbone_node(backbone_uri: str) -> Importer:
    """The imported backbone the Trainers start from."""
    return Importer(source_uri=backbone_uri,
                    artifact_type=standard_artifacts.Model).with_id(node_ids.BACKBONE_IMPORTER)


def tuner_config(config: Config) -> dict:
    """custom_config of the tuning step: the Trainer's inputs its trials start from, and the search."""
    return validate({'trainer': trainer_config(config), 'tuning': config.tuning.model_dump(mode='json'),
                     'objective': config.tuning.objective_for(config.task.type)}, TunerInputs).model_dump(
        mode='json', exclude={'trainer': {'hyperparameters_from'}})


@dataclasses.dataclass(frozen=True)
class Search:
    """What gives the Trainer its HyperParameters: the search's nodes (its further workers first,
    then the one whose output the Trainer takes), or the importer of an earlier search's values."""

    nodes: list
    hyperparameters: Any

    @property
    def workers(self) -> list:
        """The nodes the Trainer waits for beside the one it takes the values from."""
        return self.nodes[:-1]


def tuning_nodes(config: Config, steps: DataSteps, backbone: Importer, suffix: str = '') -> Optional[Search]:
    """The search of the config's `tuning` section, or the importer of an earlier search's values
    (tuning.reuse); None without a `tuning` section. `suffix` ends each node's id."""
    tuning = config.tuning
    if tuning is None:
        return None
    if tuning.reuse is not None:
        source = tuning.reuse if '://' in tuning.reuse else reused_directory(tuning.reuse)
        importer = Importer(source_uri=source, artifact_type=standard_artifacts.HyperParameters
                            ).with_id(node_ids.HYPERPARAMETERS_IMPORTER + suffix)
        return Search([importer], importer.outputs['result'])
    custom_config = tuner_config(config)

    def tuner(index: int, node_id: str) -> StageTuner:
        return StageTuner(examples=steps.transform.outputs['transformed_examples'],
                          transform_graph=steps.transform.outputs['transform_graph'],
                          schema=steps.schema_gen.outputs['schema'], base_model=backbone.outputs['result'],
                          custom_config=custom_config, parallel_trials=tuning.parallel_trials,
                          worker_index=index).with_id(node_id)

    workers = [tuner(k, f'{node_ids.TUNING_WORKER}{k}{suffix}') for k in range(1, tuning.parallel_trials)]
    chooser = tuner(0, node_ids.TUNER + suffix)
    return Search(workers + [chooser], chooser.outputs[BEST_HYPERPARAMETERS])


def trainer_node(steps: DataSteps, backbone: Importer, custom_config: dict, node_id: str = node_ids.TRAINER,
                 search: Optional[Search] = None, **options) -> StagedTrainer:
    """The StagedTrainer on Transform's output: it trains on `train`, steers early stopping and the
    decision threshold on `eval` (`options`: StagedTrainer's stage_values, warm_start_model). With
    `search`, it trains the values the search gives, once every worker of the search is done."""
    trainer = StagedTrainer(
        run_fn=RUN_FN,
        examples=steps.transform.outputs['transformed_examples'],
        transform_graph=steps.transform.outputs['transform_graph'],
        schema=steps.schema_gen.outputs['schema'],
        base_model=backbone.outputs['result'],
        train_args=trainer_pb2.TrainArgs(splits=['train']),
        eval_args=trainer_pb2.EvalArgs(splits=['eval']),
        custom_config=custom_config, hyperparameters=search and search.hyperparameters, **options).with_id(node_id)
    for worker in search.workers if search else ():
        trainer.add_upstream_node(worker)
    return trainer


def evaluator_node(config: Config, steps: DataSteps, trainer: StagedTrainer, baseline_model,
                   node_id: str = node_ids.EVALUATOR, **options) -> GateEvaluator:
    """The gate on the held-out `test` split: early stopping and reduce-on-plateau watched `eval`,
    so gating on it would flatter the model. `baseline_model`: production's model channel, or None
    (floors only); `options`: GateEvaluator's floors."""
    classes = config.output_classes
    return GateEvaluator(
        examples=steps.example_gen.outputs['examples'],
        model=trainer.outputs['model'],
        baseline_model=baseline_model,
        example_splits=['test'],
        eval_config=tfma_checks.eval_config(config.task, config.evaluation, classes),
        classes=classes,
        confidence=config.evaluation.confidence,
        interval=config.evaluation.interval,
        **options,
    ).with_id(node_id)


def create_pipeline(
    config: Config,
    data_uri: str,
    backbone_uri: str,
    pipeline_root: str,
    serving_dir: str,
    metadata_connection_config: Optional[metadata_store_pb2.ConnectionConfig] = None,
    production_cache_key: Any = RUN_ID,
    beam_args: Optional[tuple[str, ...]] = None,
    runtime_parameters: bool = False,
) -> tfx_pipeline.Pipeline:
    """ExampleGen -> StatisticsGen -> SchemaGen -> ExampleValidator -> DataValidationGate -> Transform
    -> Trainer (from the imported backbone) -> Evaluator (against the model in production) -> Pusher
    -> RunReport.

    Args:
      config: the validated configuration.
      data_uri: directory of TFRecord files of tf.Example.
      backbone_uri: the pre-trained backbone (a `.keras` file, or a directory holding backbone.keras).
      pipeline_root: where component outputs are written.
      serving_dir: where the Pusher puts blessed models.
      metadata_connection_config: the ML Metadata store (None lets the orchestrator choose).
      production_cache_key: the ProductionModel step's cache key (release.CACHE_KEY). The default,
        the run id placeholder (which LocalDagRunner resolves), is never cached;
        pipeline.local_runner passes a key that stays the same while production holds what this
        pipeline pushed from the same data and config. Kubeflow's compiler refuses the placeholder;
        it passes None and turns caching off for that task instead (pipeline.kubeflow_runner).
      beam_args: Beam arguments of the data steps and the Evaluator (default: config.pipeline.beam_args,
        or none, which is DirectRunner in this process).
      runtime_parameters: make run_parameters() pipeline RuntimeParameters (Kubeflow's run form)
        with the config's values as defaults, instead of constants.
    """
    knobs: dict[str, Any] = run_parameters(config, data_uri)
    if runtime_parameters:
        knobs = {name: data_types.RuntimeParameter(name=name, ptype=type(value), default=value)
                 for name, value in knobs.items()}
    floors = {m: floor_parameter(m) for m in GATE_METRICS if floor_parameter(m) in knobs}
    data_path = knobs.pop(DATA_PATH)
    steps = data_steps(config, data_path)
    example_gen = steps.example_gen

    # The model in production, read from the serving directory by an ordinary step (open-source
    # Kubeflow Pipelines rejects Resolver nodes): the gate's baseline, and the warm start.
    production = ProductionModel(serving_dir=serving_dir, examples=example_gen.outputs['examples'],
                                 cache_key=production_cache_key)

    backbone = backbone_node(backbone_uri)
    search = tuning_nodes(config, steps, backbone)
    trainer = trainer_node(
        steps, backbone, trainer_config(config), search=search,
        stage_values={k: v for k, v in knobs.items() if k not in floors.values()},
        warm_start_model=production.outputs['model'] if config.trainer.warm_start else None)
    evaluator = evaluator_node(config, steps, trainer, production.outputs['model'],
                               floors={m: knobs[name] for m, name in floors.items()})
    pusher = AtomicPusher(
        model=trainer.outputs['model'],
        model_blessing=evaluator.outputs['blessing'],
        push_destination=pusher_pb2.PushDestination(
            filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=serving_dir))).with_id(node_ids.PUSHER)
    run_report = RunReport(
        examples=example_gen.outputs['examples'], label_counts=steps.data_gate.outputs['label_counts'],
        model=trainer.outputs['model'], model_run=trainer.outputs['model_run'],
        evaluation=evaluator.outputs['evaluation'], pushed_model=pusher.outputs['pushed_model'],
        config=config.model_dump_json(), data_path=data_path).with_id(node_ids.RUN_REPORT)

    return tfx_pipeline.Pipeline(
        pipeline_name=config.pipeline.name,
        pipeline_root=pipeline_root,
        components=steps.nodes + [backbone] + (search.nodes if search else []) + [trainer, production, evaluator,
                                                                                    pusher, run_report],
        enable_cache=config.pipeline.enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=list((config.pipeline.beam_args or ()) if beam_args is None else beam_args))
