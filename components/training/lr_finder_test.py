"""The learning-rate range test behind `learning_rate: auto`."""


import keras
import numpy as np
import pytest

from components.config import LearningRateFinder, validate
from components.training import lr_finder, stage_loop
from components.training.stage_loop_test import _data, _stage, model_and_backbone  # noqa: F401 (a fixture)


@pytest.mark.slow
def test_auto_learning_rate_runs_a_range_test_and_logs_it(model_and_backbone):
    model, backbone = model_and_backbone
    train, evaluation = _data()
    stage = _stage(epochs=1, optimizer={'name': 'adam', 'learning_rate': 'auto'},
                   lr_finder={'min_lr': 1e-6, 'max_lr': 10.0, 'steps': 30})
    entry = stage_loop.train_stage(model, backbone, stage, train, evaluation,
                                steps_per_epoch=1, decision_threshold=0.5, batch_size=16)
    finder = entry['lr_finder']
    assert 10 <= len(finder['lr']) == len(finder['loss']) <= 30
    # The rate grows exponentially: a constant ratio from step to step.
    ratios = np.array(finder['lr'][1:]) / np.array(finder['lr'][:-1])
    np.testing.assert_allclose(ratios, (10.0 / 1e-6) ** (1 / 30), rtol=1e-3)
    assert entry['learning_rate'] == pytest.approx(finder['min_loss_lr'] / 10)
    assert entry['lr_by_step'][0] == pytest.approx(entry['learning_rate'])


def test_range_test_restores_the_weights(model_and_backbone):
    model, backbone = model_and_backbone
    train, _ = _data()
    before = [np.array(w) for w in model.get_weights()]

    def compile_with(rate):
        model.compile(optimizer=keras.optimizers.Adam(rate), loss='binary_crossentropy')

    lr_finder.find_learning_rate(model, compile_with, train, validate({'steps': 10}, LearningRateFinder))
    for old, new in zip(before, model.get_weights()):
        assert np.array_equal(old, new)
