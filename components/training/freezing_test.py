import pytest

from components.training import backbone as backbone_lib
from components.training import freezing
from components.config import ImageShape, Unfreeze, validate

WEIGHTED = ['block1_conv', 'block1_bn', 'block2_conv', 'block2_bn', 'block3_conv', 'block3_bn']


@pytest.fixture(scope='module')
def backbone():
    return backbone_lib.build_digits_cnn(ImageShape(height=8, width=8, channels=1))


def _spec(value) -> Unfreeze:
    return validate(value, Unfreeze)


@pytest.mark.parametrize('value, expected', [
    ('none', []),
    ('all', WEIGHTED),
    ({'top_layers': 2}, WEIGHTED[-2:]),
    ({'top_fraction': 0.5}, WEIGHTED[-3:]),
    ({'top_fraction': 0.1}, WEIGHTED[-1:]),
    ({'from_layer': 'block2_pool'}, WEIGHTED[-2:]),
    ({'from_layer': 'block2_conv'}, WEIGHTED[2:]),
    ({'pattern': 'conv$'}, ['block1_conv', 'block2_conv', 'block3_conv']),
])
def test_select_unfrozen(backbone, value, expected):
    assert freezing.select_unfrozen(backbone, _spec(value)) == expected


def test_unknown_layer_names_the_layers(backbone):
    with pytest.raises(ValueError, match="from_layer = 'nope': no such layer.*block1_conv"):
        freezing.select_unfrozen(backbone, _spec({'from_layer': 'nope'}))


def test_pattern_matching_nothing_is_an_error(backbone):
    with pytest.raises(ValueError, match='matches no backbone layer'):
        freezing.select_unfrozen(backbone, _spec({'pattern': 'dense'}))


def test_apply_keeps_batchnorm_frozen_unless_asked(backbone):
    assert freezing.apply_unfreeze(backbone, _spec('all')) == ['block1_conv', 'block2_conv', 'block3_conv']
    assert not backbone.get_layer('block1_bn').trainable
    assert freezing.apply_unfreeze(backbone, _spec('all'), train_batchnorm=True) == WEIGHTED
    assert backbone.get_layer('block1_bn').trainable


def test_apply_none_freezes_everything(backbone):
    assert freezing.apply_unfreeze(backbone, _spec('none')) == []
    assert backbone.trainable_weights == []


def test_layers_of_a_nested_network_are_unfrozen_one_by_one():
    # A keras.applications backbone nests the network whole behind its input preprocessing.
    backbone = backbone_lib.build_keras_application('MobileNetV2', None, {'alpha': 0.35},
                                                    ImageShape(height=32, width=32, channels=3))
    network = backbone.layers[-1]
    unfrozen = freezing.apply_unfreeze(backbone, _spec({'top_layers': 2}))
    assert unfrozen == ['Conv_1']  # the top two with weights are Conv_1 and its BatchNormalization
    assert network.trainable
    assert [w.path for w in backbone.trainable_weights] == [w.path for w in network.get_layer('Conv_1').weights]
    assert freezing.apply_unfreeze(backbone, _spec('none')) == [] and not backbone.trainable_weights
    assert freezing.select_unfrozen(backbone, _spec({'from_layer': 'out_relu'})) == []
