"""The Trainer step's warm start: the production model's weights, found beside its SavedModel."""

import keras
import numpy as np
import pytest
from tfx.types import standard_artifacts

from components.config import HeadSection
from components.nodes import staged_trainer
from components.training import backbone as backbone_lib
from components.training import export
from components.training import network, stage_loop
from components.training.stage_loop_test import SHAPE, _data, _pixels, _stage, model_and_backbone  # noqa: F401 (a fixture)


def test_warm_start_weights_travel_with_the_model_and_restore_it_exactly(model_and_backbone, tmp_path):
    """The weights saved beside the SavedModel (pushed with it) rebuild the trained model, from a
    local directory or object storage (ram:// stands in for gs://)."""
    model, backbone = model_and_backbone
    train, evaluation = _data()
    stage_loop.train_stage(model, backbone, _stage(epochs=1), train, evaluation, steps_per_epoch=2,
                        decision_threshold=0.5, batch_size=16)
    x = _pixels(np.random.default_rng(1), 5)
    expected = model.predict(x, verbose=0)

    production = standard_artifacts.Model()
    production.uri = str(tmp_path / 'production')
    production.set_string_custom_property('production_path', '/serving/17')
    production.set_string_custom_property('production_version', '17')
    assert staged_trainer.warm_start_from([production]) is None  # nothing in production yet
    assert staged_trainer.warm_start_from([]) is None
    for path in (str(tmp_path / 'production' / 'Format-Serving' / export.WARM_START_WEIGHTS),
                 'ram://models/1/' + export.WARM_START_WEIGHTS):
        export.save_weights(model, path)
        keras.utils.set_random_seed(7)
        fresh = network.build_model(backbone_lib.build_digits_cnn(SHAPE), SHAPE, HeadSection(hidden_units=(8,)))
        assert not np.allclose(fresh.predict(x, verbose=0), expected)
        export.load_weights(fresh, path)
        np.testing.assert_array_equal(fresh.predict(x, verbose=0), expected)
    assert staged_trainer.warm_start_from([production]) == {
        'weights': str(tmp_path / 'production' / 'Format-Serving' / export.WARM_START_WEIGHTS),
        'production_path': '/serving/17', 'production_version': '17'}

    # A model of another shape cannot start from them: the error says why.
    other = network.build_model(backbone_lib.build_digits_cnn(SHAPE), SHAPE, HeadSection(hidden_units=(4,)))
    with pytest.raises(ValueError):
        export.load_weights(other, 'ram://models/1/' + export.WARM_START_WEIGHTS)
