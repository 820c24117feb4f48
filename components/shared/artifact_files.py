"""The names of the files the pipeline's steps write into their output artifacts.

This module imports nothing, so that light readers (`history`, the summary, compare) name the
files without loading TensorFlow or TFMA.
"""

# The Trainer's record of the training, in its model_run artifact (components.training.run_fn).
TRAINING_LOG = 'training_log.json'
# The release gate's decision, in the Evaluator's evaluation artifact (components.gate.gate_report).
GATE_REPORT_JSON = 'gate_report.json'
GATE_REPORT_HTML = 'gate_report.html'
# The examples per split and class, in the data gate's label_counts artifact (components.nodes.data_gate).
LABEL_COUNTS_FILE = 'label_counts.json'
