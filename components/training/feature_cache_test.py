"""A frozen head stage on cached features trains what the uncached stage trains, resumes, and says
why when it does not cache."""

import contextlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from components.training import backbone as backbone_lib
from components.config import HeadSection
from components.training import network, stage_loop
from components.training.feature_cache import FEATURE_CACHE_LIMIT_BYTES, FeatureCache
from components.training.stage_loop_test import SHAPE, _data, _pixels, _stage


def _cached_and_uncached(stage, head, data, cache_limit=FEATURE_CACHE_LIMIT_BYTES):
    """The same model (seed 0) trained through `stage` without and with the feature cache, on the
    same batches (`data()`: fresh (train, eval) datasets); returns ((model, backbone, entry), ...)
    for each path."""
    runs = []
    for cache in (None, 'cache'):
        keras.utils.set_random_seed(0)
        backbone = backbone_lib.build_digits_cnn(SHAPE)
        model = network.build_model(backbone, SHAPE, head)
        train, evaluation = data()
        feature_cache = None if cache is None else FeatureCache([evaluation], 64, limit_bytes=cache_limit)
        entry = stage_loop.train_stage(model, backbone, stage, train, evaluation, steps_per_epoch=4,
                                    decision_threshold=0.5, batch_size=16, feature_cache=feature_cache,
                                    class_weight={0: 1.0, 1: 2.0})
        runs.append((model, backbone, entry))
    return runs


def _shuffled_data(n=64, batch=16):
    """As _data, with the training examples reshuffled every epoch (seeded), as the Trainer reads them."""
    train, evaluation = _data(n, batch)
    return train.unbatch().take(n).shuffle(n, seed=1).repeat().batch(batch), evaluation


@pytest.mark.slow
def test_cached_head_stage_trains_the_same_weights_as_the_uncached_one(capsys):
    """Dropout stays on (0.2): the head's Dropout layer is the same object with the same seed
    generator on both paths, drawing one mask per training step, so the masks match too. The
    training examples are reshuffled every epoch: the cache looks features up by image, so the
    order stays the stage's own."""
    stage = _stage(epochs=3, schedule={'name': 'cosine', 'warmup_steps': 2},
                   early_stopping={'monitor': 'val_loss', 'patience': 5})
    (plain, plain_backbone, plain_entry), (cached, cached_backbone, cached_entry) = _cached_and_uncached(
        stage, HeadSection(hidden_units=(8,), dropout=0.2), _shuffled_data)

    assert plain_entry['feature_cache'] == {'cached': False,
                                            'reason': 'no one-pass datasets of the splits were given'}
    assert cached_entry['feature_cache']['cached'] is True
    assert cached_entry['feature_cache']['examples'] == 64
    assert 'backbone features cached (64 examples' in capsys.readouterr().out
    for layer in ('head_dense_0', 'head_output'):
        for a, b in zip(plain.get_layer(layer).get_weights(), cached.get_layer(layer).get_weights()):
            np.testing.assert_allclose(a, b, atol=1e-5)
    for a, b in zip(plain_backbone.get_weights(), cached_backbone.get_weights()):
        assert np.array_equal(a, b)
    # The same optimizer steps at the same rates, and the same epoch metrics.
    assert cached_entry['lr_by_step'] == pytest.approx(plain_entry['lr_by_step'])
    for a, b in zip(plain_entry['epochs'], cached_entry['epochs']):
        assert a.keys() == b.keys()
        assert [a[k] for k in a] == pytest.approx([b[k] for k in a], abs=1e-4)
    # The full model, as exported, predicts from images with the weights the head learned.
    x = _pixels(np.random.default_rng(1), 4)
    np.testing.assert_allclose(plain.predict({'image_xf': x}, verbose=0), cached.predict({'image_xf': x}, verbose=0),
                               atol=1e-5)


@pytest.mark.slow
def test_feature_cache_says_why_not_when_it_does_not_cache():
    runs = _cached_and_uncached(_stage(epochs=1), HeadSection(hidden_units=(8,)), _data, cache_limit=1000)
    # 64 examples of 64 float32 features are 16 KiB.
    assert runs[1][2]['feature_cache'] == {
        'cached': False, 'reason': 'the features of 64 examples take 0.0156 MiB, above the limit of 0.000954 MiB'}
    keras.utils.set_random_seed(0)
    backbone = backbone_lib.build_digits_cnn(SHAPE)
    model = network.build_model(backbone, SHAPE, HeadSection(hidden_units=(8,)))
    data = _data()
    entry = stage_loop.train_stage(model, backbone, _stage(epochs=1, unfreeze={'top_layers': 2}), *data,
                                steps_per_epoch=4, decision_threshold=0.5, batch_size=16,
                                feature_cache=FeatureCache([data[1]], 64))
    assert entry['feature_cache'] == {
        'cached': False, 'reason': '1 backbone layers train in this stage, so its features change every step'}


@pytest.mark.slow
def test_cached_head_stage_interrupted_resumes_from_its_last_epoch(tmp_path):
    """BackupAndRestore backs up the head-only model the cached stage fits; a rerun resumes there."""

    class CrashInEpochTwo(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    keras.utils.set_random_seed(0)
    backbone = backbone_lib.build_digits_cnn(SHAPE)
    model = network.build_model(backbone, SHAPE, HeadSection(hidden_units=(8,), dropout=0.0))
    train, evaluation = _data()
    run = dict(steps_per_epoch=4, decision_threshold=0.5, batch_size=16, backup_dir=str(tmp_path / 'backup'),
               feature_cache=FeatureCache([evaluation], 64))
    with pytest.raises(KeyboardInterrupt):
        stage_loop.train_stage(model, backbone, _stage(epochs=3), train, evaluation,
                            extra_callbacks=[CrashInEpochTwo()], **run)
    entry = stage_loop.train_stage(model, backbone, _stage(epochs=3), train, evaluation, **run)
    assert entry['feature_cache']['cached'] is True
    assert entry['resumed_at_epoch'] == 2 and entry['epochs_run'] == 2


@pytest.mark.slow
def test_a_plan_with_a_cached_head_stage_trains_the_next_stage_as_the_uncached_plan_does(tmp_path):
    """The stage after a cached head stage starts from the same weights, optimizer-free, and so
    trains the same: the whole plan's weights match the uncached plan's. Compared with TensorFlow's
    default kernels: with op determinism on (as run_fn sets it on CPU, and an earlier test in this
    process may have), the two plans' weights after the second stage differ by up to 0.013."""
    with _default_kernels():
        _plans_train_the_same(tmp_path)


@contextlib.contextmanager
def _default_kernels():
    """Op determinism off for the block, restored after (it is process-wide)."""
    from tensorflow.python.framework import config as tf_config

    was_on = tf_config.is_op_determinism_enabled()
    tf_config.disable_op_determinism()
    try:
        yield
    finally:
        if was_on:
            tf.config.experimental.enable_op_determinism()


def _plans_train_the_same(tmp_path):
    rng = np.random.default_rng(0)
    x, y = _pixels(rng, 64), (rng.random(64) < 0.3).astype(np.int64)
    examples = tf.data.Dataset.from_tensor_slices(({'image_xf': x}, y))
    stages = [_stage(name='head', epochs=3),
              _stage(name='top', epochs=2, unfreeze={'top_layers': 2}, optimizer={'name': 'adam', 'learning_rate': 1e-3})]
    models, entries = [], []
    for cache in (False, True):
        keras.utils.set_random_seed(0)
        backbone = backbone_lib.build_digits_cnn(SHAPE)
        model = network.build_model(backbone, SHAPE, HeadSection(hidden_units=(8,), dropout=0.2))
        feature_cache = FeatureCache([examples.batch(16)], 64) if cache else None
        entries.append(stage_loop.train_stages(model, backbone, stages, examples.shuffle(64, seed=1).repeat().batch(16),
                                            examples.batch(16), 4, 0.5, 16, work_dir=str(tmp_path / str(cache)),
                                            feature_cache=feature_cache))
        models.append(model)
    assert [e['feature_cache']['cached'] for e in entries[1]] == [True, False]
    for a, b in zip(*(m.get_weights() for m in models)):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.slow
def test_a_stage_with_augment_false_trains_on_the_images_as_they_are_and_its_head_is_cached(tmp_path):
    """model.augmentation changes the images of every stage but those with augment: false, which read
    the unaugmented examples; a frozen stage on augmented images says why it is not cached."""
    train, evaluation = _data()
    flipped = train.map(lambda inputs, label: ({'image_xf': tf.reverse(inputs['image_xf'], axis=[2])}, label))
    keras.utils.set_random_seed(0)
    backbone = backbone_lib.build_digits_cnn(SHAPE)
    model = network.build_model(backbone, SHAPE, HeadSection(hidden_units=(8,)))
    stages = [_stage(name='plain', epochs=1, augment=False), _stage(name='augmented', epochs=1)]
    entries = stage_loop.train_stages(model, backbone, stages, flipped, evaluation, 4, 0.5, 16, work_dir=str(tmp_path),
                                   feature_cache=FeatureCache([evaluation], 64), unaugmented_train_data=train)
    plain, augmented = entries
    assert (plain['augmented'], plain['feature_cache']['cached']) == (False, True)
    assert augmented['augmented'] is True
    assert augmented['feature_cache'] == {'cached': False, 'reason': (
        'the training images are augmented (model.augmentation), so they and their features change every epoch; '
        'a stage with augment: false trains on them as they are')}


def test_models_built_afresh_on_the_same_backbone_weights_share_one_computation_of_the_features():
    """As a search's trials do: each builds its model from the backbone file and trains a frozen head
    stage; the features are computed for the first and looked up for the others. Changed backbone
    weights compute them again."""
    train, evaluation = _data(64, 16)
    cache = FeatureCache([evaluation], 64)
    keras.utils.set_random_seed(0)
    weights = backbone_lib.build_digits_cnn(SHAPE).get_weights()
    entries = []
    for trial in range(3):
        backbone = backbone_lib.build_digits_cnn(SHAPE)
        backbone.set_weights(weights)
        model = network.build_model(backbone, SHAPE, HeadSection(hidden_units=(8,), dropout=0.0))
        entries.append(cache.for_stage(model, backbone, [], train, evaluation))
    assert cache.computations == 1
    assert [e['reused'] for e in entries] == [False, True, True]
    backbone.set_weights([w + 0.01 for w in weights])
    assert cache.for_stage(model, backbone, [], train, evaluation)['reused'] is False
    assert cache.computations == 2
