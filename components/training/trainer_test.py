import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from components.training import backbone as backbone_lib
from components.config import DecisionTarget, HeadSection, ImageShape, LearningRateFinder, Stage, validate
from components.statistics import proportions, thresholds
from components.training import freezing
from components.training import decision_threshold, lr_finder, network, stage_loop, training_data
from components.training.feature_cache import FEATURE_CACHE_LIMIT_BYTES, FeatureCache

SHAPE = ImageShape(height=8, width=8, channels=1)


def _stage(**fields) -> Stage:
    base = {'name': 's', 'epochs': 2, 'unfreeze': 'none', 'optimizer': {'name': 'adam', 'learning_rate': 1e-2}}
    base.update(fields)
    return validate(base, Stage)


def _pixels(rng, n, shape=SHAPE):
    """Random images as the model takes them: [n, H, W, C], pixel values 0-255."""
    return 255 * rng.random((n, shape.height, shape.width, shape.channels), dtype=np.float32)


def _data(n=64, batch=16):
    rng = np.random.default_rng(0)
    x = _pixels(rng, n)
    y = (rng.random(n) < 0.3).astype(np.int64)
    train = tf.data.Dataset.from_tensor_slices(({'image_xf': x}, y)).repeat().batch(batch)
    evaluation = tf.data.Dataset.from_tensor_slices(({'image_xf': x}, y)).batch(batch)
    return train, evaluation


@pytest.fixture
def model_and_backbone():
    keras.utils.set_random_seed(0)
    backbone = backbone_lib.build_digits_cnn(SHAPE)
    return network.build_model(backbone, SHAPE, HeadSection(hidden_units=(8,))), backbone


def _weights(layers):
    return {layer.name: [np.array(w) for w in layer.get_weights()] for layer in layers}


def test_frozen_backbone_is_bit_identical_and_head_changes(model_and_backbone):
    model, backbone = model_and_backbone
    train, evaluation = _data()
    before_backbone = _weights(backbone.layers)
    before_head = _weights([model.get_layer('head_output')])

    entry = stage_loop.train_stage(model, backbone, _stage(unfreeze='none'), train, evaluation,
                                steps_per_epoch=4, decision_threshold=0.5, batch_size=16)

    after_backbone = _weights(backbone.layers)
    for name, weights in before_backbone.items():
        for old, new in zip(weights, after_backbone[name]):
            assert np.array_equal(old, new), f'{name} changed while frozen'
    assert not np.array_equal(before_head['head_output'][0], model.get_layer('head_output').get_weights()[0])
    assert entry['unfrozen_layers'] == []
    assert entry['non_trainable_params'] > entry['trainable_params'] > 0


def test_unfrozen_layers_change_and_the_rest_stay(model_and_backbone):
    model, backbone = model_and_backbone
    train, evaluation = _data()
    before = _weights(backbone.layers)
    entry = stage_loop.train_stage(model, backbone, _stage(unfreeze={'top_layers': 2}), train, evaluation,
                                steps_per_epoch=4, decision_threshold=0.5, batch_size=16)
    # The top two layers with weights are block3_conv and block3_bn; BatchNorm stays frozen.
    assert entry['unfrozen_layers'] == ['block3_conv']
    after = _weights(backbone.layers)
    assert not np.array_equal(before['block3_conv'][0], after['block3_conv'][0])
    # BatchNorm ran in inference mode: neither its parameters nor its moving statistics moved.
    for name in ('block1_conv', 'block1_bn', 'block2_conv', 'block2_bn', 'block3_bn'):
        for old, new in zip(before[name], after[name]):
            assert np.array_equal(old, new), f'{name} changed while frozen'


def test_train_batchnorm_lets_statistics_move(model_and_backbone):
    model, backbone = model_and_backbone
    train, evaluation = _data()
    before = backbone.get_layer('block3_bn').get_weights()
    entry = stage_loop.train_stage(model, backbone, _stage(unfreeze='all', train_batchnorm=True), train, evaluation,
                                steps_per_epoch=2, decision_threshold=0.5, batch_size=16)
    assert 'block3_bn' in entry['unfrozen_layers']
    assert not np.array_equal(before[2], backbone.get_layer('block3_bn').get_weights()[2])


def test_stage_log_records_every_step_and_epoch(model_and_backbone, tmp_path, capsys):
    model, backbone = model_and_backbone
    train, evaluation = _data()
    stage = _stage(epochs=3, schedule={'name': 'cosine', 'warmup_steps': 2})
    entry = stage_loop.train_stage(model, backbone, stage, train, evaluation,
                                steps_per_epoch=4, decision_threshold=0.5, batch_size=16, log_dir=str(tmp_path))
    # The console: one line per epoch with the numbers of the log, and nothing from Keras itself.
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    for number, (line, epoch) in enumerate(zip(lines, entry['epochs']), start=1):
        assert line.split()[:3] == ['s', 'epoch', f'{number}/3']
        assert f"lr {epoch['learning_rate']:.3g}" in line
        assert f"  loss {epoch['loss']:.4f}" in line and f"val_recall {epoch['val_recall']:.4f}" in line
    tags = {value.tag
            for path in tf.io.gfile.glob(str(tmp_path / 's' / 'train' / 'events.*'))
            for event in tf.compat.v1.train.summary_iterator(path) for value in event.summary.value}
    assert 'epoch_learning_rate' in tags
    assert len(entry['lr_by_step']) == 12
    assert [e['epoch'] for e in entry['epochs']] == [1, 2, 3]
    for epoch in entry['epochs']:
        assert {'loss', 'val_loss', 'recall', 'val_recall', 'precision', 'val_precision', 'learning_rate'} <= set(epoch)
    # An epoch's learning rate is the one its last step used.
    assert entry['epochs'][0]['learning_rate'] == pytest.approx(entry['lr_by_step'][3])
    assert entry['lr_by_step'][0] == 0.0 and entry['lr_by_step'][2] == pytest.approx(1e-2)
    json.dumps(entry)


def test_nan_loss_stops_with_a_clear_error(model_and_backbone):
    model, backbone = model_and_backbone
    x = _pixels(np.random.default_rng(0), 32)
    y = np.full(32, np.nan, np.float32)
    train = tf.data.Dataset.from_tensor_slices(({'image_xf': x}, y)).repeat().batch(16)
    with pytest.raises(FloatingPointError, match=r"stage 's', epoch 1, step 1: training loss is nan"):
        stage_loop.train_stage(model, backbone, _stage(), train, train.take(1),
                            steps_per_epoch=2, decision_threshold=0.5, batch_size=16)


def test_early_stopping_restores_the_best_weights(model_and_backbone):
    model, backbone = model_and_backbone
    train, evaluation = _data()
    stage = _stage(epochs=30, early_stopping={'monitor': 'val_loss', 'patience': 0, 'min_delta': 10.0})
    entry = stage_loop.train_stage(model, backbone, stage, train, evaluation,
                                steps_per_epoch=2, decision_threshold=0.5, batch_size=16)
    # No epoch improves val_loss by 10, so the stage stops after its first epoch's successor.
    assert entry['epochs_run'] < 30


def test_count_records(tmp_path):
    path = str(tmp_path / 'data.gz')
    with tf.io.TFRecordWriter(path, options='GZIP') as writer:
        for i in range(7):
            writer.write(b'x' * i)
    assert training_data.count_records([str(tmp_path / '*.gz')]) == 7


def test_model_maps_images_to_probabilities(model_and_backbone):
    model, _ = model_and_backbone
    out = model.predict({'image_xf': np.zeros((3, 8, 8, 1), np.float32)}, verbose=0)
    assert out.shape == (3, 1)
    assert np.all((out > 0) & (out < 1)) and not math.isnan(out.sum())


def test_reduce_on_plateau_lowers_the_rate_when_the_metric_stalls(model_and_backbone):
    model, backbone = model_and_backbone
    train, evaluation = _data()
    # The first epoch sets the reference; with min_delta 10 no later epoch improves on it, so with
    # patience 0 the rate halves after every epoch from the second on.
    stage = _stage(epochs=3, reduce_on_plateau={'monitor': 'val_loss', 'patience': 0, 'factor': 0.5,
                                                'min_delta': 10.0})
    entry = stage_loop.train_stage(model, backbone, stage, train, evaluation,
                                steps_per_epoch=2, decision_threshold=0.5, batch_size=16)
    assert entry['lr_by_step'] == pytest.approx([1e-2, 1e-2, 1e-2, 1e-2, 5e-3, 5e-3])
    assert [e['learning_rate'] for e in entry['epochs']] == pytest.approx([1e-2, 1e-2, 5e-3])


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


@pytest.mark.slow
def test_keras_application_backbone_goes_through_the_same_stages():
    shape = ImageShape(height=32, width=32, channels=3)
    keras.utils.set_random_seed(0)
    backbone = backbone_lib.build_keras_application('MobileNetV2', None, {'alpha': 0.35}, shape)
    model = network.build_model(backbone, shape, HeadSection())
    rng = np.random.default_rng(0)
    x = _pixels(rng, 32, shape)
    y = (rng.random(32) < 0.5).astype(np.int64)
    train = tf.data.Dataset.from_tensor_slices(({'image_xf': x}, y)).repeat().batch(16)
    evaluation = tf.data.Dataset.from_tensor_slices(({'image_xf': x}, y)).batch(16)
    before = _weights(freezing.leaf_layers(backbone))

    head = stage_loop.train_stage(model, backbone, _stage(epochs=1), train, evaluation,
                               steps_per_epoch=2, decision_threshold=0.5, batch_size=16)
    top = stage_loop.train_stage(model, backbone, _stage(epochs=1, unfreeze={'top_layers': 4}), train, evaluation,
                              steps_per_epoch=2, decision_threshold=0.5, batch_size=16)

    assert head['unfrozen_layers'] == []
    # The top four layers with weights are Conv_1, Conv_1_bn and block_16's project conv and BN;
    # the BatchNorm layers stay frozen.
    assert top['unfrozen_layers'] == ['block_16_project', 'Conv_1']
    after = _weights(freezing.leaf_layers(backbone))
    for name, weights in before.items():
        changed = any(not np.array_equal(old, new) for old, new in zip(weights, after[name]))
        assert changed == (name in top['unfrozen_layers']), name


def test_mixed_precision_backbone_computes_in_float16_with_the_same_weights(model_and_backbone):
    _, backbone = model_and_backbone
    mixed = network.with_dtype_policy(backbone, 'mixed_float16')
    assert mixed.get_layer('block1_conv').compute_dtype == 'float16'
    assert mixed.get_layer('block1_conv').kernel.dtype == 'float32'
    for old, new in zip(backbone.get_weights(), mixed.get_weights()):
        assert np.array_equal(old, new)
    model = network.build_model(mixed, SHAPE, HeadSection())
    out = model.predict({'image_xf': np.zeros((2, 8, 8, 1), np.float32)}, verbose=0)
    assert out.dtype == np.float32


def test_mixed_precision_reaches_into_a_nested_keras_application():
    shape = ImageShape(height=32, width=32, channels=3)
    backbone = backbone_lib.build_keras_application('MobileNetV2', None, {'alpha': 0.35}, shape)
    mixed = network.with_dtype_policy(backbone, 'mixed_float16')
    convs = [layer for layer in freezing.leaf_layers(mixed) if layer.name == 'Conv1']
    assert len(convs) == 1 and convs[0].compute_dtype == 'float16' and convs[0].kernel.dtype == 'float32'
    for old, new in zip(backbone.get_weights(), mixed.get_weights()):
        assert np.array_equal(old, new)


@pytest.mark.parametrize('setting, gpus, expected', [
    ('auto', 0, False), ('auto', 1, True), ('auto', 4, True), (True, 0, True), (False, 2, False)])
def test_mixed_precision_switches_on_by_itself_when_gpus_are_present(setting, gpus, expected):
    assert network.use_mixed_precision(setting, gpus) is expected


def test_multiclass_head_is_a_softmax_trained_on_class_indices():
    keras.utils.set_random_seed(0)
    backbone = backbone_lib.build_digits_cnn(SHAPE)
    model = network.build_model(backbone, SHAPE, HeadSection(hidden_units=(8,)), num_classes=3)
    rng = np.random.default_rng(0)
    x = _pixels(rng, 48)
    y = rng.integers(0, 3, 48)
    train = tf.data.Dataset.from_tensor_slices(({'image_xf': x}, y)).repeat().batch(16)
    evaluation = tf.data.Dataset.from_tensor_slices(({'image_xf': x}, y)).batch(16)
    entry = stage_loop.train_stage(model, backbone, _stage(epochs=3), train, evaluation,
                                steps_per_epoch=3, decision_threshold=0.5, batch_size=16)
    assert entry['epochs'][0]['loss'] == pytest.approx(math.log(3), rel=0.2)  # starts near chance
    assert entry['epochs'][-1]['loss'] < entry['epochs'][0]['loss']
    assert {'val_loss', 'val_accuracy'} <= set(entry['epochs'][-1])
    probabilities = model.predict(x[:5], verbose=0)
    assert probabilities.shape == (5, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize('num_classes, class_weight', [(1, {0: 1.0, 1: 4.0}), (3, {0: 0.5, 1: 1.0, 2: 3.0})])
def test_class_weight_scales_each_example_loss_as_keras_reports_it(num_classes, class_weight):
    keras.utils.set_random_seed(0)
    backbone = backbone_lib.build_digits_cnn(SHAPE)
    # No dropout: the training forward pass equals predict(), so the loss can be recomputed by hand.
    model = network.build_model(backbone, SHAPE, HeadSection(hidden_units=(8,), dropout=0.0), num_classes)
    rng = np.random.default_rng(0)
    x = _pixels(rng, 32)
    y = rng.integers(0, max(2, num_classes), 32)
    probabilities = model.predict(x, verbose=0)
    if num_classes == 1:
        per_example = keras.ops.convert_to_numpy(keras.losses.binary_crossentropy(y[:, None].astype(np.float32),
                                                                                 probabilities))
    else:
        per_example = keras.ops.convert_to_numpy(keras.losses.sparse_categorical_crossentropy(y, probabilities))
    weights = np.array([class_weight[t] for t in y])
    data = tf.data.Dataset.from_tensor_slices(({'image_xf': x}, y)).batch(32)

    # One step over one batch: the loss Keras reports is computed before the update.
    entry = stage_loop.train_stage(model, backbone, _stage(epochs=1), data.repeat(), data, steps_per_epoch=1,
                                decision_threshold=0.5, batch_size=32, class_weight=class_weight)

    assert entry['epochs'][0]['loss'] == pytest.approx(float(np.mean(weights * per_example)), rel=1e-5)
    assert entry['epochs'][0]['loss'] != pytest.approx(float(np.mean(per_example)), rel=1e-2)


def test_balanced_class_weight_is_scikit_learns():
    from sklearn.utils.class_weight import compute_class_weight

    y = np.array([0] * 40 + [1] * 10 + [2] * 5)
    expected = compute_class_weight('balanced', classes=np.arange(3), y=y)
    weights = training_data.balanced_class_weight(list(np.bincount(y)))
    np.testing.assert_allclose([weights[i] for i in range(3)], expected)
    assert training_data.balanced_class_weight([10, 0]) == {0: 0.5, 1: 1.0}


SPEC = {'label_xf': tf.io.FixedLenFeature([], tf.int64), 'image_xf': tf.io.FixedLenFeature([], tf.string)}


def _write_transformed(path, labels, first_id=0):
    with tf.io.TFRecordWriter(str(path), options='GZIP') as writer:
        for i, label in enumerate(labels, start=first_id):
            example = tf.train.Example(features=tf.train.Features(feature={
                'label_xf': tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
                'image_xf': tf.train.Feature(bytes_list=tf.train.BytesList(value=[str(i).encode()]))}))
            writer.write(example.SerializeToString())


def test_target_counts_read_the_label_of_transformed_records(tmp_path):
    _write_transformed(tmp_path / 'part.gz', [0, 1, 1, 2, 1])
    assert training_data.target_counts([str(tmp_path / '*.gz')], SPEC, 3) == [1, 3, 1]


def test_few_labels_keep_at_most_n_examples_of_each_class_drawn_by_the_seed(tmp_path):
    labels = [0] * 50 + [1] * 8 + [0] * 30 + [1] * 4
    _write_transformed(tmp_path / 'a.gz', labels[:45])
    _write_transformed(tmp_path / 'b.gz', labels[45:], first_id=45)
    files = [str(tmp_path / '*.gz')]

    def drawn(seed, n=10):
        counts = training_data.subsample_per_target(files, SPEC, n, seed, str(tmp_path / f'out-{seed}-{n}'))
        records = tf.data.TFRecordDataset(str(tmp_path / f'out-{seed}-{n}'), compression_type='GZIP')
        parsed = [tf.io.parse_single_example(r, SPEC) for r in records]
        return counts, [int(p['image_xf'].numpy()) for p in parsed], [int(p['label_xf']) for p in parsed]

    counts, ids, kept_labels = drawn(0)
    assert counts == {0: 10, 1: 10} and sorted(kept_labels) == [0] * 10 + [1] * 10
    assert drawn(0)[1] == ids  # the same seed draws the same examples
    assert drawn(1)[1] != ids
    assert drawn(0, n=100)[0] == {0: 80, 1: 12}  # fewer than n: all of them


def test_augmentation_changes_training_images_every_epoch_and_nothing_else():
    from components.config import Augmentation

    assert network.augmentation_layers(None, 0) is None
    assert network.augmentation_layers(Augmentation(), 0) is None
    augment = network.augmentation_layers(
        Augmentation(flip='horizontal', rotation=0.05, zoom=0.1, translation=0.1, contrast=0.2, brightness=0.2), 0)
    assert [type(layer).__name__ for layer in augment.layers] == [
        'RandomFlip', 'RandomRotation', 'RandomZoom', 'RandomTranslation', 'RandomContrast', 'RandomBrightness']
    shape = ImageShape(height=16, width=16, channels=3)
    x = _pixels(np.random.default_rng(0), 8, shape)
    # As the Trainer's input pipeline applies it: in a tf.data map over decoded batches.
    data = tf.data.Dataset.from_tensor_slices(x).batch(8).map(lambda images: augment(images, training=True))
    first, second = (next(iter(data)).numpy() for _ in range(2))
    assert first.shape == x.shape and first.dtype == np.float32
    assert not np.allclose(first, x) and not np.allclose(first, second)
    assert first.min() >= 0.0 and first.max() <= 255.0
    # Outside training the layers change nothing, and the model the Trainer exports never holds them.
    np.testing.assert_array_equal(augment(x, training=False), x)
    model = network.build_model(backbone_lib.build_digits_cnn(shape), shape, HeadSection())
    assert not any(layer.name == 'augmentation' or layer.name.startswith('random_')
                   for layer in freezing.leaf_layers(model))


def _brute_force_threshold(p, y, target_recall=None, target_precision=None, confidence=None):
    """Every cut between distinct probabilities, checked one by one with scikit-learn, the targeted
    metric's lower bound from statsmodels' Clopper-Pearson interval (confidence None: the metric
    itself): (threshold, recall, precision, target met)."""
    from sklearn.metrics import precision_score, recall_score
    from statsmodels.stats.proportion import proportion_confint

    def bound(k, n):
        return k / n if confidence is None else proportion_confint(k, n, alpha=1 - confidence, method='beta')[0]

    values = np.unique(p)[::-1]
    cuts = [(a + b) / 2 for a, b in zip(values, np.r_[values[1:], 0.0])]
    rows = []
    for t in cuts:
        caught, predicted = int(np.sum((p > t) & (y == 1))), int(np.sum(p > t))
        low = bound(caught, int(np.sum(y == 1))) if target_recall is not None else bound(caught, predicted)
        rows.append((t, recall_score(y, p > t), precision_score(y, p > t), low))
    target, other = (target_recall, 2) if target_recall is not None else (target_precision, 1)
    feasible = [r for r in rows if r[3] >= target - 1e-12]
    if not feasible:
        t, recall, precision, _ = max(rows, key=lambda r: (r[3], r[0]))
        return t, recall, precision, False
    t, recall, precision, _ = max(feasible, key=lambda r: (r[other], r[0]))
    return t, recall, precision, True


@pytest.mark.parametrize('confidence', [None, 0.95])
@pytest.mark.parametrize('target', [{'target_recall': 0.9}, {'target_recall': 0.5}, {'target_precision': 0.8},
                                    {'target_precision': 0.95}])
def test_decision_threshold_reaches_the_target_with_the_best_other_metric(target, confidence):
    from components.config import DecisionTarget

    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.2).astype(np.int64)
    p = np.clip(0.35 * y + rng.normal(0.3, 0.15, 300), 0.001, 0.999).round(3).astype(np.float32)
    chosen = decision_threshold.choose_threshold(p[:, None], y, validate(target, DecisionTarget), confidence)
    threshold, recall, precision, met = _brute_force_threshold(p.astype(np.float64), y, **target, confidence=confidence)
    assert chosen['value'] == pytest.approx(threshold)
    assert (chosen['eval_recall'], chosen['eval_precision']) == pytest.approx((recall, precision))
    assert chosen['target_met'] is met and chosen['eval_examples'] == 300 and chosen['eval_positives'] == 58
    # Every target is reached on the eval values; precision 0.95 is not with 95% confidence.
    assert met is (confidence is None or target != {'target_precision': 0.95})
    # What the served decision (probability > threshold) gives on the same data.
    served = p > np.float32(chosen['value'])
    assert np.sum(served & (y == 1)) / np.sum(y == 1) == pytest.approx(recall)


def test_decision_threshold_is_the_lower_bound_rule_of_gate_statistics_by_default():
    from components.config import DecisionTarget

    # 20 positives above 12 examples holding 2 more positives.
    p = np.r_[np.linspace(0.99, 0.6, 20), np.linspace(0.55, 0.1, 12)]
    y = np.r_[np.ones(20), 0, 1, np.zeros(5), 1, np.zeros(4)]
    target = DecisionTarget(target_recall=0.8)
    chosen = decision_threshold.choose_threshold(p, y, target)
    same = thresholds.choose_threshold(p, y, target_recall=0.8, confidence=0.95,
                                            method=proportions.CLOPPER_PEARSON)
    assert chosen == {'target_recall': 0.8, **same, 'interval': 'clopper_pearson'}
    # The point rule stops at 18 of 22 caught (0.818); the lower bound needs all 22 (0.846; 21 of 22: 0.772).
    point = decision_threshold.choose_threshold(p, y, target, confidence=None)
    assert point['eval_recall'] == pytest.approx(18 / 22) and point['eval_lower_bound'] == point['eval_recall']
    assert point['target_met'] and point['confidence'] is None
    assert chosen['eval_recall'] == 1.0 and chosen['value'] < point['value']
    assert chosen['target_met'] and chosen['eval_lower_bound'] == pytest.approx(0.025 ** (1 / 22))
    wilson = decision_threshold.choose_threshold(p, y, target, 0.95, 'wilson')
    assert wilson['interval'] == 'wilson' and wilson['eval_lower_bound'] != chosen['eval_lower_bound']


def test_decision_threshold_for_an_unreachable_precision_says_so_and_needs_positives():
    from components.config import DecisionTarget

    y = np.array([1, 0, 1, 0, 0])
    p = np.array([0.9, 0.9, 0.5, 0.4, 0.1])
    for confidence in (None, 0.95):
        chosen = decision_threshold.choose_threshold(p, y, DecisionTarget(target_precision=0.99), confidence)
        # The best precision there is 2/3, cutting below 0.5 (and so is its lower bound).
        assert chosen['target_met'] is False and chosen['eval_precision'] == pytest.approx(2 / 3)
        assert chosen['value'] == pytest.approx(0.45)
    with pytest.raises(ValueError, match='^evaluation.decision_threshold: the eval split holds no positive example'):
        decision_threshold.choose_threshold(p, np.zeros(5), DecisionTarget(target_recall=0.9))


def test_eval_summary_is_average_precision_for_one_output_and_accuracy_with_macro_recall_for_softmax():
    binary = decision_threshold.eval_summary(np.array([[0.9], [0.8], [0.3], [0.1]]), np.array([1, 0, 1, 0]))
    assert binary == {'auc_pr': pytest.approx((1 / 1 + 2 / 3) / 2), 'examples': 4}
    softmax = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    multiclass = decision_threshold.eval_summary(softmax, np.array([0, 1, 1, 2]))
    # Class 1 is right once in two: macro recall (1 + 1/2 + 1) / 3.
    assert multiclass == {'accuracy': 0.75, 'macro_recall': pytest.approx(2.5 / 3), 'examples': 4}


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


def test_a_plan_with_a_cached_head_stage_trains_the_next_stage_as_the_uncached_plan_does(tmp_path):
    """The stage after a cached head stage starts from the same weights, optimizer-free, and so
    trains the same: the whole plan's weights match the uncached plan's."""
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


def test_point_rule_is_the_trainers_choice():
    rng = np.random.default_rng(2)
    for _ in range(20):
        labels = rng.random(60) < 0.4
        probabilities = np.round(np.where(labels, rng.beta(4, 2, 60), rng.beta(2, 4, 60)), 2)  # with ties
        for target in ({'target_recall': 0.8}, {'target_precision': 0.7}):
            ours = thresholds.choose_threshold(probabilities, labels, **target, confidence=None)
            theirs = decision_threshold.choose_threshold(probabilities, labels, DecisionTarget(**target), confidence=None)
            assert {k: ours[k] for k in ('value', 'target_met', 'eval_recall', 'eval_precision')} == \
                {k: theirs[k] for k in ('value', 'target_met', 'eval_recall', 'eval_precision')}
