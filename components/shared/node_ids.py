"""The ids of the pipeline's nodes (pipeline.pipeline builds them), as ML Metadata and Kubeflow name
them. This module imports nothing, so that light readers (`history`, the summary, the run report)
find a node's outputs without loading TFX."""

EXAMPLE_GEN = 'ImportExampleGen'
STATISTICS_GEN = 'StatisticsGen'
SCHEMA_GEN = 'SchemaGen'
EXAMPLE_VALIDATOR = 'ExampleValidator'
DATA_GATE = 'DataValidationGate'
TRANSFORM = 'Transform'
PRODUCTION_MODEL = 'ProductionModel'
BACKBONE_IMPORTER = 'backbone_importer'
TRAINER = 'Trainer'
EVALUATOR = 'Evaluator'
PUSHER = 'Pusher'
RUN_REPORT = 'RunReport'

# Every node of the production pipeline, in the order it runs.
ALL = (EXAMPLE_GEN, STATISTICS_GEN, SCHEMA_GEN, EXAMPLE_VALIDATOR, DATA_GATE, TRANSFORM, PRODUCTION_MODEL,
       BACKBONE_IMPORTER, TRAINER, EVALUATOR, PUSHER, RUN_REPORT)

# With a `tuning` section: the search (its first worker, whose output the Trainer takes), the
# further workers of a parallel search (TUNING_WORKER + 1, 2, ...), or the importer of an earlier
# search's values (tuning.reuse).
TUNER = 'Tuner'
TUNING_WORKER = 'TuningWorker'
HYPERPARAMETERS_IMPORTER = 'hyperparameters_importer'
