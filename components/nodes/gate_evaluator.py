"""GateEvaluator: TFMA's Evaluator, then the release gate decided on intervals and paired tests
(components.gate), written as the gate report and the blessing."""

import json
import os
from typing import Any, Optional

import numpy as np
import tensorflow_model_analysis as tfma
from absl import logging
from tfx import types
from tfx.components.evaluator import constants as evaluator_constants
from tfx.components.evaluator import executor as evaluator_executor
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.dsl.io import fileio
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ExecutionParameter
from tfx.utils import io_utils, json_utils, path_utils, proto_utils

from components.training import export, features
from components.gate import tfma_checks, gate_decision, gate_report
from components.statistics import proportions
from components.nodes.production_model import has_serving_model
from components.shared.release_keys import GATED_AGAINST, PRODUCTION_PATH, PRODUCTION_VERSION
from components.config import GATE_METRICS


def floor_parameter(metric: str) -> str:
    """The GateEvaluator exec property (and run parameter) that sets the floor of `metric`."""
    return f'{metric}_floor'


class GateEvaluatorSpec(standard_component_specs.EvaluatorSpec):
    PARAMETERS = {
        **standard_component_specs.EvaluatorSpec.PARAMETERS,
        # JSON list of label values in the model's output order (multiclass), [] for binary.
        'classes': ExecutionParameter(type=str),
        # Floors given as run parameters (e.g. from the Kubeflow run form); they replace the
        # eval_config's floors of the same metric. None: the eval_config's floor stands.
        **{floor_parameter(m): ExecutionParameter(type=float, optional=True) for m in GATE_METRICS},
        # evaluation.confidence (None: TFMA's point verdicts decide) and evaluation.interval.
        'confidence': ExecutionParameter(type=float, optional=True),
        'interval': ExecutionParameter(type=str, optional=True),
    }


def score_examples(examples: types.Artifact, split: str, candidate_path: str, production_path: str,
                   eval_config: tfma.EvalConfig, threshold: float, classes: tuple[int, ...]) -> gate_decision.Predictions:
    """Both SavedModels' decisions on every example of `split`, as TFMA makes them under
    `eval_config`: binary, the prediction key above `threshold`; multiclass, the most probable
    class. Labels come from the candidate's `transform_features` (TFMA's label), slice values from
    the raw examples."""
    import tensorflow as tf

    files = sorted(fileio.glob(os.path.join(artifact_utils.get_split_uri([examples], split), '*')))
    compression = 'GZIP' if files and all(f.endswith('.gz') for f in files) else ''
    dataset = tf.data.TFRecordDataset(files, compression_type=compression).batch(256)
    key = eval_config.model_specs[0].prediction_key
    candidate = tf.saved_model.load(candidate_path)
    production = tf.saved_model.load(production_path)
    slice_features = sorted({f for spec in eval_config.slicing_specs
                             for f in list(spec.feature_keys) + list(spec.feature_values)})
    labels, decided, slices = [], {'candidate': [], 'production': []}, {f: [] for f in slice_features}
    for batch in dataset:
        labels.append(_call(candidate, 'transform_features', batch)[features.LABEL_KEY].numpy().reshape(-1))
        for name, model in (('candidate', candidate), ('production', production)):
            scores = _call(model, 'serving_default', batch)[key].numpy()
            decided[name].append(np.argmax(scores, axis=-1) if classes else (scores.reshape(-1) > threshold).astype(np.int64))
        for record in batch.numpy() if slice_features else ():
            feature = tf.train.Example.FromString(record).features.feature
            for name in slice_features:
                slices[name].append(_slice_value(feature[name]) if name in feature else '')
    labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    candidate_decided, production_decided = (np.concatenate(decided[m]) if decided[m] else np.zeros(0, np.int64)
                                             for m in ('candidate', 'production'))
    if classes:  # class indices -> label values
        lookup = np.asarray(classes, np.int64)
        labels, candidate_decided, production_decided = lookup[labels], lookup[candidate_decided], lookup[production_decided]
    return gate_decision.Predictions(labels, candidate_decided, production_decided,
                                     {k: np.asarray(v) for k, v in slices.items()})


def _call(model, signature: str, serialized):
    """A signature of one serialized-examples input, whatever its input is named (as TFMA calls it)."""
    function = model.signatures[signature]
    [name] = function.structured_input_signature[1]
    return function(**{name: serialized})


def _slice_value(feature) -> str:
    """A raw feature's first value as TFMA names its slice ('feature:value')."""
    kind = feature.WhichOneof('kind')
    values = getattr(feature, kind).value if kind else ()
    if not values:
        return ''
    value = values[0]
    return value.decode('utf-8', 'replace') if isinstance(value, bytes) else str(value)


def _write_blessing(blessing: types.Artifact, blessed: bool) -> None:
    """The Evaluator's blessing (file and `blessed` property, which the Pusher reads) set to `blessed`."""
    for name in (evaluator_constants.BLESSED_FILE_NAME, evaluator_constants.NOT_BLESSED_FILE_NAME):
        path = os.path.join(blessing.uri, name)
        if fileio.exists(path):
            fileio.remove(path)
    name = evaluator_constants.BLESSED_FILE_NAME if blessed else evaluator_constants.NOT_BLESSED_FILE_NAME
    io_utils.write_string_file(os.path.join(blessing.uri, name), '')
    blessing.set_int_custom_property(evaluator_constants.ARTIFACT_PROPERTY_BLESSED_KEY,
                                     evaluator_constants.BLESSED_VALUE if blessed else evaluator_constants.NOT_BLESSED_VALUE)


class GateEvaluatorExecutor(evaluator_executor.Executor):
    """TFX's Evaluator (TFMA computes the metrics and a point verdict), plus: an empty baseline
    (nothing in production yet) is dropped, so only the floors apply; with a confidence, each check
    is decided again on its interval and by the paired test against production
    (components.gate.gate_decision), and that verdict is the blessing; and the gate report is written
    next to the evaluation."""

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        floors = {m: exec_properties[floor_parameter(m)] for m in GATE_METRICS
                  if exec_properties.get(floor_parameter(m)) is not None}
        if floors:
            config_key = standard_component_specs.EVAL_CONFIG_KEY
            config = proto_utils.json_to_proto(exec_properties[config_key], tfma.EvalConfig())
            exec_properties = {**exec_properties,
                               config_key: proto_utils.proto_to_json(tfma_checks.with_floors(config, floors))}
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
        # What the Pusher compares production with before it pushes (AtomicPusherExecutor).
        blessing = artifact_utils.get_single_instance(output_dict[standard_component_specs.BLESSING_KEY])
        blessing.set_string_custom_property(GATED_AGAINST, baseline['version'] if baseline else '')

        evaluation_uri = artifact_utils.get_single_uri(output_dict[standard_component_specs.EVALUATION_KEY])
        splits = json_utils.loads(exec_properties.get(standard_component_specs.EXAMPLE_SPLITS_KEY) or 'null') or ['eval']
        candidate = artifact_utils.get_single_instance(input_dict[standard_component_specs.MODEL_KEY])
        candidate_path = path_utils.serving_model_path(candidate.uri)
        classes = tuple(json.loads(exec_properties['classes']))
        confidence = exec_properties.get('confidence')
        method = exec_properties.get('interval') or proportions.DEFAULT_METHOD
        evaluation = gate_report.load_evaluation(evaluation_uri, classes)
        predictions = None
        if confidence is not None and baseline and any(c.kind == 'max_drop' for c in evaluation.checks):
            overall = evaluation.metrics.get(tfma_checks.OVERALL)
            threshold = overall.confusion_matrix['threshold'] if overall and overall.confusion_matrix else 0.0
            production = artifact_utils.get_single_instance(input_dict[standard_component_specs.BASELINE_MODEL_KEY])
            predictions = score_examples(
                artifact_utils.get_single_instance(input_dict[standard_component_specs.EXAMPLES_KEY]), splits[0],
                candidate_path, path_utils.serving_model_path(production.uri), evaluation.config, threshold, classes)
            gate_decision.check_counts(predictions, evaluation.metrics)
        report = gate_report.build_report(evaluation, classes, ','.join(splits), baseline,
                                          export.read_decision_threshold(candidate_path), confidence, method,
                                          predictions)
        if report['blessed'] != report['tfma_blessed']:
            logging.info('Gate at %s confidence: %s (TFMA point verdict: %s).', confidence,
                         'blessed' if report['blessed'] else 'not blessed',
                         'blessed' if report['tfma_blessed'] else 'not blessed')
        _write_blessing(blessing, report['blessed'])
        logging.info('Gate report: %s', gate_report.write_report(evaluation_uri, report))


class GateEvaluator(base_beam_component.BaseBeamComponent):
    """tfx.components.Evaluator with the behaviour of GateEvaluatorExecutor."""

    SPEC_CLASS = GateEvaluatorSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(GateEvaluatorExecutor)

    def __init__(self, examples: types.BaseChannel, model: types.BaseChannel, baseline_model: types.BaseChannel,
                 eval_config, example_splits: list[str], classes: tuple[int, ...] = (),
                 floors: Optional[dict[str, Any]] = None, confidence: Optional[float] = None,
                 interval: str = proportions.DEFAULT_METHOD):
        """`floors`: gate metric -> floor replacing the eval_config's (a number or a RuntimeParameter).
        `confidence`, `interval`: evaluation.confidence and evaluation.interval."""
        super().__init__(spec=GateEvaluatorSpec(
            examples=examples, model=model, baseline_model=baseline_model, eval_config=eval_config,
            example_splits=json_utils.dumps(example_splits), classes=json.dumps(list(classes)),
            interval=interval, **({} if confidence is None else {'confidence': confidence}),
            **{floor_parameter(m): v for m, v in (floors or {}).items()},
            evaluation=types.Channel(type=standard_artifacts.ModelEvaluation),
            blessing=types.Channel(type=standard_artifacts.ModelBlessing)))
