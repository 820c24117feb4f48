"""A multiclass run of the real pipeline (digits 5-9, one class each), gated on accuracy: a floor of 0
passes and pushes, a floor of 1 fails and does not; the gate's numbers are those scikit-learn
computes from what the pushed model serves."""

import glob
import json
import os
import re
import types

import numpy as np
import pytest

from tests.conftest import _records, _run_args, image_files_and_served

pytestmark = pytest.mark.e2e
MULTICLASS = ('task.type=multiclass', 'task.positive_class=null', 'evaluation.max_drop={}',
              'trainer.stages.0.epochs=4', 'trainer.stages.1.epochs=3')


@pytest.fixture(scope='module')
def runs(tmp_path_factory, run_cli):
    runs_dir = tmp_path_factory.mktemp('runs')
    floor_0 = run_cli(*_run_args(runs_dir, *MULTICLASS, 'evaluation.thresholds={accuracy: 0.0}'))
    run_dir = os.path.join(runs_dir, 'digits-finetune')
    records = _records(run_dir)
    # A floor of 1 cannot be cleared with confidence (the data gate says so before training); on the
    # point rule the gate itself turns the model down.
    floor_1 = run_cli(*_run_args(runs_dir, *MULTICLASS, 'evaluation.thresholds={accuracy: 1.0}',
                                 'evaluation.confidence=null'))
    return types.SimpleNamespace(floor_0=floor_0, floor_1=floor_1, records=records, run_dir=run_dir)


def _lines(result):
    return result.stdout.strip().splitlines()


def test_accuracy_floor_0_passes_and_pushes(runs):
    lines = _lines(runs.floor_0)
    assert runs.floor_0.returncode == 0, lines[-10:]
    [gate_line] = [line for line in lines if line.startswith('gate accuracy: ')]
    assert re.fullmatch(r'gate accuracy: \d\.\d{4} \[\d\.\d{3}, \d\.\d{3}\], lower bound \d\.\d{3} >= floor 0 '
                        r'\(95% Clopper-Pearson, \d+/\d+\) pass \(split test\)', gate_line), gate_line
    assert lines[-1].startswith('pushed: ')


def test_accuracy_floor_1_fails_with_the_value_below_it(runs):
    lines = _lines(runs.floor_1)
    assert runs.floor_1.returncode == 3, lines[-10:]
    [gate_line] = [line for line in lines if line.startswith('gate accuracy: ')]
    value = float(gate_line.split()[2])
    assert value < 1.0 and gate_line.endswith(f'{value:.4f} < 1 (point estimate) FAIL (split test)')
    assert lines[-1] == f'not pushed: accuracy {value:.4f} < 1'


def test_gate_values_are_scikit_learns_on_the_served_predictions(runs):
    import tensorflow as tf
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_score, recall_score

    from components.shared import artifact_files
    from components.reporting import run_summary

    pushed = _lines(runs.floor_0)[-1][len('pushed: '):]
    serve = tf.saved_model.load(pushed).signatures['serving_default']
    examples_dir = run_summary.output_uri(runs.records, 'ImportExampleGen', 'examples')
    files = sorted(glob.glob(os.path.join(examples_dir, 'Split-test', '*')))
    serialized = list(tf.data.TFRecordDataset(files, compression_type='GZIP').as_numpy_iterator())
    labels = np.array([tf.train.Example.FromString(s).features.feature['label'].int64_list.value[0]
                       for s in serialized])
    served = serve(examples=tf.constant(serialized))
    predicted = served['predicted_class'].numpy()
    # The served decision is the most probable class, in task.classes order (digits 5-9).
    classes = np.array([5, 6, 7, 8, 9])
    np.testing.assert_array_equal(predicted, classes[served['probabilities'].numpy().argmax(axis=1)])

    with open(os.path.join(run_summary.output_uri(runs.records, 'Evaluator', 'evaluation'), artifact_files.GATE_REPORT_JSON)) as f:
        report = json.load(f)
    values = report['metrics']['Overall']['candidate']
    assert values['accuracy'] == pytest.approx(accuracy_score(labels, predicted), abs=1e-6)
    recalls = recall_score(labels, predicted, labels=classes, average=None)
    precisions = precision_score(labels, predicted, labels=classes, average=None)
    for label, recall, precision in zip(classes, recalls, precisions):
        assert values[f'recall[class {label}]'] == pytest.approx(recall, abs=1e-6)
        assert values[f'precision[class {label}]'] == pytest.approx(precision, abs=1e-6)
    assert values['macro recall'] == pytest.approx(recalls.mean(), abs=1e-6)
    # The accuracy floor was decided on the Clopper-Pearson interval of the served decisions' count.
    from statsmodels.stats.proportion import proportion_confint

    [accuracy] = [c for c in report['checks'] if c['metric'] == 'accuracy']
    correct = int(np.sum(predicted == labels))
    assert (accuracy['interval']['k'], accuracy['interval']['n']) == (correct, len(labels))
    low, high = proportion_confint(correct, len(labels), alpha=0.05, method='beta')
    assert (accuracy['interval']['low'], accuracy['interval']['high']) == pytest.approx((low, high), abs=1e-6)
    np.testing.assert_array_equal(np.array(report['confusion_matrix']['counts']),
                                  confusion_matrix(labels, predicted, labels=classes))


def test_predict_names_the_most_probable_class_and_every_class_s_probability(runs, run_cli, tmp_path):
    import re

    pushed = _lines(runs.floor_0)[-1][len('pushed: '):]
    files, served = image_files_and_served(runs.run_dir, pushed, tmp_path, 6)
    result = run_cli('predict', *_run_args(os.path.dirname(runs.run_dir), *MULTICLASS)[1:], *files)
    assert result.returncode == 0, result.stderr
    for i, line in enumerate(_lines(result)[1:]):
        match = re.fullmatch(rf'{re.escape(files[i])}: class (\d) \(probabilities: (.*)\)', line)
        assert match, line
        assert int(match[1]) == int(served['predicted_class'][i])
        probabilities = dict(pair.split() for pair in match[2].split(', '))
        assert sorted(probabilities) == ['5', '6', '7', '8', '9']
        for k, label in enumerate((5, 6, 7, 8, 9)):
            assert abs(float(probabilities[str(label)]) - served['probabilities'][i][k]) < 5e-5
