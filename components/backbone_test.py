import os

import keras
import numpy as np
import pytest

from components import backbone as backbone_lib
from pipeline.config import BackboneSection, ImageShape, SourceTask, validate

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
