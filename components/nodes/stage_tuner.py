"""The tuning step: searches the values of `tuning.space` by training the stages on the training
split and scoring them on the eval split (components/training/tuning.py), and outputs TFX's
HyperParameters artifact, which the Trainer trains with.

Its spec is TFX's TunerSpec (the Tuner component's inputs and outputs: examples, schema,
transform_graph, base_model -> best_hyperparameters, tuner_results) with the worker's index. TFX's
own Tuner runs a KerasTuner tuner's `search`, which fits one model once; the stages of a
fine-tune (a fresh optimizer, other layers unfrozen, each stage's own schedule) and one feature
cache across trials need the search to drive the Trainer's own code, so the executor is ours.

Workers of a parallel search (`tuning.parallel_trials`) are copies of the step with index 1, 2, ...
sharing one study through `tuning.storage`; the step with index 0 also waits for their trials
and writes the winner. Each worker reads the train and eval splits only (train_args, eval_args).
"""

import hashlib
import json
import os
import tempfile

from tfx import types
from tfx.components.trainer import fn_args_utils
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.proto import trainer_pb2, tuner_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ExecutionParameter
from tfx.utils import json_utils

from components.config import TunerInputs, validate
from components.config.tuning import storage_url

WORKER_INDEX = 'worker_index'
BEST_HYPERPARAMETERS = standard_component_specs.BEST_HYPERPARAMETERS_KEY
TUNER_RESULTS = standard_component_specs.TUNER_RESULTS_KEY
STUDY_FILE = 'study.db'


class StageTunerSpec(standard_component_specs.TunerSpec):
    PARAMETERS = {**standard_component_specs.TunerSpec.PARAMETERS,
                  # 0: the worker that writes the winner; 1, 2, ...: further workers of a parallel search.
                  WORKER_INDEX: ExecutionParameter(type=int, optional=True)}


def search_fingerprint(custom_config: dict, fn_args) -> str:
    """The same for every retry and every worker of one search (same inputs and config): names its
    study, so a rerun after a crash finds the trials that finished and workers find each other.
    The budget (trials, max_seconds) is left out: raising it continues the same study."""
    search = {k: v for k, v in custom_config['tuning'].items() if k not in ('trials', 'max_seconds')}
    return hashlib.sha256(json.dumps(
        [{**custom_config, 'tuning': search}, fn_args.train_files, fn_args.eval_files, fn_args.transform_output,
         fn_args.base_model], sort_keys=True, default=str).encode()).hexdigest()[:16]


def study_url(best_dir: str, fingerprint: str) -> str:
    """SQLite file of the study of a search with one worker: beside the step's outputs; on object
    storage (a cluster's pipeline root), on the pod's disk."""
    directory = os.path.join(os.path.dirname(os.path.dirname(best_dir)), 'resume', fingerprint)
    if '://' in directory:
        directory = os.path.join(tempfile.gettempdir(), 'staged-finetune-tuning', fingerprint)
    os.makedirs(directory, exist_ok=True)
    return 'sqlite:///' + os.path.abspath(os.path.join(directory, STUDY_FILE))


class StageTunerExecutor(base_executor.BaseExecutor):

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        # Here, not at the top: building the DAG need not import Optuna and TensorFlow Transform.
        from components.training import tuning

        fn_args = fn_args_utils.get_common_fn_args(input_dict, exec_properties, working_dir=self._get_tmp_dir())
        # The field run_fn reads, as the Trainer's executor sets it.
        fn_args.transform_output = fn_args.transform_graph_path
        custom_config = json_utils.loads(exec_properties[standard_component_specs.CUSTOM_CONFIG_KEY])
        inputs = validate(custom_config, TunerInputs)
        worker = exec_properties.get(WORKER_INDEX) or 0
        best_dir = artifact_utils.get_single_uri(output_dict[BEST_HYPERPARAMETERS])
        results_dir = artifact_utils.get_single_uri(output_dict[TUNER_RESULTS])
        shared = inputs.tuning.storage is not None
        fingerprint = search_fingerprint(custom_config, fn_args)
        url = storage_url(inputs.tuning.storage, os.environ) if shared else study_url(best_dir, fingerprint)
        result = tuning.search(fn_args, custom_config['trainer'], inputs.tuning, inputs.objective, url,
                               f'stages-{fingerprint}', shared, choose=worker == 0)
        if result is None:
            return
        best, rows = result
        # What the search read: the splits its trials trained and were scored on.
        best['read'] = {'train': list(fn_args.train_files), 'eval': list(fn_args.eval_files)}
        tuning.write_outputs(best_dir, results_dir, best, rows)


class StageTuner(base_component.BaseComponent):
    """The search of `tuning.space` (TunerSpec's channels; see the module docstring)."""

    SPEC_CLASS = StageTunerSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(StageTunerExecutor)

    def __init__(self, examples: types.BaseChannel, transform_graph: types.BaseChannel, schema: types.BaseChannel,
                 base_model: types.BaseChannel, custom_config: dict, parallel_trials: int = 1,
                 worker_index: int = 0):
        spec = StageTunerSpec(
            examples=examples, transform_graph=transform_graph, schema=schema, base_model=base_model,
            train_args=trainer_pb2.TrainArgs(splits=['train']), eval_args=trainer_pb2.EvalArgs(splits=['eval']),
            tune_args=tuner_pb2.TuneArgs(num_parallel_trials=parallel_trials),
            custom_config=json_utils.dumps(custom_config), worker_index=worker_index,
            best_hyperparameters=types.Channel(type=standard_artifacts.HyperParameters),
            tuner_results=types.Channel(type=standard_artifacts.TunerResults))
        super().__init__(spec=spec)
