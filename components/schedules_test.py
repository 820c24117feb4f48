import math

import keras
import pytest

from components import schedules
from pipeline.config import Optimizer, Schedule


def _rate(schedule, step):
    return float(keras.ops.convert_to_numpy(schedule(step)))


def test_constant_without_warmup_is_a_plain_float():
    assert schedules.build_learning_rate(Optimizer(learning_rate=0.01), Schedule(), 100) == 0.01


def test_linear_warmup_then_constant():
    schedule = schedules.build_learning_rate(Optimizer(learning_rate=0.01), Schedule(warmup_steps=4), 100)
    assert [_rate(schedule, k) for k in (0, 1, 2, 4, 50)] == pytest.approx([0.0, 0.0025, 0.005, 0.01, 0.01])


@pytest.mark.parametrize('step', [0, 3, 5, 10, 37, 60])
def test_cosine_with_warmup_follows_the_formula(step):
    lr, warmup, total, alpha = 0.02, 5, 60, 0.1
    schedule = schedules.build_learning_rate(
        Optimizer(learning_rate=lr), Schedule(name='cosine', warmup_steps=warmup, alpha=alpha), total)
    if step < warmup:
        expected = lr * step / warmup
    else:
        progress = (step - warmup) / (total - warmup)
        expected = lr * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * progress)) + alpha)
    assert _rate(schedule, step) == pytest.approx(expected, rel=1e-5, abs=1e-9)


@pytest.mark.parametrize('name, cls', [('adam', keras.optimizers.Adam), ('adamw', keras.optimizers.AdamW),
                                       ('sgd', keras.optimizers.SGD), ('rmsprop', keras.optimizers.RMSprop)])
def test_optimizer_by_name_with_clipping(name, cls):
    optimizer = schedules.build_optimizer(Optimizer(name=name, learning_rate=0.1, clipnorm=1.0, momentum=0.5), 0.1)
    assert type(optimizer) is cls
    assert optimizer.clipnorm == 1.0
    assert schedules.current_learning_rate(optimizer) == pytest.approx(0.1)
