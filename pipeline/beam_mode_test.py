import os

from pipeline import beam_mode
from components.config import load_config

LOCAL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs', 'local.yaml')


def _write(path, size):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        f.write(b'x' * size)


def _config(data, *overrides):
    return load_config(LOCAL, (f'data.path={data}', 'data.labels=[5, 6, 7, 8, 9]') + overrides)


def test_small_input_runs_in_process_and_large_input_in_worker_processes(tmp_path, monkeypatch):
    _write(str(tmp_path / 'a.tfrecord'), 300)
    _write(str(tmp_path / 'b.tfrecord'), 700)
    config = _config(tmp_path, 'data.source=tfrecord')
    assert beam_mode.input_bytes(config.data, str(tmp_path)) == 1000
    # No Beam argument at all: DirectRunner in this process, and TFX builds no package for workers.
    assert beam_mode.local_beam_args(config, str(tmp_path)) == () == beam_mode.IN_MEMORY
    monkeypatch.setattr(beam_mode, 'IN_MEMORY_BELOW_BYTES', 1000)
    assert beam_mode.local_beam_args(config, str(tmp_path)) == beam_mode.MULTI_PROCESSING
    assert '--direct_running_mode=multi_processing' in beam_mode.MULTI_PROCESSING


def test_the_config_s_beam_args_override_the_choice(tmp_path):
    _write(str(tmp_path / 'a.tfrecord'), 10)
    config = _config(tmp_path, 'data.source=tfrecord', 'pipeline.beam_args=["--direct_running_mode=multi_threading"]')
    assert beam_mode.local_beam_args(config, str(tmp_path)) == ('--direct_running_mode=multi_threading',)
    config = _config(tmp_path, 'data.source=tfrecord', 'pipeline.beam_args=[]')
    assert beam_mode.local_beam_args(config, str(tmp_path)) == ()


def test_only_the_spans_a_run_reads_count(tmp_path):
    for span, size in ((1, 5000), (2, 30), (10, 70)):
        _write(str(tmp_path / f'span-{span}' / '9' / 'a.png'), size)
    _write(str(tmp_path / 'notes.txt'), 999)
    newest = _config(tmp_path, 'data.source=images', 'data.pattern=span-{SPAN}/*/*')
    assert beam_mode.input_bytes(newest.data, str(tmp_path)) == 70
    window = _config(tmp_path, 'data.source=images', 'data.pattern=span-{SPAN}/*/*', 'data.rolling_spans=2')
    assert beam_mode.input_bytes(window.data, str(tmp_path)) == 100


def test_image_folders_count_the_images(tmp_path):
    _write(str(tmp_path / '5' / 'a.png'), 40)
    _write(str(tmp_path / '9' / 'b.jpg'), 60)
    _write(str(tmp_path / 'README'), 999)
    config = _config(tmp_path, 'data.source=images')
    assert beam_mode.input_bytes(config.data, str(tmp_path)) == 100


def test_a_csv_source_counts_the_images_beside_it(tmp_path):
    (tmp_path / 'labels.csv').write_text('image,label\nimg/a.png,9\n')
    _write(str(tmp_path / 'img' / 'a.png'), 400)
    config = _config(tmp_path, 'data.source=csv', 'data.image_feature=image', 'data.label_feature=label')
    assert beam_mode.input_bytes(config.data, str(tmp_path)) == 400 + len('image,label\nimg/a.png,9\n')


def test_the_embedded_default_is_far_below_the_threshold(tmp_path):
    from components.training import digits

    digits.write_digits_tfrecords(str(tmp_path), (5, 6, 7, 8, 9), 'image', 'label')
    config = load_config(LOCAL)
    assert 0 < beam_mode.input_bytes(config.data, str(tmp_path)) < beam_mode.IN_MEMORY_BELOW_BYTES / 100
