import importlib

import keras
import numpy as np
import pytest

from components.training import backbone as backbone_lib
from components.training import backbone_inputs
from components.config import APPLICATION_FAMILIES, ImageShape

# Large enough for every family (InceptionV3 and InceptionResNetV2 need 75).
SHAPE = ImageShape(height=75, width=75, channels=3)


def _constructors():
    return sorted(name for name in dir(keras.applications)
                  if name[0].isupper() and callable(getattr(keras.applications, name)))


def test_every_keras_application_has_a_family_and_the_family_is_its_module():
    listed = {name: family for family, (_, names) in APPLICATION_FAMILIES.items() for name in names}
    assert sorted(listed) == _constructors()
    for name, family in listed.items():
        assert getattr(keras.applications, name).__module__.rsplit('.', 1)[-1] == family


# MobileNetV2's family runs in `make test-fast`; the rest build full-size networks (seconds each).
@pytest.mark.parametrize('family', [family if family == 'mobilenet_v2' else pytest.param(family, marks=pytest.mark.slow)
                                    for family in sorted(APPLICATION_FAMILIES)])
def test_the_network_receives_what_its_preprocess_input_makes_of_0_255_pixels(family, tmp_path):
    mode, names = APPLICATION_FAMILIES[family]
    # The first constructor of each family is its smallest.
    backbone = backbone_lib.build_keras_application(names[0], None, {}, SHAPE)
    path = str(tmp_path / 'backbone.keras')
    backbone.save(path)
    loaded = backbone_lib.load_backbone(path)

    layer = loaded.get_layer(backbone_inputs.LAYER_NAME)
    assert loaded.layers[1] is layer and layer.mode == mode
    # The application, nested whole, reads the preprocessing layer's output and nothing else.
    network = loaded.layers[2]
    assert isinstance(network, keras.Model) and len(loaded.layers) == 3
    assert [n.operation.name for n in network._inbound_nodes[0].parent_nodes] == [layer.name]
    received = keras.Model(loaded.input, layer.output)

    images = np.random.default_rng(0).random((4, SHAPE.height, SHAPE.width, 3), dtype=np.float32)
    expected = importlib.import_module(f'keras.applications.{family}').preprocess_input(images.copy() * 255.0)
    np.testing.assert_allclose(received.predict(images, verbose=0), expected, rtol=1e-5, atol=1e-5)


def test_stated_preprocessing_overrides_the_family():
    backbone = backbone_lib.build_keras_application('MobileNetV2', None, {'alpha': 0.35},
                                                    ImageShape(height=32, width=32, channels=3), 'raw255')
    images = np.full((1, 32, 32, 3), 0.5, dtype=np.float32)
    prepared = keras.Model(backbone.input, backbone.get_layer(backbone_inputs.LAYER_NAME).output)
    np.testing.assert_allclose(prepared.predict(images, verbose=0), 127.5)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="preprocessing mode 'bgr'"):
        backbone_inputs.InputPreprocessing('bgr')
