"""The gate on a multiclass model: by the most probable class, per-class and macro floors, bootstrap
intervals, accuracy as a binomial proportion."""


import numpy as np
import pytest

from components.statistics import bootstrap
from components.config import TaskSection
from components.nodes.gate_evaluator_test import _check, _evaluate, _production, _scoring_model, _write_examples


@pytest.fixture(scope='module')
def multiclass_split(tmp_path_factory):
    """60 examples of 3 classes, with probabilities where the most probable class is often right
    but rarely above 0.5, so top-1 and one-vs-rest-at-0.5 decisions differ."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 60)
    scores = rng.dirichlet([2, 2, 2], 60)
    scores[np.arange(60), labels] += 0.3 * rng.random(60)
    scores = (scores / scores.sum(axis=1, keepdims=True)).astype(np.float32)
    return _write_examples(tmp_path_factory.mktemp('multiclass'), {'scores': scores, 'label': labels}), scores, labels


@pytest.mark.slow
def test_multiclass_gate_decides_by_the_most_probable_class_as_scikit_learn_counts(tmp_path, multiclass_split):
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_score, recall_score

    examples, scores, labels = multiclass_split
    classes = (5, 7, 9)
    candidate = _scoring_model(tmp_path / 'candidate', classes=classes)
    report, _, _ = _evaluate(
        tmp_path, examples, candidate, _production(tmp_path, tmp_path / 'serving'),
        {'thresholds': {'recall': 0.1, 'accuracy': 0.0}, 'class_thresholds': {9: {'precision': 0.99}}},
        task=TaskSection(type='multiclass', classes=classes), classes=classes)
    predicted = scores.argmax(axis=1)
    # The decisions differ from one-vs-rest at 0.5, so this test can tell them apart.
    assert (scores.max(axis=1) <= 0.5).sum() > 10
    recalls = recall_score(labels, predicted, average=None)
    precisions = precision_score(labels, predicted, average=None)
    for index, label in enumerate(classes):
        assert report['metrics']['Overall']['candidate'][f'recall[class {label}]'] == pytest.approx(recalls[index], abs=1e-6)
        assert report['metrics']['Overall']['candidate'][f'precision[class {label}]'] == pytest.approx(precisions[index], abs=1e-6)
    macro = _check(report, 'macro recall')
    assert macro['value'] == pytest.approx(recall_score(labels, predicted, average='macro'), abs=1e-6) and macro['passed']
    assert _check(report, 'precision[class 9]')['passed'] is False and report['blessed'] is False
    accuracy = _check(report, 'accuracy')
    assert accuracy['value'] == pytest.approx(accuracy_score(labels, predicted), abs=1e-6)
    assert accuracy['passed'] and accuracy['reason'] is None
    np.testing.assert_array_equal(np.array(report['confusion_matrix']['counts']), confusion_matrix(labels, predicted))


@pytest.mark.slow
@pytest.mark.parametrize('floor, passes', [(0.0, True), (1.0, False)])
def test_multiclass_accuracy_floor_is_checked_by_tfma(tmp_path, multiclass_split, floor, passes):
    examples, scores, labels = multiclass_split
    classes = (5, 7, 9)
    report, blessing, _ = _evaluate(
        tmp_path, examples, _scoring_model(tmp_path / 'candidate', classes=classes),
        _production(tmp_path, tmp_path / 'serving'), {'thresholds': {'accuracy': floor}},
        task=TaskSection(type='multiclass', classes=classes), classes=classes)
    accuracy = _check(report, 'accuracy')
    assert accuracy['passed'] is passes and report['blessed'] is passes and accuracy['reason'] is None
    assert blessing.get_int_custom_property('blessed') == int(passes)
    assert report['checks'] == [accuracy]


@pytest.mark.slow
def test_multiclass_intervals_are_the_bootstrap_of_the_examples_and_accuracy_is_binomial(tmp_path, multiclass_split):
    from statsmodels.stats.proportion import proportion_confint


    examples, scores, labels = multiclass_split
    classes = (5, 7, 9)
    report, _, _ = _evaluate(
        tmp_path, examples, _scoring_model(tmp_path / 'candidate', classes=classes),
        _production(tmp_path, tmp_path / 'serving'),
        {'thresholds': {'recall': 0.1, 'precision': 0.1, 'accuracy': 0.2}, 'class_thresholds': {9: {'recall': 0.2}}},
        task=TaskSection(type='multiclass', classes=classes), classes=classes, confidence=0.9)
    values = np.asarray(classes)
    actual, predicted = values[labels], values[scores.argmax(axis=1)]
    # The gate resamples the examples in (actual, predicted) order, as the confusion matrix lists them.
    order = np.lexsort((predicted, actual))
    expected = bootstrap.bootstrap_class_metrics(actual[order], predicted[order], classes, 0.9)
    as_read = bootstrap.bootstrap_class_metrics(actual, predicted, classes, 0.9)
    for name in ('macro recall', 'macro precision', 'recall[class 9]'):
        check = _check(report, name)
        assert check['rule'] == 'lower bound'
        assert (check['interval']['low'], check['interval']['high']) == (expected[name].low, expected[name].high)
        assert check['passed'] is (expected[name].low >= check['threshold'])
        # Another order of the same examples draws other resamples of the same distribution.
        assert check['interval']['low'] == pytest.approx(as_read[name].low, abs=0.03)
    accuracy = _check(report, 'accuracy')
    correct = int(np.sum(scores.argmax(axis=1) == labels))
    low, high = proportion_confint(correct, 60, alpha=0.1, method='beta')
    assert (accuracy['interval']['low'], accuracy['interval']['high']) == pytest.approx((low, high), abs=1e-6)
