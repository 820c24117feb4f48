"""The Trainer step: TFX's Trainer (GenericExecutor calling components.training.run_fn.run_fn) with each
stage's learning rate and epochs as exec properties of their own.

The stages live inside the Trainer's custom_config, one JSON string. A run parameter (a
RuntimeParameter, a field in the Kubeflow run form) can only fill a whole exec property, so the
knobs a person changes between runs get one each (`<stage>_learning_rate`, `<stage>_epochs`) and
the executor writes them into custom_config before run_fn sees it. run_fn validates the result
like any config, so a bad value from the run form fails with the key named.

With a `tuning` section the step also takes TFX's HyperParameters artifact (the tuning step's
output, or an earlier search's, imported): run_fn trains with the values it holds, which take
precedence over the config's and the run parameters'.

With trainer.warm_start the step also takes the model in production (the ProductionModel step's
output, found the same way as the gate's baseline) as `warm_start_model`: when it holds a model,
the executor tells run_fn to start from its weights. As an input of the Trainer's execution, ML
Metadata records which model each new one started from.
"""

import os
import re
from typing import Any, Optional

from absl import logging
from tfx import types
from tfx.components.trainer import executor as trainer_executor
from tfx.dsl.components.base import base_component, executor_spec
from tfx.dsl.io import fileio
from tfx.proto import trainer_pb2
from tfx.types import standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter, ExecutionParameter
from tfx.utils import json_utils, path_utils

from components.training import export
from components.shared import release_keys

LEARNING_RATE = 'learning_rate'
EPOCHS = 'epochs'
_FIELD_TYPES = {LEARNING_RATE: float, EPOCHS: int}
WARM_START_MODEL = 'warm_start_model'


def stage_parameter(stage_name: str, field: str) -> str:
    """The exec property (and run parameter) name for `field` of the stage named `stage_name`."""
    return re.sub(r'[^A-Za-z0-9_]', '_', stage_name) + '_' + field


def _stages(custom_config: dict) -> list[dict]:
    """trainer.stages, then trainer.warm_start.stages when there are any."""
    trainer = custom_config['trainer']
    return list(trainer['stages']) + list((trainer.get('warm_start') or {}).get('stages', ()))


def apply_stage_parameters(custom_config: dict, values: dict[str, Any]) -> list[str]:
    """Writes the stage values found in `values` (exec properties) into custom_config's stages;
    returns what it changed, as `stage.field=value`."""
    changed = []
    for stage in _stages(custom_config):
        for field in _FIELD_TYPES:
            value = values.get(stage_parameter(stage['name'], field))
            if value is None:
                continue
            if field == LEARNING_RATE:
                stage['optimizer']['learning_rate'] = value
            else:
                stage[field] = value
            changed.append(f"{stage['name']}.{field}={value}")
    return changed


def warm_start_from(models: list) -> Optional[dict]:
    """Where to warm-start from, given the warm_start_model input: the weights of the model in
    production, or None when nothing is in production (or it predates warm-start weights)."""
    if not models:
        return None
    model = models[0]
    weights = os.path.join(path_utils.serving_model_path(model.uri), export.WARM_START_WEIGHTS)
    if not fileio.exists(weights):
        return None
    return {'weights': weights, 'production_path': model.get_string_custom_property(release_keys.PRODUCTION_PATH),
            'production_version': model.get_string_custom_property(release_keys.PRODUCTION_VERSION)}


class StagedTrainerExecutor(trainer_executor.GenericExecutor):
    """GenericExecutor after writing the stage exec properties, and where to warm-start from, into
    custom_config."""

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        key = standard_component_specs.CUSTOM_CONFIG_KEY
        custom_config = json_utils.loads(exec_properties[key])
        changed = apply_stage_parameters(custom_config, exec_properties)
        warm_start = warm_start_from(input_dict.get(WARM_START_MODEL, []))
        custom_config['warm_start'] = warm_start
        # The tuning step's output, or an earlier search's values imported (tuning.reuse): the
        # values themselves reach run_fn as fn_args.hyperparameters; where they came from goes in
        # its training log.
        hyperparameters = input_dict.get(standard_component_specs.HYPERPARAMETERS_KEY)
        if hyperparameters:
            custom_config['hyperparameters_from'] = hyperparameters[0].uri
        logging.info('Stage values from run parameters: %s; warm start: %s', changed, warm_start)
        exec_properties = {**exec_properties, key: json_utils.dumps(custom_config)}
        super().Do(input_dict, output_dict, exec_properties)


def _spec_class(parameter_names: list[str]) -> type:
    """TrainerSpec plus one optional exec property per stage knob."""
    parameters = {name: ExecutionParameter(type=_FIELD_TYPES[field], optional=True)
                  for name, field in parameter_names}
    return type('StagedTrainerSpec', (standard_component_specs.TrainerSpec,), {
        'PARAMETERS': {**standard_component_specs.TrainerSpec.PARAMETERS, **parameters},
        'INPUTS': {**standard_component_specs.TrainerSpec.INPUTS,
                   WARM_START_MODEL: ChannelParameter(type=standard_artifacts.Model, optional=True)}})


class StagedTrainer(base_component.BaseComponent):
    """tfx.components.Trainer (run_fn by dotted path) whose stage learning rates and epochs can be
    set per run. `stage_values` maps stage_parameter(name, field) to a number or RuntimeParameter."""

    SPEC_CLASS = standard_component_specs.TrainerSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(StagedTrainerExecutor)

    def __init__(self, examples: types.BaseChannel, transform_graph: types.BaseChannel,
                 schema: types.BaseChannel, base_model: types.BaseChannel, run_fn: str,
                 train_args: trainer_pb2.TrainArgs, eval_args: trainer_pb2.EvalArgs, custom_config: dict,
                 stage_values: Optional[dict[str, Any]] = None,
                 warm_start_model: Optional[types.BaseChannel] = None,
                 hyperparameters: Optional[types.BaseChannel] = None):
        stage_values = stage_values or {}
        known = {stage_parameter(s['name'], f): f for s in _stages(custom_config) for f in _FIELD_TYPES}
        unknown = sorted(set(stage_values) - set(known))
        if unknown:
            raise ValueError(f'stage parameters {unknown} name no stage field; expected some of {sorted(known)}')
        spec = _spec_class([(name, known[name]) for name in stage_values])(
            examples=examples, transform_graph=transform_graph, schema=schema, base_model=base_model,
            train_args=train_args, eval_args=eval_args, run_fn=run_fn,
            custom_config=json_utils.dumps(custom_config),
            model=types.Channel(type=standard_artifacts.Model),
            model_run=types.Channel(type=standard_artifacts.ModelRun),
            **({WARM_START_MODEL: warm_start_model} if warm_start_model is not None else {}),
            **({standard_component_specs.HYPERPARAMETERS_KEY: hyperparameters} if hyperparameters is not None else {}),
            **stage_values)
        super().__init__(spec=spec)
