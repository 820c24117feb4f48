import numpy as np
import pytest
import tensorflow as tf

from components.training import export, features


@pytest.mark.parametrize('threshold', [0.5, 0.1, 0.37, 0.93])
def test_binary_outputs_serve_the_decision_and_put_the_threshold_at_half_of_the_gate_scores(threshold):
    rng = np.random.default_rng(0)
    p = np.sort(np.r_[rng.random(500), threshold, np.nextafter(np.float32(threshold), 1), 0.0, 1.0]).astype(np.float32)
    out = export.outputs(tf.constant(p[:, None]), decision_threshold=threshold)
    decision = out[features.DECISION_KEY].numpy()
    scores = out[features.GATE_SCORES_KEY].numpy()[:, 0]
    np.testing.assert_array_equal(decision, (p > np.float32(threshold)).astype(np.int64))
    np.testing.assert_array_equal(scores > 0.5, decision == 1)
    assert np.all(np.diff(scores) >= 0) and scores.min() >= 0.0 and scores.max() <= 1.0
    np.testing.assert_array_equal(out[features.PREDICTION_KEY].numpy(), p[:, None])


def test_multiclass_outputs_serve_the_most_probable_class():
    p = tf.constant([[0.2, 0.5, 0.3], [0.4, 0.35, 0.25]])
    out = export.outputs(p, classes=(5, 7, 9))
    assert out[features.PREDICTED_CLASS_KEY].numpy().tolist() == [7, 5]
    np.testing.assert_allclose(out[features.TOP_CLASS_SCORES_KEY].numpy(), [[0, 0.5, 0], [0.4, 0, 0]])
    assert features.DECISION_KEY not in out
