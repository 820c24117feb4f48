"""Trainer behaviour that needs a process of its own: a kill and resume, and two logical CPU devices."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.e2e

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STAGES = [
    {'name': 'head', 'epochs': 2, 'unfreeze': 'none', 'optimizer': {'name': 'adam', 'learning_rate': 1e-2}},
    {'name': 'finetune', 'epochs': 8, 'unfreeze': 'all', 'optimizer': {'name': 'adam', 'learning_rate': 1e-3},
     'schedule': {'name': 'cosine', 'warmup_steps': 5}},
]


def staged_training(work_dir: str, log_path: str, logical_cpus: int = 1) -> None:
    """Runs STAGES on synthetic data in this process and writes their log entries to `log_path`."""
    import numpy as np
    import tensorflow as tf

    if logical_cpus > 1:
        cpu = tf.config.list_physical_devices('CPU')[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus)
    import keras

    from components.training import backbone as backbone_lib
    from components.training import network, stage_loop
    from components.config import HeadSection, ImageShape, Stage, validate

    keras.utils.set_random_seed(0)
    shape = ImageShape(height=8, width=8, channels=1)
    rng = np.random.default_rng(0)
    flat = rng.random((256, 64), dtype=np.float32)
    y = (flat[:, :32].mean(axis=1) > 0.5).astype(np.int64)
    x = 255 * flat.reshape(256, 8, 8, 1)  # images as the model takes them: pixel values 0-255
    train = tf.data.Dataset.from_tensor_slices(({'image_xf': x}, y)).repeat().batch(16)
    evaluation = tf.data.Dataset.from_tensor_slices(({'image_xf': x}, y)).batch(64)
    strategy = network.choose_strategy('CPU' if logical_cpus > 1 else 'GPU')
    with strategy.scope():
        backbone = backbone_lib.build_digits_cnn(shape)
        model = network.build_model(backbone, shape, HeadSection())
        frozen_before = [np.array(w) for w in backbone.get_weights()]
        stages = [validate(s, Stage) for s in STAGES]
        entries = stage_loop.train_stages(model, backbone, stages, train, evaluation, steps_per_epoch=16,
                                       decision_threshold=0.5, batch_size=16, work_dir=work_dir)
    result = {
        'strategy': type(strategy).__name__,
        'replicas': strategy.num_replicas_in_sync,
        'layers': [(w.path, list(w.shape)) for w in model.weights],
        'stages': entries,
        'backbone_changed': any(not np.array_equal(a, b) for a, b in zip(frozen_before, backbone.get_weights())),
    }
    with open(log_path, 'w') as f:
        json.dump(result, f)


def _start(work_dir, log_path, logical_cpus=1, stdout=subprocess.DEVNULL):
    code = ('import sys; from components.training.trainer_process_test import staged_training; '
            'staged_training(sys.argv[1], sys.argv[2], int(sys.argv[3]))')
    return subprocess.Popen([sys.executable, '-c', code, str(work_dir), str(log_path), str(logical_cpus)],
                            cwd=REPO, stdout=stdout, stderr=subprocess.PIPE, text=True)


def _kill_in_stage_two(work_dir, log_path) -> int:
    """Starts the training and SIGKILLs it once stage two has backed up two epochs or more;
    returns the number of epochs its backup holds."""
    metadata = work_dir / 'finetune.backup' / 'training_metadata.json'
    child = _start(work_dir, log_path)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and child.poll() is None:
        try:
            if json.loads(metadata.read_text())['epoch'] >= 2:
                break
        except (OSError, ValueError):  # not there yet
            pass
        time.sleep(0.05)
    assert child.poll() is None, 'the training ended before it could be killed: ' + child.stderr.read()[-2000:]
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not log_path.exists()
    return json.loads(metadata.read_text())['epoch']


def test_killed_in_stage_two_resumes_from_its_last_epoch(tmp_path):
    work_dir, log_path = tmp_path / 'work', tmp_path / 'log.json'
    completed_epochs = _kill_in_stage_two(work_dir, log_path)
    assert 2 <= completed_epochs < 8
    # Every file was written through a temporary name; none is left behind.
    assert not [p for p in work_dir.rglob('*') if '.partial' in p.name]

    rerun = _start(work_dir, log_path)
    assert rerun.wait(timeout=600) == 0, rerun.stderr.read()[-3000:]
    result = json.loads(log_path.read_text())
    head, finetune = result['stages']
    assert head['restored_after_restart'] is True
    assert finetune['resumed_at_epoch'] == completed_epochs + 1
    assert [e['epoch'] for e in finetune['epochs']] == list(range(completed_epochs + 1, 9))
    # The schedule went on from the step it had reached, not from the warm-up.
    assert len(finetune['lr_by_step']) == (8 - completed_epochs) * 16
    assert finetune['lr_by_step'][0] < 1e-3 and finetune['lr_by_step'][0] > 0
    assert not (work_dir / 'finetune.backup').exists()


def test_two_logical_devices_train_under_mirrored_strategy(tmp_path):
    single = _start(tmp_path / 'one', tmp_path / 'one.json', logical_cpus=1)
    mirrored = _start(tmp_path / 'two', tmp_path / 'two.json', logical_cpus=2)
    assert single.wait(timeout=600) == 0, single.stderr.read()[-3000:]
    assert mirrored.wait(timeout=600) == 0, mirrored.stderr.read()[-3000:]
    one = json.loads((tmp_path / 'one.json').read_text())
    two = json.loads((tmp_path / 'two.json').read_text())
    assert two['strategy'] == 'MirroredStrategy' and two['replicas'] == 2
    assert one['strategy'] != 'MirroredStrategy'
    assert two['layers'] == one['layers']
    assert [s['unfrozen_layers'] for s in two['stages']] == [[], ['block1_conv', 'block2_conv', 'block3_conv']]
    assert two['backbone_changed'] is True
    for stage in two['stages']:
        assert all(map(lambda e: e['loss'] == e['loss'], stage['epochs']))

