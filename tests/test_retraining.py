"""Scheduled retraining over image-folder spans, through the CLI, in one place:

span 1: trains from the backbone and pushes; span 2 arrives: warm-starts from the model in
production, is gated against it, pushes; the schedule fires again before new data: every step
comes from ML Metadata's cache, nothing is pushed twice; span 3 arrives with corrupted images and
labels nobody knows: stopped by validation (exit 4) before training, the served model untouched.
"""

import hashlib
import json
import os
import types

import pytest

from components import digits

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, 'configs', 'local.yaml')
WARM_START = ('trainer.warm_start={stages: [{name: refresh, epochs: 4, unfreeze: all, '
              'optimizer: {name: adam, learning_rate: 3e-4}}]}')

pytestmark = pytest.mark.e2e


def _run(run_cli, runs_dir, data):
    args = ['run', '--config', CONFIG]
    for override in (f'pipeline.runs_dir={runs_dir}', 'data.source=images', f'data.path={data}',
                     'data.pattern=span-{SPAN}/*/*', 'data.labels=[5, 6, 7, 8, 9]', WARM_START,
                     # Retraining on the whole of each new span, not the default's few labels.
                     'data.train_examples_per_class=null',
                     # Half the digits per span (~90 held-out examples, ~18 positives: one positive
                     # moves recall by ~0.05): floors and regression limits for that size.
                     'evaluation.thresholds={recall: 0.6, precision: 0.7}',
                     'evaluation.max_drop={recall: 0.15, precision: 0.15}'):
        args += ['--set', override]
    result = run_cli(*args)
    return types.SimpleNamespace(result=result, lines=result.stdout.strip().splitlines())


def _records(run_dir):
    from tfx import v1 as tfx

    from pipeline import outcome

    connection = tfx.orchestration.metadata.sqlite_metadata_connection_config(os.path.join(run_dir, 'metadata.sqlite'))
    return outcome.latest_run(connection)


def _training_log(records):
    with open(os.path.join(records['Trainer'].outputs['model_run'][0].uri, 'training_log.json')) as f:
        return json.load(f)


def _files(path):
    """{relative path: sha256} of every file under path."""
    digests = {}
    for directory, _, names in os.walk(path):
        for name in names:
            with open(os.path.join(directory, name), 'rb') as f:
                digests[os.path.relpath(os.path.join(directory, name), path)] = hashlib.sha256(f.read()).hexdigest()
    return digests


@pytest.fixture(scope='module')
def rounds(tmp_path_factory, run_cli):
    import numpy as np

    data = tmp_path_factory.mktemp('images')
    runs_dir = tmp_path_factory.mktemp('runs')
    run_dir = os.path.join(runs_dir, 'digits-finetune')
    done = []
    for span in (1, 2, None, 3):  # None: no new data
        # Spans 1 and 2 are the two halves of the digits; span 3 repeats the first half, broken.
        if span is not None:
            digits.write_digits_image_folders(str(data), (5, 6, 7, 8, 9), span, part=2 - span % 2, parts=2)
        if span == 3:  # corrupted images, and a class folder nobody configured
            for n in range(3):
                (data / 'span-3' / '9' / f'broken-{n}.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'\x00' * 20)
            os.makedirs(data / 'span-3' / '12')
            for n in range(2):
                (data / 'span-3' / '12' / f'{n}.png').write_bytes(digits.encode_png(np.zeros((8, 8), np.uint8)))
        run = _run(run_cli, runs_dir, data)
        run.records = _records(run_dir)
        run.serving = _files(os.path.join(run_dir, 'serving'))
        done.append(run)
    return types.SimpleNamespace(runs=done, run_dir=run_dir)


def _pushed(run):
    assert run.lines[-1].startswith('pushed: '), run.result.stdout[-3000:] + run.result.stderr[-3000:]
    return run.lines[-1][len('pushed: '):]


def _span(run):
    return run.records['ImportExampleGen'].outputs['examples'][0].custom_properties['span'].int_value


def test_round_1_trains_from_the_backbone_on_span_1_and_pushes(rounds):
    first = rounds.runs[0]
    assert first.result.returncode == 0
    assert _span(first) == 1
    log = _training_log(first.records)
    assert 'backbone' in log['started_from']
    assert [s['name'] for s in log['stages']] == ['head', 'finetune']
    assert 'gate baseline: no model in production yet; only the floors apply' in first.lines


def test_round_2_warm_starts_from_the_model_in_production_and_is_gated_against_it(rounds):
    first, second = rounds.runs[:2]
    assert second.result.returncode == 0, second.result.stdout[-3000:]
    assert _span(second) == 2
    first_push = _pushed(first)
    log = _training_log(second.records)
    assert log['started_from']['production_path'] == first_push
    assert [s['name'] for s in log['stages']] == ['refresh']  # the warm-start plan
    # Lineage: the model the Trainer started from is one of its inputs in ML Metadata.
    [started_from] = second.records['Trainer'].inputs['warm_start_model']
    assert started_from.custom_properties['production_path'].string_value == first_push
    with open(os.path.join(second.records['Evaluator'].outputs['evaluation'][0].uri, 'gate_report.json')) as f:
        report = json.load(f)
    assert report['baseline']['version'] == os.path.basename(first_push)
    assert {c['kind'] for c in report['checks']} == {'floor', 'max_drop'}
    assert _pushed(second) != first_push


def test_a_rerun_without_new_data_is_answered_by_the_cache_and_pushes_nothing(rounds):
    second, again = rounds.runs[1:3]
    assert again.result.returncode == 0, again.result.stdout[-3000:] + again.result.stderr[-3000:]
    states = {node: record.state for node, record in again.records.items()}
    assert set(states) == set(second.records)
    assert set(states.values()) == {'CACHED'}, states
    assert _pushed(again) == _pushed(second)  # the push already made, reported, not repeated
    assert again.serving == second.serving


def test_round_3_bad_span_is_stopped_before_training_and_nothing_changes(rounds):
    second, third = rounds.runs[1], rounds.runs[3]
    assert third.result.returncode == 4, third.result.stdout[-3000:]
    text = '\n'.join(third.lines)
    assert 'data failed validation; nothing was trained or pushed:' in text
    assert 'undecodable images (tf.io.decode_image fails)' in text
    assert 'label outside the known set: 12 (2 examples)' in text
    states = {node: record.state for node, record in third.records.items()}
    assert states['DataValidationGate'] == 'FAILED'
    assert not {'Transform', 'Trainer', 'Evaluator', 'Pusher'} & {n for n, s in states.items() if s == 'COMPLETE'}
    assert third.serving == second.serving


def test_afterwards_production_is_round_2_s_model_and_metadata_shows_two_pushes(rounds):
    from ml_metadata import metadata_store
    from tfx import v1 as tfx

    from components import release

    second = rounds.runs[1]
    serving = os.path.join(rounds.run_dir, 'serving')
    latest = release.latest_version(serving)
    assert os.path.join(serving, latest) == _pushed(second)
    trained = _files(os.path.join(second.records['Trainer'].outputs['model'][0].uri, 'Format-Serving'))
    assert _files(os.path.join(serving, latest)) == trained  # byte for byte what round 2 trained

    store = metadata_store.MetadataStore(tfx.orchestration.metadata.sqlite_metadata_connection_config(
        os.path.join(rounds.run_dir, 'metadata.sqlite')))
    pushes = [a for a in store.get_artifacts_by_type('PushedModel') if a.custom_properties['pushed'].int_value == 1]
    assert len(pushes) == 2
