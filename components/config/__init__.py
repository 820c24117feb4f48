"""The pipeline's single configuration: one YAML file, overridden by `--set`, validated once.

The schema is pydantic and PyYAML only, so that a bad value is reported in well under a second,
before TensorFlow is imported; it sits below every other package of the repository (the import
layers in pyproject.toml). Each section group has its module; this package exports them all.
Relative paths are resolved against the working directory.
"""

from components.config.base import ConfigError, validate
from components.config.data import PipelineSection, Splits, DataSection, TaskSection, ImageShape
from components.config.model import (SourceTask, PREPROCESSING_MODES, APPLICATION_FAMILIES,
                                     APPLICATION_PREPROCESSING, KerasApplication, BackboneSection,
                                     HeadSection, Augmentation, ModelSection)
from components.config.trainer import (Unfreeze, Schedule, LearningRateFinder, Optimizer, EarlyStopping,
                                       ReduceOnPlateau, Stage, WarmStart, TrainerSection)
from components.config.evaluation import (GATE_METRICS, Floors, ClassFloors, MaxDrop, Slice, DecisionTarget,
                                          EvaluationSection)
from components.config.kubeflow import Resources, ContainerImages, KubeflowSchedule, KubeflowSection
from components.config.root import Config
from components.config.loading import (MAX_CONFIG_BYTES, parse_value, apply_override, read_config_file,
                                       load_config)
from components.config.tuning import SearchRange, TuningSection
from components.config.step_inputs import TransformInputs, TrainerInputs, TunerInputs, WarmStartWeights
