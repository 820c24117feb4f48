"""The default run with the options people fine-tune photos with: augmentation, balanced class
weights and a decision threshold chosen on the eval split for a target recall. On the whole
training split: from the default's 20 examples per class the model does not reach precision 0.8
at recall 0.9 (measured: 0.49-0.72), and the class weights of a 20/20 draw are 1 and 1."""

import json
import os
import types

import numpy as np
import pytest

from components.shared.artifact_files import TRAINING_LOG
from tests.conftest import CONFIG, _records, _run_args, served_and_keras_predictions


pytestmark = pytest.mark.e2e
# Contrast only: on 8x8 digits a 10% translation is a pixel, enough to stop the fine-tuning early.
# The recall floor is 0.7, not the default's 0.8: this module tests how the threshold is chosen,
# carried and applied, not whether it transfers (components/statistics/ does).
OPTIONS = ('data.train_examples_per_class=null', 'model.augmentation={contrast: 0.2}', 'trainer.class_weight=balanced',
           'evaluation.decision_threshold={target_recall: 0.8}', 'evaluation.thresholds.recall=0.7')


@pytest.fixture(scope='module')
def run(tmp_path_factory, run_cli):
    from components.config import load_config

    runs_dir = tmp_path_factory.mktemp('runs')
    result = run_cli(*_run_args(runs_dir, *OPTIONS))
    run_dir = os.path.join(runs_dir, 'digits-finetune')
    records = _records(run_dir)
    with open(os.path.join(records['Trainer'].outputs['model_run'][0].uri, TRAINING_LOG)) as f:
        log = json.load(f)
    return types.SimpleNamespace(result=result, lines=result.stdout.strip().splitlines(), records=records, log=log,
                                 config=load_config(CONFIG, OPTIONS))


def test_run_pushes_and_names_the_threshold_it_chose(run):
    assert run.result.returncode == 0, run.lines[-10:]
    assert run.lines[-1].startswith('pushed: ')
    decision = run.log['decision_threshold']
    from components.statistics import proportions
    from components.shared.artifact_files import LABEL_COUNTS_FILE

    counts_dir = run.records['DataValidationGate'].outputs['label_counts'][0].uri
    with open(os.path.join(counts_dir, LABEL_COUNTS_FILE)) as f:
        positives = json.load(f)['eval']['9']
    # The lower bound is the eval recall's 95% Clopper-Pearson lower end on the eval positives,
    # and the target is met exactly when it reaches 0.8.
    assert decision['target_recall'] == 0.8 and decision['confidence'] == 0.95
    assert decision['eval_positives'] == positives
    caught = round(decision['eval_recall'] * positives)
    bound = proportions.proportion_interval(caught, positives).low
    assert decision['eval_lower_bound'] == pytest.approx(bound)
    assert decision['target_met'] is (bound >= 0.8)
    assert 0 < decision['value'] < 1
    unmet = '' if decision['target_met'] else ' (target not reached; the highest lower bound there)'
    assert (f"decision threshold: {decision['value']:.4f}, chosen on eval for recall >= 0.8 at 95% confidence: "
            f"eval recall {decision['eval_recall']:.4f} (lower bound {bound:.3f} on {positives} positives), "
            f"precision {decision['eval_precision']:.4f}{unmet}") in run.lines


def test_training_log_records_augmentation_and_balanced_class_weights(run):
    assert run.log['augmentation'] == {'contrast': 0.2}
    counts = run.log['train_target_counts']
    assert len(counts) == 2 and counts[1] < counts[0]  # one example in five is a 9
    weights = run.log['class_weight']
    total = sum(counts)
    assert weights == {'0': pytest.approx(total / (2 * counts[0])), '1': pytest.approx(total / (2 * counts[1]))}


def test_pushed_model_serves_the_decision_at_its_threshold_deterministically_without_augmentation(run):
    pushed = run.lines[-1][len('pushed: '):]
    served, keras_predictions, _ = served_and_keras_predictions(run.records, pushed, run.config)
    again, _, _ = served_and_keras_predictions(run.records, pushed, run.config)
    np.testing.assert_array_equal(served['probabilities'], again['probabilities'])
    # The trained Keras model, rebuilt without any augmentation, gives the served probabilities.
    np.testing.assert_allclose(keras_predictions, served['probabilities'], atol=1e-6)
    threshold = run.log['decision_threshold']['value']
    np.testing.assert_array_equal(served['decision'], (served['probabilities'][:, 0] > threshold).astype(np.int64))
    assert 0 < served['decision'].sum() < len(served['decision'])


def test_gate_applies_the_chosen_threshold_on_test(run):
    from components.shared import artifact_files

    pushed = run.lines[-1][len('pushed: '):]
    served, _, _ = served_and_keras_predictions(run.records, pushed, run.config)
    with open(os.path.join(run.records['Evaluator'].outputs['evaluation'][0].uri, artifact_files.GATE_REPORT_JSON)) as f:
        report = json.load(f)
    assert report['decision_threshold']['value'] == run.log['decision_threshold']['value']
    matrix = report['confusion_matrix']
    # The test split's positives (label 9) that the served decision catches, as the gate counted them.
    import tensorflow as tf

    examples_uri = run.records['ImportExampleGen'].outputs['examples'][0].uri
    files = tf.io.gfile.glob(os.path.join(examples_uri, 'Split-test', '*'))
    labels = np.array([tf.train.Example.FromString(r.numpy()).features.feature['label'].int64_list.value[0]
                       for r in tf.data.TFRecordDataset(files, compression_type='GZIP')])
    positive = labels == 9
    assert matrix['true_positives'] == np.sum((served['decision'] == 1) & positive)
    assert matrix['false_positives'] == np.sum((served['decision'] == 1) & ~positive)
    assert any(line.startswith('gate recall: ') for line in run.lines)
