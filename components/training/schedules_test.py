import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from components.training import schedules
from components.config import Optimizer, Schedule


def _rate(schedule, step):
    if isinstance(schedule, float):
        return schedule
    return float(keras.ops.convert_to_numpy(schedule(step)))


def _build(rate=0.02, total=60, steps_per_epoch=10, **schedule):
    return schedules.build_learning_rate(rate, Schedule(**schedule), total, steps_per_epoch)


def test_constant_without_warmup_is_a_plain_float():
    assert _build(rate=0.01) == 0.01


def test_linear_warmup_then_constant():
    schedule = _build(rate=0.01, warmup_steps=4)
    assert [_rate(schedule, k) for k in (0, 1, 2, 4, 50)] == pytest.approx([0.0, 0.0025, 0.005, 0.01, 0.01])


@pytest.mark.parametrize('step', [0, 3, 5, 10, 37, 60])
def test_cosine_with_warmup_follows_the_formula(step):
    lr, warmup, total, alpha = 0.02, 5, 60, 0.1
    schedule = _build(lr, total, name='cosine', warmup_steps=warmup, alpha=alpha)
    if step < warmup:
        expected = lr * step / warmup
    else:
        progress = (step - warmup) / (total - warmup)
        expected = lr * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * progress)) + alpha)
    assert _rate(schedule, step) == pytest.approx(expected, rel=1e-5, abs=1e-9)


@pytest.mark.parametrize('step', [0, 5, 14, 15, 16, 30, 59, 60])
def test_one_cycle_follows_the_formula(step):
    lr, total, pct, div, final = 0.02, 60, 0.25, 25.0, 1e4
    schedule = _build(lr, total, name='one_cycle', pct_start=pct, div_factor=div, final_div_factor=final)
    rise = round(pct * total)
    start, end = lr / div, lr / div / final
    if step < rise:
        expected = lr + (start - lr) * 0.5 * (1 + math.cos(math.pi * step / rise))
    else:
        expected = end + (lr - end) * 0.5 * (1 + math.cos(math.pi * min((step - rise) / (total - rise), 1)))
    assert _rate(schedule, step) == pytest.approx(expected, rel=1e-4)  # float32 arithmetic


def test_one_cycle_peaks_at_the_rate_and_ends_far_below():
    schedule = _build(0.02, 60, name='one_cycle')
    rates = [_rate(schedule, k) for k in range(61)]
    assert max(rates) == pytest.approx(0.02, rel=1e-4)
    assert rates[0] == pytest.approx(0.02 / 25, rel=1e-4) and rates[-1] == pytest.approx(0.02 / 25 / 1e4, rel=1e-4)


@pytest.mark.parametrize('name, expected', [
    ('exponential', lambda k: 0.02 * 0.5 ** (k / 10)),
    ('step', lambda k: 0.02 * 0.5 ** (k // 10)),
])
def test_decay_per_epoch_by_default(name, expected):
    schedule = _build(0.02, name=name, decay_rate=0.5)
    for step in (0, 5, 10, 15, 25):
        assert _rate(schedule, step) == pytest.approx(expected(step), rel=1e-5)


def test_cosine_restarts_go_back_up():
    schedule = _build(0.02, name='cosine_restarts', decay_steps=10, t_mul=1.0)
    assert _rate(schedule, 9) < 0.005
    assert _rate(schedule, 10) == pytest.approx(0.02)


def test_warmup_precedes_any_schedule():
    schedule = _build(0.02, name='step', warmup_steps=4, decay_rate=0.5)
    assert [_rate(schedule, k) for k in (2, 4, 13, 14)] == pytest.approx([0.01, 0.02, 0.02, 0.01])


@pytest.mark.parametrize('name, cls', [('adam', keras.optimizers.Adam), ('adamw', keras.optimizers.AdamW),
                                       ('sgd', keras.optimizers.SGD), ('rmsprop', keras.optimizers.RMSprop)])
def test_optimizer_by_name_with_clipping(name, cls):
    optimizer = schedules.build_optimizer(Optimizer(name=name, learning_rate=0.1, clipnorm=1.0, momentum=0.5), 0.1)
    assert type(optimizer) is cls
    assert optimizer.clipnorm == 1.0
    assert schedules.current_learning_rate(optimizer) == pytest.approx(0.1)


def test_layerwise_multipliers_decay_downwards():
    assert schedules.layerwise_multipliers(['a', 'b', 'c'], 0.5) == {'c': 1.0, 'b': 0.5, 'a': 0.25}


def test_layerwise_rates_keep_the_ratio_between_first_and_last_layers():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    x = keras.layers.Dense(4, name='first')(inputs)
    x = keras.layers.Dense(4, name='middle')(x)
    outputs = keras.layers.Dense(1, name='last')(x)
    model = keras.Model(inputs, outputs)
    multipliers = schedules.layerwise_multipliers(['first', 'middle', 'last'], 0.3)
    optimizer = schedules.build_optimizer(Optimizer(name='sgd', learning_rate=0.1), 0.1, multipliers, model)
    x_batch = np.random.default_rng(0).random((8, 4), dtype=np.float32)
    with tf.GradientTape() as tape:
        loss = keras.ops.mean(model(x_batch) ** 2)
    gradients = tape.gradient(loss, model.trainable_variables)
    before = [np.array(v) for v in model.trainable_variables]
    optimizer.apply_gradients(zip(gradients, model.trainable_variables))
    # Plain SGD: step = rate * multiplier * gradient, so the effective rate per variable is exact.
    effective = {}
    for variable, old, gradient in zip(model.trainable_variables, before, gradients):
        gradient = np.array(gradient)
        mask = np.abs(gradient) > 1e-6
        effective[variable.path.split('/')[0]] = np.median((old - np.array(variable))[mask] / gradient[mask])
    assert effective['last'] == pytest.approx(0.1, rel=1e-4)
    assert effective['middle'] == pytest.approx(0.03, rel=1e-4)
    assert effective['first'] / effective['last'] == pytest.approx(0.3 ** 2, rel=1e-4)
