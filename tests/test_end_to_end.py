"""The real pipeline, run through the CLI on the embedded default, once per test session.

First run: nothing in production yet, so only the floors apply; it pushes. Second run in the same
place, the same model (the Trainer is cached), with floors between each metric's lower bound and
its value: not blessed, exit 3, the served model untouched. Third run: the same floors on the point
rule (evaluation.confidence: null): blessed, as the point rule has it. Fourth run: the same model
against a production model that catches one test positive more: not a regression, pushed.
Fifth run: a weaker candidate (head stage only) clears low floors but is worse than the model in
production by the paired test, and is blocked. Many assertions read the outputs of these runs.
"""

import json
import os
import re

import pytest

from components.shared.artifact_files import GATE_REPORT_HTML
from tests.conftest import CONFIG, image_files_and_served


pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group('default_run')]
PIPELINE_NODES = {
    'ImportExampleGen', 'StatisticsGen', 'SchemaGen', 'ExampleValidator', 'DataValidationGate', 'Transform',
    'backbone_importer', 'Trainer', 'ProductionModel', 'Evaluator', 'Pusher', 'RunReport',
}


def _report(records):
    from components.shared import artifact_files
    from components.gate import gate_report

    with open(os.path.join(records['Evaluator'].outputs['evaluation'][0].uri, artifact_files.GATE_REPORT_JSON)) as f:
        return json.load(f)


def _pushed_path(lines):
    assert lines[-1].startswith('pushed: '), lines[-5:]
    return lines[-1][len('pushed: '):]


def test_run_exits_0_and_ends_with_pushed_savedmodel(first_run):
    assert first_run.result.returncode == 0, first_run.result.stdout[-3000:] + first_run.result.stderr[-3000:]
    pushed = _pushed_path(first_run.lines)
    assert pushed.startswith(os.path.join(first_run.run_dir, 'serving'))
    assert os.path.isfile(os.path.join(pushed, 'saved_model.pb'))
    assert any(line.startswith('training log: ') for line in first_run.lines)
    assert 'gate baseline: no model in production yet; only the floors apply' in first_run.lines


def test_what_the_run_wrote_is_readable_by_its_user_only(first_run):
    """The Examples hold the input images and the store says what was trained on: no group or
    other permission bit on the run directory or anything under it."""
    import stat

    examples = first_run.records['ImportExampleGen'].outputs['examples'][0].uri
    [example_file, *_] = sorted(os.path.join(examples, 'Split-train', name)
                                for name in os.listdir(os.path.join(examples, 'Split-train')))
    for path in (first_run.run_dir, os.path.join(first_run.run_dir, 'metadata.sqlite'), example_file):
        assert stat.S_IMODE(os.lstat(path).st_mode) & 0o077 == 0, (path, oct(os.lstat(path).st_mode))
    assert stat.S_IMODE(os.stat(first_run.run_dir).st_mode) == 0o700
    shared = [path for root, dirs, files in os.walk(first_run.run_dir) for path in
              (os.path.join(root, name) for name in dirs + files) if os.lstat(path).st_mode & 0o077]
    assert shared == []


def test_progress_names_each_component_and_prints_one_line_per_epoch(first_run, training_log):
    out = first_run.result.stdout
    for node in PIPELINE_NODES - {'backbone_importer'}:
        assert re.search(rf'^\[ *\d+s\] {node}: running$', out, re.M), node
        assert re.search(rf'^\[ *\d+s\] {node}: done$', out, re.M), node
    for stage in training_log['stages']:
        lines = re.findall(rf"^ +{stage['name']} epoch (\d+)/{stage['epochs_planned']}  lr (\S+)  loss (\S+)", out, re.M)
        assert [int(n) for n, _, _ in lines] == list(range(1, stage['epochs_run'] + 1))
        assert [float(loss) for _, _, loss in lines] == pytest.approx([e['loss'] for e in stage['epochs']], abs=1e-4)
    # TensorFlow's and Keras' own output stays out of the console by default.
    assert 'oneDNN' not in out + first_run.result.stderr and 'Epoch 1/' not in out


# Every line a normal run prints: progress, epochs, the summary. Anything else (a library's
# warning, a traceback, TensorFlow's "Exception ignored in ..." noise) fails the test below.
OWN_LINES = re.compile(r'^(\[ *\d+s\] \w+: (running|done|cached)|        \S.*|=== \S+: finished in \d+ s ===|'
                       r'stage \S+: .*|gate .*|decision threshold: .*|(training log|run report|pushed): .*|)$')


def test_the_console_holds_only_our_own_lines(first_run):
    assert first_run.result.stderr == ''
    foreign = [line for line in first_run.result.stdout.splitlines() if not OWN_LINES.match(line)]
    assert foreign == []


def test_every_component_executed(first_run):
    states = {node: record.state for node, record in first_run.records.items()}
    assert set(states) == PIPELINE_NODES
    assert set(states.values()) == {'COMPLETE'}, states


def test_trainer_started_from_the_imported_backbone(first_run):
    imported = first_run.records['backbone_importer'].outputs['result'][0]
    trainer_input = first_run.records['Trainer'].inputs['base_model'][0]
    assert trainer_input.id == imported.id
    assert os.path.isfile(os.path.join(imported.uri, 'backbone.keras'))
    with open(os.path.join(imported.uri, 'source_task.json')) as f:
        source_task = json.load(f)
    # The backbone learned its source task (digits 0-4), which the target task never sees.
    assert source_task['classes'] == [0, 1, 2, 3, 4]
    assert source_task['held_out_accuracy'] > 0.9


@pytest.fixture(scope='session')
def training_log(first_run):
    path = next(line for line in first_run.lines if line.startswith('training log: '))[len('training log: '):]
    assert path.startswith(first_run.records['Trainer'].outputs['model_run'][0].uri)
    with open(path) as f:
        return json.load(f)


def test_stage_one_trains_the_head_with_the_backbone_frozen(training_log):
    head = training_log['stages'][0]
    assert head['name'] == 'head'
    assert head['unfrozen_layers'] == []
    assert head['non_trainable_params'] > head['trainable_params'] > 0


def test_stage_two_unfreezes_the_backbone_with_a_smaller_learning_rate(training_log):
    head, finetune = training_log['stages']
    assert finetune['unfrozen_layers'] == ['block1_conv', 'block2_conv', 'block3_conv']
    assert finetune['trainable_params'] > head['trainable_params']
    assert max(finetune['lr_by_step']) < min(head['lr_by_step'])


def test_learning_rate_is_logged_for_every_step_and_epoch(training_log):
    for stage in training_log['stages']:
        assert len(stage['lr_by_step']) == stage['epochs_run'] * stage['steps_per_epoch']
        assert len(stage['epochs']) == stage['epochs_run'] >= 1
        for epoch in stage['epochs']:
            assert {'learning_rate', 'loss', 'val_loss', 'val_recall', 'val_precision'} <= set(epoch)


def test_pushed_model_predicts_from_serialized_examples(first_run):
    import numpy as np
    import tensorflow as tf

    model = tf.saved_model.load(_pushed_path(first_run.lines))
    raw = list(tf.data.TFRecordDataset(os.path.join(first_run.run_dir, 'data', 'digits.tfrecord')).take(200))
    labels = [tf.train.Example.FromString(r.numpy()).features.feature['label'].int64_list.value[0] for r in raw]
    probabilities = model.signatures['serving_default'](examples=tf.constant([r.numpy() for r in raw]))['probabilities']
    probabilities = probabilities.numpy()[:, 0]
    assert probabilities.shape == (200,)
    assert np.all((probabilities >= 0) & (probabilities <= 1))
    predicted = probabilities > 0.5
    actual = np.array(labels) == 9
    assert (predicted == actual).mean() > 0.9


def test_predict_sends_image_files_as_a_tf_serving_client_would(first_run, run_cli, tmp_path):
    """`predict` on PNG files holding the bytes of the data's own images prints, per file, the
    probability and decision the served model gives the data's serialized examples; a stranger's
    RGB JPEG of another size goes through too; an unreadable file is named, exit 2."""
    import io
    import re

    import numpy as np
    from PIL import Image

    pushed = _pushed_path(first_run.lines)
    files, served = image_files_and_served(first_run.run_dir, pushed, tmp_path, 12)
    config = ['--config', CONFIG, '--set', f'pipeline.runs_dir={os.path.dirname(first_run.run_dir)}']

    result = run_cli('predict', *config, *files)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == f'model: {pushed}'
    printed = [re.fullmatch(rf'{re.escape(name)}: probability (\S+) of class 9, decision ([01]) \(.*; threshold 0\.5\)',
                            line) for name, line in zip(files, lines[1:])]
    assert len(lines) == len(files) + 1 and all(printed), lines
    np.testing.assert_allclose([float(m[1]) for m in printed], served['probabilities'][:, 0], atol=5e-5)
    assert [int(m[2]) for m in printed] == list(served['decision'])

    stranger = tmp_path / 'photo.jpg'
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 32, 3), np.uint8)).save(buffer, format='JPEG')
    stranger.write_bytes(buffer.getvalue())
    other = run_cli('predict', *config, '--version', os.path.basename(pushed), str(stranger))
    assert other.returncode == 0, other.stderr
    assert 0 <= float(re.search(r'probability (\S+)', other.stdout)[1]) <= 1

    cut = tmp_path / 'cut.png'
    cut.write_bytes(open(files[0], 'rb').read()[:30])
    bad = run_cli('predict', *config, files[0], str(cut), str(tmp_path / 'missing.png'))
    assert bad.returncode == 2 and bad.stdout == ''
    assert [line.split(': ')[1] for line in bad.stderr.strip().splitlines()] == [str(cut), str(tmp_path / 'missing.png')]


def test_serving_from_raw_examples_equals_the_trained_keras_model_on_the_decoded_images(first_run):
    """Training and serving see the same pixels: the pushed SavedModel, fed serialized raw
    tf.Examples, gives the predictions of the trained Keras model (rebuilt from the backbone and
    the weights pushed beside it) on the images decoded here with Pillow."""
    import numpy as np

    from components.config import load_config

    from tests.conftest import CONFIG, served_and_keras_predictions

    served, keras_predictions, pixels = served_and_keras_predictions(first_run.records, _pushed_path(first_run.lines),
                                                                     load_config(CONFIG))
    assert pixels.shape[1:] == (8, 8, 1)
    np.testing.assert_allclose(keras_predictions, served['probabilities'], atol=1e-6)


def _split_files(records, split):
    import tensorflow as tf

    examples_uri = records['ImportExampleGen'].outputs['examples'][0].uri
    return tf.io.gfile.glob(os.path.join(examples_uri, f'Split-{split}', '*'))


def test_gate_reads_the_split_that_did_not_steer_training(first_run):
    import tensorflow as tf

    trainer, evaluator = first_run.records['Trainer'], first_run.records['Evaluator']
    assert json.loads(trainer.properties['eval_args'])['splits'] == ['eval']
    assert json.loads(trainer.properties['train_args'])['splits'] == ['train']
    assert json.loads(evaluator.properties['example_splits']) == ['test']
    test_count = sum(1 for _ in tf.data.TFRecordDataset(_split_files(first_run.records, 'test'), compression_type='GZIP'))
    report = _report(first_run.records)
    assert report['split'] == 'test'
    assert report['metrics']['Overall']['example_count'] == test_count


def test_summary_numbers_are_tfma_s_and_match_an_independent_count(first_run):
    """Recall and precision recomputed from the exported model's predictions on the test split."""
    import numpy as np
    import tensorflow as tf

    model_uri = first_run.records['Trainer'].outputs['model'][0].uri
    model = tf.saved_model.load(os.path.join(model_uri, 'Format-Serving'))
    raw = [r.numpy() for r in tf.data.TFRecordDataset(_split_files(first_run.records, 'test'), compression_type='GZIP')]
    labels = np.array([tf.train.Example.FromString(r).features.feature['label'].int64_list.value[0] for r in raw])
    probabilities = model.signatures['serving_default'](examples=tf.constant(raw))['probabilities'].numpy()[:, 0]
    predicted, actual = probabilities > 0.5, labels == 9
    recall = np.sum(predicted & actual) / np.sum(actual)
    precision = np.sum(predicted & actual) / np.sum(predicted)

    from statsmodels.stats.proportion import proportion_confint

    from components.config import load_config

    floors = load_config(CONFIG).evaluation.thresholds
    checks = {c['metric']: c for c in _report(first_run.records)['checks']}
    assert abs(checks['recall']['value'] - recall) < 1e-6
    assert abs(checks['precision']['value'] - precision) < 1e-6
    counts = {'recall': (np.sum(predicted & actual), np.sum(actual)),
              'precision': (np.sum(predicted & actual), np.sum(predicted))}
    for name in ('recall', 'precision'):
        k, n = (int(v) for v in counts[name])
        low, high = proportion_confint(k, n, alpha=0.05, method='beta')
        assert checks[name]['interval']['low'] == pytest.approx(low, abs=1e-6)
        assert checks[name]['interval']['high'] == pytest.approx(high, abs=1e-6)
        assert (f'gate {name}: {k / n:.4f} [{low:.3f}, {high:.3f}], lower bound {low:.3f} >= floor '
                f'{getattr(floors, name):g} (95% Clopper-Pearson, {k}/{n}) pass (split test)') in first_run.lines


def test_gate_report_is_written_next_to_the_evaluation_and_printed(first_run):
    evaluation_uri = first_run.records['Evaluator'].outputs['evaluation'][0].uri
    line = next(line for line in first_run.lines if line.startswith('gate report: '))
    assert line == f"gate report: {os.path.join(evaluation_uri, GATE_REPORT_HTML)}"
    with open(os.path.join(evaluation_uri, GATE_REPORT_HTML)) as f:
        page = f.read()
    assert 'Gate report: BLESSED' in page and page.count('<svg') == 2 and 'actual positive' in page
    report = _report(first_run.records)
    assert report['blessed'] is True and report['baseline'] is None
    matrix = report['confusion_matrix']
    assert matrix['true_positives'] + matrix['false_negatives'] + matrix['false_positives'] + matrix['true_negatives'] \
        == report['metrics']['Overall']['example_count']


def test_a_model_whose_lower_bound_misses_the_floor_is_not_pushed_and_serving_is_untouched(rejected_run):
    assert rejected_run.result.returncode == 3, rejected_run.result.stdout[-3000:] + rejected_run.result.stderr[-3000:]
    report = _report(rejected_run.records)
    checks = {c['metric']: c for c in report['checks'] if c['kind'] == 'floor'}
    misses = []
    for metric, floor in rejected_run.floors.items():
        check = checks[metric]
        # The value clears the floor, its 95% lower bound does not.
        assert check['value'] >= floor > check['interval']['low'] and not check['passed']
        text = f"{check['value']:.4f} [{check['interval']['low']:.3f}, {check['interval']['high']:.3f}]"
        assert any(line.startswith(f'gate {metric}: {text}, lower bound ') and f'< floor {floor:g}' in line
                   and line.endswith('FAIL (split test)') for line in rejected_run.lines), metric
        misses.append(f"{metric} {text}: lower bound {check['interval']['low']:.3f} < floor {floor:g}")
    assert rejected_run.lines[-1] == 'not pushed: ' + '; '.join(misses)  # every metric that missed is named
    assert report['tfma_blessed'] is True and report['blessed'] is False
    assert rejected_run.serving_after == rejected_run.serving_before
    pushed = rejected_run.records['Pusher'].outputs['pushed_model'][0]
    assert pushed.custom_properties['pushed'].int_value == 0
    blessing = rejected_run.records['Evaluator'].outputs['blessing'][0]
    assert blessing.custom_properties['blessed'].int_value == 0


def test_the_baseline_is_the_model_in_production(first_run, rejected_run):
    pushed = _pushed_path(first_run.lines)
    assert f'gate baseline: model in production {pushed}' in rejected_run.lines
    production = rejected_run.records['ProductionModel'].outputs['model'][0]
    assert rejected_run.records['Evaluator'].inputs['baseline_model'][0].id == production.id
    assert production.custom_properties['production_path'].string_value == pushed
    # Same trained model as in production (the Trainer was cached): no regression, only the floors fail.
    report = _report(rejected_run.records)
    drops = [c for c in report['checks'] if c['kind'] == 'max_drop']
    assert {c['metric'] for c in drops} == {'recall', 'precision'}
    assert all(c['passed'] and c['value'] == c['baseline'] for c in drops)


def test_on_the_point_rule_the_same_model_and_floors_pass_as_before(rejected_run, point_rule_run):
    assert point_rule_run.result.returncode == 0, point_rule_run.result.stdout[-3000:] + point_rule_run.result.stderr[-3000:]
    report = _report(point_rule_run.records)
    assert report['blessed'] is True and report['confidence'] is None
    assert all(c['rule'] == 'point' and c['interval'] is None and c['passed'] for c in report['checks'])
    for metric, floor in rejected_run.floors.items():
        assert any(line.startswith(f'gate {metric}: ') and line.endswith(f'>= {floor:g} (point estimate) pass (split test)')
                   for line in point_rule_run.lines), metric
    # The model is the one in production: blessed again, it is not pushed a second time.
    assert point_rule_run.lines[-1].startswith('already in production: ')
    assert point_rule_run.serving_after == point_rule_run.serving_before


def test_one_positive_fewer_than_production_is_not_a_regression(one_apart_run):
    assert one_apart_run.result.returncode == 0, one_apart_run.result.stdout[-3000:] + one_apart_run.result.stderr[-3000:]
    report = _report(one_apart_run.records)
    assert report['baseline']['path'] == one_apart_run.production['path']
    [drop] = [c for c in report['checks'] if c['kind'] == 'max_drop' and c['metric'] == 'recall']
    comparison = drop['comparison']
    assert drop['rule'] == 'paired test' and (comparison['lost'], comparison['gained']) == (1, 0)
    n = comparison['n']
    assert comparison['candidate'] == [comparison['production'][0] - 1, n] and drop['passed']
    assert drop['baseline'] - drop['value'] == pytest.approx(1 / n) and 1 / n > drop['threshold']
    # The point rule calls that drop a regression; the paired test does not.
    assert report['tfma_blessed'] is False and report['blessed'] is True
    assert any(line.startswith(f'gate recall vs production: -{1 / n:.3f}, 1 of {n} positives lost, 0 gained; '
                               'not worse by more than 0.01 (p = ') for line in one_apart_run.lines)
    assert one_apart_run.lines[-1].startswith('pushed: ')


def test_a_regression_is_blocked_though_the_floors_pass(regressed_run):
    assert regressed_run.result.returncode == 3, regressed_run.result.stdout[-3000:] + regressed_run.result.stderr[-3000:]
    report = _report(regressed_run.records)
    assert all(c['passed'] for c in report['checks'] if c['kind'] == 'floor')
    failed = [c for c in report['checks'] if not c['passed']]
    assert failed and all(c['kind'] == 'max_drop' and c['rule'] == 'paired test' for c in failed)
    for check in failed:
        comparison = check['comparison']
        # Worse by more than max_drop at 95%: the low end of the drop's interval is above it.
        assert comparison['worse'] and comparison['drop_low'] > check['threshold']
        assert comparison['p_value'] < 0.025
    assert 'worse than production: ' in regressed_run.lines[-1]
    assert regressed_run.serving_after == regressed_run.serving_before
    # Same data as the first run: its steps answer from the cache and say so; the new stages train.
    out = regressed_run.result.stdout
    for node in ('ImportExampleGen', 'StatisticsGen', 'Transform'):
        assert re.search(rf'^\[ *\d+s\] {node}: cached$', out, re.M), node
    assert re.search(r'^\[ *\d+s\] Trainer: done$', out, re.M)
