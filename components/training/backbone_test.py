import os
import re

import keras
import numpy as np
import pytest

from components.training import backbone as backbone_lib
from components.config import BackboneSection, ImageShape, SourceTask, validate

SHAPE = ImageShape(height=8, width=8, channels=1)


def test_source_task_backbone_is_built_once_and_learns_its_task(tmp_path):
    section = validate({'source_task': {'epochs': 3}}, BackboneSection)
    uri = backbone_lib.prepare_backbone(section, SHAPE, str(tmp_path))
    report_path = os.path.join(uri, backbone_lib.SOURCE_TASK_REPORT)
    modified = os.path.getmtime(report_path)
    assert backbone_lib.prepare_backbone(section, SHAPE, str(tmp_path)) == uri
    assert os.path.getmtime(report_path) == modified
    assert not os.path.exists(uri + '.partial')
    model = backbone_lib.load_backbone(backbone_lib.backbone_file(os.path.join(uri, 'Format-Serving')))
    assert model.output.shape[-1] == 64


def test_pretrain_reaches_far_above_chance(tmp_path):
    report = backbone_lib.pretrain_source_task(SourceTask(epochs=5), SHAPE, str(tmp_path / 'b'))
    # Five classes: chance is 0.2.
    assert report['held_out_accuracy'] > 0.8


def test_keras_file_backbone_is_imported_as_is(tmp_path):
    path = str(tmp_path / 'mine.keras')
    backbone_lib.build_digits_cnn(SHAPE).save(path)
    section = validate({'keras_file': path}, BackboneSection)
    uri = backbone_lib.prepare_backbone(section, SHAPE, str(tmp_path / 'cache'))
    assert uri == path
    # TFX hands the Trainer <uri>/Format-Serving.
    assert backbone_lib.backbone_file(os.path.join(uri, 'Format-Serving')) == path


def test_backbone_file_reports_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match='no backbone.keras'):
        backbone_lib.backbone_file(str(tmp_path / 'Format-Serving'))


def test_feature_map_backbone_is_pooled(tmp_path):
    inputs = keras.Input((8, 8, 1))
    path = str(tmp_path / 'feature_map.keras')
    keras.Model(inputs, keras.layers.Conv2D(5, 3)(inputs)).save(path)
    assert tuple(backbone_lib.load_backbone(path).output.shape) == (None, 5)


@pytest.mark.slow
def test_keras_application_from_a_weights_file(tmp_path):
    shape = ImageShape(height=32, width=32, channels=3)
    reference = backbone_lib.build_keras_application('MobileNetV2', None, {'alpha': 0.35}, shape)
    weights = str(tmp_path / 'mobilenet.weights.h5')
    # A weights file of the network itself (as Keras publishes them), not of the backbone around it.
    reference.layers[-1].save_weights(weights)
    section = validate({'keras_application': {'name': 'MobileNetV2', 'weights': weights, 'kwargs': {'alpha': 0.35}}},
                       BackboneSection)
    uri = backbone_lib.prepare_backbone(section, shape, str(tmp_path / 'cache'))
    loaded = backbone_lib.load_backbone(os.path.join(uri, backbone_lib.BACKBONE_FILE))
    images = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), reference.predict(images, verbose=0), atol=1e-5)


def test_unknown_keras_application_is_named():
    with pytest.raises(ValueError, match="'NoSuchNet': not in keras.applications"):
        backbone_lib.build_keras_application('NoSuchNet', None, {}, SHAPE)


def test_a_backbone_on_object_storage_is_found_and_loaded(tmp_path):
    """TensorFlow's in-memory file system (ram://) stands in for gs:// or s3://: same code path."""
    import tensorflow as tf

    model = backbone_lib.build_digits_cnn(SHAPE)
    local = str(tmp_path / backbone_lib.BACKBONE_FILE)
    model.save(local)
    tf.io.gfile.makedirs('ram://backbones/v1')
    tf.io.gfile.copy(local, 'ram://backbones/v1/' + backbone_lib.BACKBONE_FILE, overwrite=True)
    tf.io.gfile.copy(local, 'ram://backbones/cnn.keras', overwrite=True)
    assert backbone_lib.backbone_file('ram://backbones/v1/Format-Serving') == 'ram://backbones/v1/backbone.keras'
    assert backbone_lib.backbone_file('ram://backbones/cnn.keras') == 'ram://backbones/cnn.keras'
    loaded = backbone_lib.load_backbone('ram://backbones/v1/backbone.keras')
    for old, new in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(old, new)
    with pytest.raises(FileNotFoundError, match='no backbone.keras'):
        backbone_lib.backbone_file('ram://backbones/missing')


def _payloads(marker: str) -> dict:
    """Objects a crafted config.json may name, each of which would write `marker` if it ran."""
    return {
        'os.system': {'module': 'os', 'class_name': 'system', 'config': {'command': f'touch {marker}'},
                      'registered_name': None, 'name': 'payload', 'inbound_nodes': []},
        'subprocess.Popen': {'module': 'subprocess', 'class_name': 'Popen', 'config': {'args': ['touch', marker]},
                             'registered_name': None, 'name': 'payload', 'inbound_nodes': []},
        'builtins.exec': {'module': 'keras.layers', 'class_name': 'Lambda', 'registered_name': None,
                          'name': 'payload', 'inbound_nodes': [],
                          'config': {'name': 'payload', 'arguments': {'source': f'open({marker!r}, "w")'},
                                     'function': {'module': 'builtins', 'class_name': 'function',
                                                  'config': 'exec', 'registered_name': 'function'}}},
    }


PAYLOADS = tuple(_payloads(''))


def crafted_backbone(directory, payload: str):
    """A real digits backbone saved by Keras, with the object `payload` (one of PAYLOADS) put among the
    layers of its config.json. Returns (the .keras file, the marker file the payload would write)."""
    import json
    import zipfile

    real, crafted, marker = directory / 'real.keras', directory / 'backbone.keras', directory / 'marker'
    backbone_lib.build_digits_cnn(SHAPE).save(str(real))
    with zipfile.ZipFile(real) as source, zipfile.ZipFile(crafted, 'w') as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == 'config.json':
                config = json.loads(data)
                config['config']['layers'].insert(1, _payloads(str(marker))[payload])
                data = json.dumps(config).encode()
            target.writestr(item, data)
    return crafted, marker


@pytest.mark.parametrize('payload', PAYLOADS)
def test_keras_safe_mode_and_the_loader_refuse_a_backbone_that_names_code(tmp_path, payload):
    crafted, marker = crafted_backbone(tmp_path, payload)
    assert keras.__version__ == '3.12.4'
    with pytest.raises(TypeError, match='Could not locate'):
        keras.saving.load_model(str(crafted), safe_mode=True)
    refused = ('keras.layers.Lambda, which carries code' if payload == 'builtins.exec' else payload)
    with pytest.raises(ValueError, match=f'^model.backbone: {re.escape(str(crafted))} names {re.escape(refused)} in its config.json; '):
        backbone_lib.load_backbone(str(crafted))
    assert not marker.exists()


def test_the_project_s_registered_classes_pass_and_live_in_its_components(tmp_path):
    """keras_archive admits `staged_finetune>Name` from components.*: every class registered so is
    there, and a keras.applications backbone (which carries InputPreprocessing) loads."""
    from components.shared import keras_archive  # noqa: F401 - registers the schedules
    from components.training import schedules

    registered = {name: obj for name, obj in keras.saving.get_custom_objects().items()
                  if name.startswith(keras_archive.PROJECT_PACKAGE + '>')}
    assert 'staged_finetune>InputPreprocessing' in registered
    assert all(obj.__module__.split('.')[0] == keras_archive.PROJECT_MODULES for obj in registered.values())
    path = str(tmp_path / 'app.keras')
    backbone_lib.build_keras_application('MobileNetV2', None, {'alpha': 0.35}, ImageShape(height=32, width=32,
                                                                                         channels=3)).save(path)
    assert backbone_lib.load_backbone(path).output.shape[-1] == 1280


def test_a_pinned_backbone_on_object_storage_is_verified_where_it_is_read(tmp_path):
    import hashlib

    import tensorflow as tf

    local = str(tmp_path / backbone_lib.BACKBONE_FILE)
    backbone_lib.build_digits_cnn(SHAPE).save(local)
    with open(local, 'rb') as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    tf.io.gfile.makedirs('ram://pinned')
    tf.io.gfile.copy(local, 'ram://pinned/backbone.keras', overwrite=True)
    assert backbone_lib.load_backbone('ram://pinned/backbone.keras', digest.upper()).output.shape[-1] == 64
    expected = 'f' * 64
    with pytest.raises(ValueError) as error:
        backbone_lib.load_backbone('ram://pinned/backbone.keras', expected)
    assert str(error.value) == f'model.backbone.sha256: ram://pinned/backbone.keras has sha256 {digest}; expected {expected}'


def test_a_pinned_weights_file_is_verified_before_the_backbone_is_built(tmp_path):
    weights = tmp_path / 'net.weights.h5'
    weights.write_bytes(b'\x89HDF\r\n\x1a\n not really weights')
    section = validate({'keras_application': {'name': 'MobileNetV2', 'weights': str(weights)}, 'sha256': '0' * 64},
                       BackboneSection)
    with pytest.raises(ValueError, match=f'^model.backbone.sha256: {re.escape(str(weights))} has sha256 [0-9a-f]{{64}}; expected 0{{64}}$'):
        backbone_lib.prepare_backbone(section, ImageShape(height=32, width=32, channels=3), str(tmp_path / 'cache'))
    assert not (tmp_path / 'cache').exists()
