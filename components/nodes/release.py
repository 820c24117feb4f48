"""From candidate to production: the model in production as the gate's baseline, the Evaluator that
writes the gate report, and a Pusher whose push is atomic.

The baseline is whatever the Pusher last put in the serving directory (only blessed models get
there), looked up by an ordinary component. A TFX Resolver would do it from ML Metadata, but the
open-source Kubeflow Pipelines backend rejects resolver nodes, and a component that reads the
serving directory behaves the same on every orchestrator.
"""

import json
import os
import secrets
import time
from typing import Any, Optional

import numpy as np
import tensorflow_model_analysis as tfma
from absl import logging
from tfx import types
from tfx.components.evaluator import constants as evaluator_constants
from tfx.components.evaluator import executor as evaluator_executor
from tfx.components.pusher import component as pusher_component
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.components.base import base_beam_component, base_component, base_executor, executor_spec
from tfx.dsl.io import filesystem, fileio
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter
from tfx.utils import io_utils, json_utils, path_utils, proto_utils

from components.training import export, features
from components.gate import tfma_checks, gate_decision, gate_report
from components.statistics import proportions
from components.shared import serving_layout, storage
# Re-exported: the property keys are named as release.X; they live in a module that imports
# nothing, for readers of ML Metadata that must not load TensorFlow (pipeline.registry).
from components.shared.release_keys import (ALREADY_IN_PRODUCTION, CACHE_KEY, GATED_AGAINST, PRODUCTION_CHANGED_TO,
                                            PRODUCTION_PATH, PRODUCTION_VERSION, ProductionChanged)
from components.config import GATE_METRICS

_STAGING_PREFIX = '.partial-'
# A push copies one SavedModel, which takes seconds to minutes; no push lasts a day. A staging
# directory whose newest file is older than this was left by a push that was killed.
STALE_STAGING_SECONDS = 24 * 3600



def floor_parameter(metric: str) -> str:
    """The GateEvaluator exec property (and run parameter) that sets the floor of `metric`."""
    return f'{metric}_floor'


def latest_version(serving_dir: str) -> Optional[str]:
    """The newest complete model version under `serving_dir` (serving_layout.versions, on TFX's
    file system), or None."""
    found = serving_layout.versions(serving_dir, fileio.listdir, fileio.exists, fileio.isdir)
    return found[0] if found else None


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
    (components.gate_decision), and that verdict is the blessing; and the gate report is written
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


# push_atomically's `expected_latest` when any newest version will do (None means "none pushed").
_ANY = object()


def push_atomically(model_path: str, base_directory: str, expected_latest=_ANY) -> tuple[str, str]:
    """Copies the SavedModel at `model_path` to `<base_directory>/<version>` so that no reader ever
    sees it half-written, and no two pushes meet. Returns (version, destination).

    * The copy goes to a staging directory of this push's own (`.partial-<pid>-<random>`, not a
      version: TF Serving and latest_version skip it), which is renamed into place. On a local
      or POSIX file system the rename is one atomic step; a failed push removes its staging.
    * Staging directories of other pushes are removed only once their newest file is older than
      STALE_STAGING_SECONDS (a push killed before it could clean up); a younger one may be
      another push still copying.
    * Versions are Unix seconds, above the newest version. The rename never replaces a version:
      when another push took the number first, the next number is tried.
    * `expected_latest` (a version, or None for "nothing pushed"): a compare-and-swap. The push
      happens only if the newest version, read again after the copy, just before the rename, is
      still that one; else ProductionChanged, and nothing is pushed.

    What remains: on a POSIX file system, a push that lands between that last read and this
    push's rename (milliseconds) goes unnoticed by the compare-and-swap; the local run's lock
    (pipeline.run_lock) keeps pushes of one pipeline apart anyway. On an object store (gs://, s3://)
    a rename copies object by object: a version is visible before its last object lands, the
    no-replace check and the copy are separate requests, and the compare-and-swap's window lasts
    as long as the rename copy (seconds for a small model). There one run at a time is
    Kubeflow's `max_concurrency: 1`.
    """
    fileio.makedirs(base_directory)
    _remove_stale_staging(base_directory)
    staging = os.path.join(base_directory, f'{_STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(6)}')
    try:
        io_utils.copy_dir(model_path, staging)
        latest = latest_version(base_directory)
        version = max(int(time.time()), int(latest) + 1 if latest else 0)
        while True:
            if expected_latest is not _ANY and latest != expected_latest:
                raise ProductionChanged(expected_latest, latest)
            destination = os.path.join(base_directory, str(version))
            try:
                fileio.rename(staging, destination, overwrite=False)
                return str(version), destination
            except Exception:  # noqa: BLE001 - each file system says "exists" its own way
                if not fileio.exists(destination):
                    raise
            latest = latest_version(base_directory)
            version = max(version, int(latest) if latest else 0) + 1
    except BaseException:
        _remove(staging)
        raise


def _remove(path: str) -> None:
    try:
        fileio.rmtree(path)
    except filesystem.NotFoundError:  # never created, or removed by another push's cleanup
        pass


def _modified(path: str) -> Optional[float]:
    """Seconds since the epoch `path` was last written (None if it is gone or has no time, like a
    directory on an object store); os.stat's on a local path, tf.io.gfile's elsewhere."""
    try:
        stat = fileio.stat(path)
    except (filesystem.NotFoundError, OSError):
        return None
    nanoseconds = getattr(stat, 'mtime_nsec', None)
    if nanoseconds is None:
        nanoseconds = getattr(stat, 'st_mtime_ns', None)
    return None if nanoseconds is None else nanoseconds / 1e9


def _newest_write(directory: str) -> Optional[float]:
    times = [_modified(directory)]
    for root, _, names in fileio.walk(directory):
        times += [_modified(os.path.join(root, name)) for name in names]
    times = [t for t in times if t is not None]
    return max(times) if times else None


def _remove_stale_staging(base_directory: str) -> None:
    """Removes the staging directories no push can still be writing (see push_atomically)."""
    for name in fileio.listdir(base_directory):
        name = name.rstrip('/')
        if not name.startswith(_STAGING_PREFIX):
            continue
        path = os.path.join(base_directory, name)
        newest = _newest_write(path)
        if newest is not None and time.time() - newest > STALE_STAGING_SECONDS:
            logging.info('Removing %s, left by a push that was killed (last written %s s ago).',
                         path, int(time.time() - newest))
            _remove(path)


class AtomicPusherExecutor(pusher_executor.Executor):
    """TFX's Pusher (pushes only a blessed model) with an atomic push to a filesystem destination,
    and a compare-and-swap: it pushes only if production is still the version the gate compared
    against (GATED_AGAINST on the blessing), else it records PRODUCTION_CHANGED_TO and pushes nothing.

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
        expected = _gated_against(input_dict)
        if expected is not _ANY:
            model_push.set_string_custom_property(GATED_AGAINST, expected or '')
        latest = latest_version(base_directory)
        if latest is not None and storage.same_files(model_path, os.path.join(base_directory, latest)):
            # A re-evaluation of the model already served (e.g. after a threshold change) passed
            # again; pushing it would only add a copy as a new version.
            logging.info('Model already in production as version %s; not pushed again.', latest)
            self._MarkNotPushed(model_push)
            model_push.set_string_custom_property(ALREADY_IN_PRODUCTION, os.path.join(base_directory, latest))
            return None
        if expected is not _ANY and latest != expected:  # checked again just before the rename
            return self._production_changed(model_push, ProductionChanged(expected, latest))
        try:
            version, path = push_atomically(model_path, base_directory, expected_latest=expected)
        except ProductionChanged as changed:
            return self._production_changed(model_push, changed)
        logging.info('Model pushed to %s.', path)
        self._MarkPushed(model_push, pushed_destination=path, pushed_version=version)
        return None

    def _production_changed(self, model_push: types.Artifact, changed: ProductionChanged) -> None:
        logging.warning('Not pushed: %s.', changed)
        self._MarkNotPushed(model_push)
        model_push.set_string_custom_property(PRODUCTION_CHANGED_TO, changed.found or '')
        return None


def _gated_against(input_dict) -> Any:
    """The version in production when the GateEvaluator judged the model (None: nothing was), or
    _ANY for a blessing that does not say (not a GateEvaluator's): then any production will do,
    as for TFX's own Pusher."""
    blessings = input_dict.get(standard_component_specs.MODEL_BLESSING_KEY)
    if not blessings:
        return _ANY
    blessing = artifact_utils.get_single_instance(blessings)
    if not blessing.has_custom_property(GATED_AGAINST):
        return _ANY
    return blessing.get_string_custom_property(GATED_AGAINST) or None


class AtomicPusher(pusher_component.Pusher):
    """tfx.components.Pusher with AtomicPusherExecutor."""

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(AtomicPusherExecutor)
