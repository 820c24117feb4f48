"""The Trainer's run_fn: fine-tunes a pre-trained backbone in stages and exports a servable model.

Each stage sets which backbone layers train, compiles a fresh optimizer with its own learning
rate and schedule, and fits with Keras callbacks (learning-rate recording, early stopping,
TensorBoard). Everything that happened is written to `training_log.json` in the model-run
artifact.

A stage that trains only the head on a frozen backbone, on images that are not augmented, computes
the backbone's features once and fits the head on them (`FeatureCache`): the frozen backbone is
deterministic (its BatchNorm runs in inference mode), so each epoch would recompute the same
features.
"""

import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
from typing import Optional

import keras
import tensorflow as tf
import tensorflow_transform as tft
from tfx.components.trainer.fn_args_utils import FnArgs
from tfx.dsl.io import fileio

from components.training import backbone as backbone_lib
from components.training import export
from components.statistics import proportions
from components.shared.artifact_files import TRAINING_LOG
from components.config import TrainerInputs, validate
from components.config.tuning import to_trainer_inputs
from components.training.decision_threshold import predicted_probabilities, choose_threshold, eval_summary
from components.training.feature_cache import FeatureCache
from components.training.network import (augmentation_layers, build_model, choose_strategy, deterministic_on_cpu,
                                         use_mixed_precision, with_dtype_policy)
from components.training.stage_loop import train_stages
from components.training.training_data import (balanced_class_weight, batched_dataset, count_records,
                                               subsample_per_target, target_counts)


@dataclasses.dataclass
class TrainingSetup:
    """What every training on one Trainer's (or one search's) data shares: the splits' datasets
    that do not depend on the values a search draws, the backbone's file, the feature cache (so
    that the frozen backbone's features are computed once for all trials), the class counts."""

    fn_args: FnArgs
    transform_output: tft.TFTransformOutput
    train_files: list[str]
    train_examples: int
    eval_data: tf.data.Dataset
    feature_cache: FeatureCache
    backbone_path: str
    target_counts: Optional[list[int]]
    subset_dir: Optional[str]

    def cleanup(self) -> None:
        if self.subset_dir is not None:
            shutil.rmtree(self.subset_dir, ignore_errors=True)


def prepare(fn_args: FnArgs, inputs: TrainerInputs) -> TrainingSetup:
    """The data and backbone every training of `inputs` on `fn_args`'s splits shares."""
    settings, shape = inputs.trainer, inputs.input
    transform_output = tft.TFTransformOutput(fn_args.transform_output)
    schema = transform_output.transformed_metadata.schema
    train_files, subset_dir = fn_args.train_files, None
    if inputs.train_examples_per_class:
        # Few labels (data.train_examples_per_class): the same path, on a file of the drawn examples.
        subset_dir = tempfile.mkdtemp(prefix='train-subset-')
        train_files = [os.path.join(subset_dir, 'train.gz')]
        subsample_per_target(fn_args.train_files, transform_output.transformed_feature_spec(),
                             inputs.train_examples_per_class, settings.seed, train_files[0])
    eval_data = batched_dataset(fn_args, fn_args.eval_files, schema, settings.batch_size, settings.seed, False, shape)
    train_examples = count_records(train_files)
    feature_cache = FeatureCache(
        [batched_dataset(fn_args, train_files, schema, settings.batch_size, settings.seed, False, shape), eval_data],
        train_examples + count_records(fn_args.eval_files))
    counts = None
    if inputs.class_weight is not None:
        counts = target_counts(train_files, transform_output.transformed_feature_spec(), max(2, inputs.num_classes))
    return TrainingSetup(fn_args, transform_output, train_files, train_examples, eval_data, feature_cache,
                         backbone_lib.backbone_file(fn_args.base_model), counts, subset_dir)


def train_model(inputs: TrainerInputs, setup: TrainingSetup, work_dir: str, log_dir: Optional[str] = None,
                stage_callbacks=lambda stage: (), epoch_lines: bool = True) -> tuple[keras.Model, dict]:
    """Builds the model on the backbone (or the model in production's weights) and trains the
    stages of `inputs`; returns the model and its training log (without the eval figures).
    `work_dir`: where completed stages are kept, so that a rerun resumes (train_stages);
    `stage_callbacks`, `epoch_lines`: see train_stages."""
    settings, shape, fn_args = inputs.trainer, inputs.input, setup.fn_args
    keras.utils.set_random_seed(settings.seed)
    deterministic_on_cpu()
    schema = setup.transform_output.transformed_metadata.schema
    augmentation = inputs.augmentation
    augment = augmentation_layers(augmentation, settings.seed)
    train_data = batched_dataset(fn_args, setup.train_files, schema, settings.batch_size, settings.seed, True, shape,
                                 augment)
    # Stages with augment: false read the training images as they are, in the same shuffled order.
    unaugmented_train_data = (None if augment is None else
                              batched_dataset(fn_args, setup.train_files, schema, settings.batch_size, settings.seed,
                                              True, shape))
    steps_per_epoch = settings.steps_per_epoch or math.ceil(setup.train_examples / settings.batch_size)

    backbone_path = setup.backbone_path
    mixed_precision = use_mixed_precision(inputs.mixed_precision, len(tf.config.list_logical_devices('GPU')))
    if mixed_precision:
        keras.mixed_precision.set_global_policy('mixed_float16')
    strategy = choose_strategy()
    with strategy.scope():
        backbone = backbone_lib.load_backbone(backbone_path, inputs.backbone_sha256)
        if inputs.from_scratch:
            # Same architecture, weights drawn afresh from each layer's initializer.
            backbone = keras.models.clone_model(backbone)
        if mixed_precision:
            backbone = with_dtype_policy(backbone, 'mixed_float16')
        model = build_model(backbone, shape, inputs.head, inputs.num_classes)
    # Warm start (trainer.warm_start, and a model in production): its weights, its stage plan.
    warm_start = inputs.warm_start
    stage_plan = settings.stages
    if warm_start:
        try:
            export.load_weights(model, warm_start.weights)
        except ValueError as error:
            raise ValueError(f'warm start from {warm_start.production_path}: its weights do not fit this model '
                             f'(did model.backbone, model.head or model.input change?): {error}') from error
        stage_plan = settings.warm_start.stages

    class_weight, counts = inputs.class_weight, setup.target_counts
    if class_weight == 'balanced':
        class_weight = balanced_class_weight(counts)
    stages = train_stages(model, backbone, stage_plan, train_data, setup.eval_data, steps_per_epoch,
                          inputs.decision_threshold, settings.batch_size, work_dir=work_dir, log_dir=log_dir,
                          class_weight=class_weight, feature_cache=setup.feature_cache,
                          unaugmented_train_data=unaugmented_train_data, stage_callbacks=stage_callbacks,
                          epoch_lines=epoch_lines)
    started_from = (warm_start.model_dump() if warm_start else
                    {'scratch': backbone_path} if inputs.from_scratch else {'backbone': backbone_path})
    log = {'backbone': backbone_path, 'started_from': started_from,
           'batch_size': settings.batch_size, 'strategy': type(strategy).__name__,
           'mixed_precision': mixed_precision,
           'train_examples': setup.train_examples,
           'train_examples_per_class': inputs.train_examples_per_class,
           # model.augmentation, applied to the training images only (None: none).
           'augmentation': augmentation and augmentation.model_dump(exclude_defaults=True),
           # Target (0/1 binary, class index multiclass) -> weight in the loss, and the training
           # split's count of each target it was computed from.
           'class_weight': class_weight, 'train_target_counts': counts, 'stages': stages}
    return model, log


def run_fn(fn_args: FnArgs) -> None:
    """Called by the TFX Trainer: staged fine-tuning from the imported backbone, or from the model
    in production when warm-starting; with a tuning step's (or an imported) HyperParameters
    artifact, with the values it holds."""
    custom_config, tuned = fn_args.custom_config, None
    if fn_args.hyperparameters:
        tuned = fn_args.hyperparameters
        custom_config = to_trainer_inputs(custom_config, tuned['values'])
    inputs = validate(custom_config, TrainerInputs)
    setup = prepare(fn_args, inputs)

    # Same place for every retry of this training (same inputs and config), so a rerun after a
    # crash resumes instead of starting over.
    fingerprint = hashlib.sha256(json.dumps(
        [custom_config, fn_args.train_files, fn_args.transform_output, setup.backbone_path],
        sort_keys=True, default=str).encode()).hexdigest()[:16]
    work_dir = os.path.join(os.path.dirname(os.path.dirname(fn_args.model_run_dir)), 'resume', fingerprint)
    if '://' in work_dir:
        # Object storage (a cluster's pipeline root): Keras writes its weight files with h5py, which
        # needs a local file system, so backups stay on the pod's disk. A retried pod starts over.
        work_dir = os.path.join(tempfile.gettempdir(), 'staged-finetune-resume', fingerprint)
    model, log = train_model(inputs, setup, work_dir, log_dir=os.path.join(fn_args.model_run_dir, 'logs'))
    if tuned is not None:
        # What was searched, the values trained, and where they came from (the search of this run,
        # or an earlier one's imported file).
        log['tuning'] = {**tuned, 'from': inputs.hyperparameters_from}

    # The exported model's figures on the eval split, for choosing a recipe without the test split.
    eval_probabilities, eval_labels = predicted_probabilities(model, setup.eval_data)
    log['eval'] = eval_summary(eval_probabilities, eval_labels)
    decision = None
    if not inputs.classes:
        target = inputs.decision_target
        decision = ({'value': inputs.decision_threshold} if target is None else
                    choose_threshold(eval_probabilities, eval_labels, target, inputs.confidence,
                                     inputs.interval or proportions.DEFAULT_METHOD))
        log['decision_threshold'] = decision
    export.save_serving_model(model, setup.transform_output, inputs.label_feature, fn_args.serving_model_dir,
                              inputs.classes, decision)
    fileio.makedirs(fn_args.model_run_dir)  # may be on object storage
    with fileio.open(os.path.join(fn_args.model_run_dir, TRAINING_LOG), 'w') as f:
        f.write(json.dumps(log, indent=2))
    shutil.rmtree(work_dir, ignore_errors=True)
    setup.cleanup()
