"""ProductionModel: the model in production, the gate's baseline.

The baseline is whatever the Pusher last put in the serving directory (only blessed models get
there), looked up by an ordinary component. A TFX Resolver would do it from ML Metadata, but the
open-source Kubeflow Pipelines backend rejects resolver nodes, and a component that reads the
serving directory behaves the same on every orchestrator."""

import os
from typing import Any, Optional

from absl import logging
from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.dsl.io import fileio
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter
from tfx.utils import io_utils, path_utils

from components.shared import serving_layout
from components.shared.release_keys import CACHE_KEY, PRODUCTION_PATH, PRODUCTION_VERSION


def has_serving_model(model: types.Artifact) -> bool:
    return fileio.exists(os.path.join(path_utils.serving_model_path(model.uri), serving_layout.SAVED_MODEL))


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


class BrokenProduction(RuntimeError):
    """The model in production is not complete, or its variables do not read back."""


class ProductionModelExecutor(base_executor.BaseExecutor):
    """Copies the newest model in the serving directory into the output Model artifact (left empty,
    with production_path '', when nothing has been pushed yet). A broken one stops the run here,
    named, rather than in the steps that would load it (the Trainer's warm start, the Evaluator)."""

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        model = artifact_utils.get_single_instance(output_dict['model'])
        serving_dir = exec_properties['serving_dir']
        version = serving_layout.latest_version(serving_dir)
        if version is None:
            logging.info('No model in production under %s: the gate applies its floors only.', serving_dir)
            model.set_string_custom_property(PRODUCTION_PATH, '')
            return
        source = os.path.join(serving_dir, version)
        problem = (serving_layout.incomplete(source, serving_layout.tfx_files())
                   or serving_layout.unreadable_variables(source))
        if problem:
            raise BrokenProduction(f'production version {version} is broken ({os.path.join(source, problem)}); roll '
                                   f'back to a complete version (python -m pipeline rollback --to VERSION, where it '
                                   f'runs locally), then run again')
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
