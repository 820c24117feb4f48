"""From candidate to production: the model in production as the gate's baseline, the Evaluator that
writes the gate report, and a Pusher whose push is atomic.

The baseline is whatever the Pusher last put in the serving directory (only blessed models get
there), looked up by an ordinary component. A TFX Resolver would do it from ML Metadata, but the
open-source Kubeflow Pipelines backend rejects resolver nodes, and a component that reads the
serving directory behaves the same on every orchestrator.
"""

import json
import os
import re
import time
from typing import Any, Optional

import tensorflow_model_analysis as tfma
from absl import logging
from tfx import types
from tfx.components.evaluator import executor as evaluator_executor
from tfx.components.pusher import component as pusher_component
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.components.base import base_beam_component, base_component, base_executor, executor_spec
from tfx.dsl.io import fileio
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter
from tfx.utils import io_utils, json_utils, path_utils, proto_utils

from components import export, gate, gate_report, storage
from pipeline.config import GATE_METRICS

_VERSION = re.compile(r'^\d+$')
_STAGING_PREFIX = '.partial-'
# Custom properties of the ProductionModel output.
PRODUCTION_PATH = 'production_path'
PRODUCTION_VERSION = 'production_version'
# Exec property of ProductionModel. The serving directory changes under the orchestrator's cache,
# so the runner supplies a key that stands for what production holds: a run id (never cached),
# or pipeline.local_runner.production_cache_key.
CACHE_KEY = 'cache_key'
# Custom property of a PushedModel that was not pushed because the same files are already the
# newest version: that version's path.
ALREADY_IN_PRODUCTION = 'already_in_production'


def floor_parameter(metric: str) -> str:
    """The GateEvaluator exec property (and run parameter) that sets the floor of `metric`."""
    return f'{metric}_floor'


def latest_version(serving_dir: str) -> Optional[str]:
    """The newest complete model version under `serving_dir` (numeric directory names, as TF
    Serving reads them), or None. Staging directories of a push in progress are not versions."""
    if not fileio.isdir(serving_dir):
        return None
    versions = [name.rstrip('/') for name in fileio.listdir(serving_dir)]
    versions = [v for v in versions if _VERSION.match(v)
                and fileio.exists(os.path.join(serving_dir, v, 'saved_model.pb'))]
    return max(versions, key=int) if versions else None


def has_serving_model(model: types.Artifact) -> bool:
    return fileio.exists(os.path.join(path_utils.serving_model_path(model.uri), 'saved_model.pb'))


class ProductionModelSpec(ComponentSpec):
    PARAMETERS = {
        'serving_dir': ExecutionParameter(type=str),
        # Only for the orchestrator's cache, which answers for this step when the key, the
        # component and the examples are those of an earlier execution (see CACHE_KEY).
        CACHE_KEY: ExecutionParameter(type=str, optional=True),
    }
    # The run's data: new data always reads production again.
    INPUTS = {'examples': ChannelParameter(type=standard_artifacts.Examples, optional=True)}
    OUTPUTS = {'model': ChannelParameter(type=standard_artifacts.Model)}


class ProductionModelExecutor(base_executor.BaseExecutor):
    """Copies the newest model in the serving directory into the output Model artifact (left empty,
    with production_path '', when nothing has been pushed yet)."""

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        model = artifact_utils.get_single_instance(output_dict['model'])
        serving_dir = exec_properties['serving_dir']
        version = latest_version(serving_dir)
        if version is None:
            logging.info('No model in production under %s: the gate applies its floors only.', serving_dir)
            model.set_string_custom_property(PRODUCTION_PATH, '')
            return
        source = os.path.join(serving_dir, version)
        io_utils.copy_dir(source, path_utils.serving_model_path(model.uri))
        model.set_string_custom_property(PRODUCTION_PATH, source)
        model.set_string_custom_property(PRODUCTION_VERSION, version)
        logging.info('Model in production: %s', source)


class ProductionModel(base_component.BaseComponent):
    """Outputs the model in production (the latest pushed to `serving_dir`) as a Model artifact."""

    SPEC_CLASS = ProductionModelSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(ProductionModelExecutor)

    def __init__(self, serving_dir: str, examples: Optional[types.BaseChannel] = None, cache_key: Any = None):
        super().__init__(spec=ProductionModelSpec(
            serving_dir=serving_dir, examples=examples, cache_key=cache_key,
            model=types.Channel(type=standard_artifacts.Model)))


class GateEvaluatorSpec(standard_component_specs.EvaluatorSpec):
    PARAMETERS = {
        **standard_component_specs.EvaluatorSpec.PARAMETERS,
        # JSON list of label values in the model's output order (multiclass), [] for binary.
        'classes': ExecutionParameter(type=str),
        # Floors given as run parameters (e.g. from the Kubeflow run form); they replace the
        # eval_config's floors of the same metric. None: the eval_config's floor stands.
        **{floor_parameter(m): ExecutionParameter(type=float, optional=True) for m in GATE_METRICS},
    }


class GateEvaluatorExecutor(evaluator_executor.Executor):
    """TFX's Evaluator (TFMA decides and blesses), plus: an empty baseline (nothing in production
    yet) is dropped, so only the floors apply; and the gate report is written next to the evaluation."""

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        floors = {m: exec_properties[floor_parameter(m)] for m in GATE_METRICS
                  if exec_properties.get(floor_parameter(m)) is not None}
        if floors:
            config_key = standard_component_specs.EVAL_CONFIG_KEY
            config = proto_utils.json_to_proto(exec_properties[config_key], tfma.EvalConfig())
            exec_properties = {**exec_properties,
                               config_key: proto_utils.proto_to_json(gate.with_floors(config, floors))}
            logging.info('Floors from run parameters: %s', floors)
        key = standard_component_specs.BASELINE_MODEL_KEY
        baseline = None
        if input_dict.get(key):
            artifact = artifact_utils.get_single_instance(input_dict[key])
            if has_serving_model(artifact):
                baseline = {'path': artifact.get_string_custom_property(PRODUCTION_PATH),
                            'version': artifact.get_string_custom_property(PRODUCTION_VERSION)}
            else:
                input_dict = {k: v for k, v in input_dict.items() if k != key}
        super().Do(input_dict, output_dict, exec_properties)

        evaluation_uri = artifact_utils.get_single_uri(output_dict[standard_component_specs.EVALUATION_KEY])
        splits = json_utils.loads(exec_properties.get(standard_component_specs.EXAMPLE_SPLITS_KEY) or 'null')
        candidate = artifact_utils.get_single_instance(input_dict[standard_component_specs.MODEL_KEY])
        report = gate_report.build_report(evaluation_uri, tuple(json.loads(exec_properties['classes'])),
                                          ','.join(splits or ['eval']), baseline,
                                          export.read_decision_threshold(path_utils.serving_model_path(candidate.uri)))
        logging.info('Gate report: %s', gate_report.write_report(evaluation_uri, report))


class GateEvaluator(base_beam_component.BaseBeamComponent):
    """tfx.components.Evaluator with the behaviour of GateEvaluatorExecutor."""

    SPEC_CLASS = GateEvaluatorSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(GateEvaluatorExecutor)

    def __init__(self, examples: types.BaseChannel, model: types.BaseChannel, baseline_model: types.BaseChannel,
                 eval_config, example_splits: list[str], classes: tuple[int, ...] = (),
                 floors: Optional[dict[str, Any]] = None):
        """`floors`: gate metric -> floor replacing the eval_config's (a number or a RuntimeParameter)."""
        super().__init__(spec=GateEvaluatorSpec(
            examples=examples, model=model, baseline_model=baseline_model, eval_config=eval_config,
            example_splits=json_utils.dumps(example_splits), classes=json.dumps(list(classes)),
            **{floor_parameter(m): v for m, v in (floors or {}).items()},
            evaluation=types.Channel(type=standard_artifacts.ModelEvaluation),
            blessing=types.Channel(type=standard_artifacts.ModelBlessing)))


def push_atomically(model_path: str, base_directory: str) -> tuple[str, str]:
    """Copies the SavedModel at `model_path` to `<base_directory>/<version>` so that no reader ever
    sees it half-written: it is copied into a staging directory that is not a version (TF Serving
    and latest_version skip it) and renamed into place, one atomic step on a local or POSIX file
    system. Versions are Unix seconds, strictly increasing. Returns (version, destination).
    """
    fileio.makedirs(base_directory)
    for name in fileio.listdir(base_directory):
        if name.startswith(_STAGING_PREFIX):  # left by a push that was killed
            fileio.rmtree(os.path.join(base_directory, name))
    latest = latest_version(base_directory)
    version = str(max(int(time.time()), int(latest) + 1 if latest else 0))
    staging = os.path.join(base_directory, _STAGING_PREFIX + version)
    destination = os.path.join(base_directory, version)
    io_utils.copy_dir(model_path, staging)
    fileio.rename(staging, destination)
    return version, destination


class AtomicPusherExecutor(pusher_executor.Executor):
    """TFX's Pusher (pushes only a blessed model) with an atomic push to a filesystem destination.

    TFX's own copies straight into the version directory (saved_model.pb last), so a reader listing
    versions can meet a directory still being written.
    """

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination)
        if destination.WhichOneof('destination') != 'filesystem':
            return super().Do(input_dict, output_dict, exec_properties)
        self._log_startup(input_dict, output_dict, exec_properties)
        model_push = artifact_utils.get_single_instance(output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        if not self.CheckBlessing(input_dict):
            self._MarkNotPushed(model_push)
            return None
        model_path = self.GetModelPath(input_dict)
        base_directory = destination.filesystem.base_directory
        latest = latest_version(base_directory)
        if latest is not None and storage.same_files(model_path, os.path.join(base_directory, latest)):
            # A re-evaluation of the model already served (e.g. after a threshold change) passed
            # again; pushing it would only add a copy as a new version.
            logging.info('Model already in production as version %s; not pushed again.', latest)
            self._MarkNotPushed(model_push)
            model_push.set_string_custom_property(ALREADY_IN_PRODUCTION, os.path.join(base_directory, latest))
            return None
        version, path = push_atomically(model_path, base_directory)
        logging.info('Model pushed to %s.', path)
        self._MarkPushed(model_push, pushed_destination=path, pushed_version=version)
        return None


class AtomicPusher(pusher_component.Pusher):
    """tfx.components.Pusher with AtomicPusherExecutor."""

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(AtomicPusherExecutor)
