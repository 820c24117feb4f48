"""Which backbone layers train in a stage, resolved from the config's `unfreeze` to layer names.

Only layers that own weights count ("the top 3 layers" means the top 3 with weights; pooling
and activation layers have nothing to freeze). The head always trains.

BatchNormalization layers stay frozen, and so in inference mode, unless a stage sets
`train_batchnorm`: updating their statistics on a small fine-tuning set wrecks what the backbone
learned (the Keras transfer-learning guide). The guide gets inference mode by calling the
backbone with `training=False`; Keras 3 (3.12 here) ignores that argument inside a functional model
(the outer `training` overrides it, keras/src/models/functional.py `operation_fn`), so freezing the
layer is the mechanism that holds: a frozen BatchNormalization layer always runs in inference mode.
"""

import math
import re

import keras

from components.config import Unfreeze


def leaf_layers(model) -> list:
    """The layers of `model`, input to output, with nested models (a keras.applications network
    inside its backbone, a user's Sequential around one) replaced by their own layers."""
    leaves = []
    for layer in model.layers:
        leaves.extend(leaf_layers(layer) if isinstance(layer, keras.Model) else [layer])
    return leaves


def _nested_models(model) -> list:
    """The models nested in `model`, each before the ones nested in it."""
    nested = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            nested += [layer] + _nested_models(layer)
    return nested


def weighted_layers(backbone) -> list:
    """The backbone's layers that own weights, input to output."""
    return [layer for layer in leaf_layers(backbone) if layer.weights]


def select_unfrozen(backbone, spec: Unfreeze) -> list[str]:
    """Names of the backbone layers that train under `spec`, input to output."""
    layers = weighted_layers(backbone)
    names = [layer.name for layer in layers]
    if spec.mode == 'none':
        return []
    if spec.mode == 'all':
        return names
    if spec.mode == 'top_layers':
        return names[-spec.top_layers:]
    if spec.mode == 'top_fraction':
        return names[-math.ceil(spec.top_fraction * len(names)):]
    if spec.mode == 'from_layer':
        all_names = [layer.name for layer in leaf_layers(backbone)]
        if spec.from_layer not in all_names:
            raise ValueError(f'unfreeze.from_layer = {spec.from_layer!r}: no such layer in the backbone; '
                             f'its layers are {", ".join(all_names)}')
        later = set(all_names[all_names.index(spec.from_layer):])
        return [name for name in names if name in later]
    selected = [name for name in names if re.search(spec.pattern, name)]
    if not selected:
        raise ValueError(f'unfreeze.pattern = {spec.pattern!r}: matches no backbone layer with weights; '
                         f'they are {", ".join(names)}')
    return selected


def is_batchnorm(layer) -> bool:
    return isinstance(layer, keras.layers.BatchNormalization)


def apply_unfreeze(backbone, spec: Unfreeze, train_batchnorm: bool = False) -> list[str]:
    """Sets `trainable` on every backbone layer per `spec`; returns the names of those that train.

    The model must be compiled again afterwards for Keras to pick up the change.
    """
    selected = set(select_unfrozen(backbone, spec))
    leaves = leaf_layers(backbone)
    unfrozen = [layer.name for layer in leaves
                if layer.name in selected and (train_batchnorm or not is_batchnorm(layer))]
    # Setting a model's `trainable` sets it on everything inside, so outer models go first: a nested
    # model trains when any of its layers does, and then each layer is set.
    backbone.trainable = bool(unfrozen)
    for model in _nested_models(backbone):
        model.trainable = any(layer.name in unfrozen for layer in leaf_layers(model))
    for layer in leaves:
        layer.trainable = layer.name in unfrozen
    return unfrozen
