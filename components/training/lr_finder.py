"""The learning-rate range test (Smith's LR finder) behind `learning_rate: auto`."""

import math

import keras

from components.config import LearningRateFinder
from components.training.keras_callbacks import LearningRateRecorder


def find_learning_rate(model: keras.Model, compile_with, train_data, finder: LearningRateFinder) -> dict:
    """The LR range test (fastai's lr_find): the rate grows exponentially from finder.min_lr to
    finder.max_lr, one step per batch, until the loss diverges; the model's weights are restored.

    `compile_with(learning_rate)` compiles the model with the stage's optimizer at that rate.
    Returns the curve and the chosen rate: the rate at the lowest smoothed loss / finder.divisor.
    """
    weights = model.get_weights()
    growth = keras.optimizers.schedules.ExponentialDecay(
        finder.min_lr, decay_steps=finder.steps, decay_rate=finder.max_lr / finder.min_lr)
    compile_with(growth)
    rates = LearningRateRecorder()
    batch_losses: list[float] = []

    def record_loss(batch, logs):
        batch_losses.append(float(logs['loss']))
        smoothed = _smooth(batch_losses)
        if not math.isfinite(batch_losses[-1]) or smoothed[-1] > 4 * min(smoothed):
            model.stop_training = True

    losses = keras.callbacks.LambdaCallback(on_train_batch_end=record_loss)
    model.fit(train_data, epochs=1, steps_per_epoch=finder.steps, callbacks=[rates, losses], verbose=0)
    model.set_weights(weights)
    smoothed = _smooth(batch_losses)
    finite = [i for i, loss in enumerate(smoothed) if math.isfinite(loss)]
    best = min(finite, key=lambda i: smoothed[i])
    return {'lr': rates.lr_by_step[:len(batch_losses)], 'loss': batch_losses, 'smoothed_loss': smoothed,
            'min_loss_lr': rates.lr_by_step[best], 'chosen_lr': rates.lr_by_step[best] / finder.divisor}


def _smooth(values: list[float], beta: float = 0.98) -> list[float]:
    """Bias-corrected exponential moving average, as fastai smooths the LR-finder loss."""
    average, smoothed = 0.0, []
    for i, value in enumerate(values, start=1):
        average = beta * average + (1 - beta) * value
        smoothed.append(average / (1 - beta ** i))
    return smoothed
