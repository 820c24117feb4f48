"""Scheduled retraining over image-folder spans, through the CLI, in one place:

span 1: trains from the backbone and pushes; span 2 arrives: warm-starts from the model in
production, is gated against it, pushes; the schedule fires again before new data: every step
comes from ML Metadata's cache, nothing is pushed twice; span 3 arrives with corrupted images and
labels nobody knows: stopped by validation (exit 4) before training, the served model untouched.
"""

import hashlib
import json
import os
import re
import types

import pytest

from components.training import digits
from components.shared.artifact_files import GATE_REPORT_JSON, TRAINING_LOG

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
                     'evaluation.thresholds={recall: 0.5, precision: 0.6}',
                     'evaluation.max_drop={recall: 0.15, precision: 0.15}'):
        args += ['--set', override]
    result = run_cli(*args)
    return types.SimpleNamespace(result=result, lines=result.stdout.strip().splitlines())


def _records(run_dir):
    from tfx import v1 as tfx

    from components.reporting import run_summary

    connection = tfx.orchestration.metadata.sqlite_metadata_connection_config(os.path.join(run_dir, 'metadata.sqlite'))
    return run_summary.latest_run(connection)


def _training_log(records):
    with open(os.path.join(records['Trainer'].outputs['model_run'][0].uri, TRAINING_LOG)) as f:
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
    with open(os.path.join(second.records['Evaluator'].outputs['evaluation'][0].uri, GATE_REPORT_JSON)) as f:
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
    assert "undecodable images (tf.io.decode_image fails as the model's 1-channel input, as it would in Transform)" in text
    assert 'label outside the known set: 12 (2 examples)' in text
    states = {node: record.state for node, record in third.records.items()}
    assert states['DataValidationGate'] == 'FAILED'
    assert not {'Transform', 'Trainer', 'Evaluator', 'Pusher'} & {n for n, s in states.items() if s == 'COMPLETE'}
    assert third.serving == second.serving


def test_afterwards_production_is_round_2_s_model_and_metadata_shows_two_pushes(rounds):
    from ml_metadata import metadata_store
    from tfx import v1 as tfx

    from components.shared import serving_layout

    second = rounds.runs[1]
    serving = os.path.join(rounds.run_dir, 'serving')
    latest = serving_layout.latest_version(serving)
    assert os.path.join(serving, latest) == _pushed(second)
    trained = _files(os.path.join(second.records['Trainer'].outputs['model'][0].uri, 'Format-Serving'))
    assert _files(os.path.join(serving, latest)) == trained  # byte for byte what round 2 trained

    store = metadata_store.MetadataStore(tfx.orchestration.metadata.sqlite_metadata_connection_config(
        os.path.join(rounds.run_dir, 'metadata.sqlite')))
    pushes = [a for a in store.get_artifacts_by_type('PushedModel') if a.custom_properties['pushed'].int_value == 1]
    assert len(pushes) == 2


@pytest.fixture(scope='module')
def rolled_back(rounds, run_cli):
    """After the rounds: `history`, a rollback to round 1's version, `history` again, then the
    operator removes the broken span 3 and the schedule fires (span 2 again)."""
    import shutil

    config = ['--config', CONFIG, '--set', f'pipeline.runs_dir={os.path.dirname(rounds.run_dir)}']
    before = run_cli('history', *config, '--json')
    first = os.path.basename(_pushed(rounds.runs[0]))
    rollback = run_cli('rollback', *config, '--to', first)
    after = run_cli('history', *config, '--json')
    table = run_cli('history', *config)
    data = rounds.runs[0].records['ImportExampleGen'].properties['input_base']
    shutil.rmtree(os.path.join(data, 'span-3'))
    run = _run(run_cli, os.path.dirname(rounds.run_dir), data)
    run.records = _records(rounds.run_dir)
    return types.SimpleNamespace(before=before, rollback=rollback, after=after, table=table, run=run, first=first)


def test_history_lists_each_pushed_version_with_its_gate_data_and_start(rounds, rolled_back):
    assert rolled_back.before.returncode == 0, rolled_back.before.stderr
    rows = json.loads(rolled_back.before.stdout)
    first, second = (os.path.basename(_pushed(r)) for r in rounds.runs[:2])
    assert [r['version'] for r in rows] == [second, first]  # newest, the one served, first
    assert [r['in_production'] for r in rows] == [True, False]
    for row, run, span in zip(rows, (rounds.runs[1], rounds.runs[0]), (2, 1)):
        with open(os.path.join(run.records['Evaluator'].outputs['evaluation'][0].uri, GATE_REPORT_JSON)) as f:
            report = json.load(f)
        floors = {c['metric']: (c['value'], c['threshold'], [c['interval']['low'], c['interval']['high']])
                  for c in report['checks'] if c['kind'] == 'floor'}
        assert {g['metric']: (g['value'], g['floor'], g['interval']) for g in row['gate']} == floors
        assert set(floors) == {'recall', 'precision'}
        assert {g['confidence'] for g in row['gate']} == {0.95}
        assert row['span'] == span
        assert row['examples'] == run.records['ImportExampleGen'].outputs['examples'][0].uri
        # The run id, as the run's report directory is named.
        report_line = next(line for line in run.lines if line.startswith('run report: '))
        assert row['run'] == os.path.basename(os.path.dirname(report_line))
    assert rows[1]['started_from'].startswith('backbone ')
    assert rows[0]['started_from'] == f'warm start from version {first}'
    assert rows[0]['baseline_version'] == first
    assert rows[0]['config_digest'] == rows[1]['config_digest'] and len(rows[0]['config_digest']) == 16
    assert rows[0]['run'] != rows[1]['run']


def test_rollback_serves_a_copy_of_the_chosen_version_and_history_says_so(rounds, rolled_back):
    assert rolled_back.rollback.returncode == 0, rolled_back.rollback.stderr
    serving = os.path.join(rounds.run_dir, 'serving')
    rows = json.loads(rolled_back.after.stdout)
    latest = rows[0]['version']
    assert rolled_back.rollback.stdout.strip() == (f'rolled back: version {rolled_back.first} is in production '
                                                   f'again, as version {latest} ({os.path.join(serving, latest)})')
    assert _files(os.path.join(serving, latest)) == _files(os.path.join(serving, rolled_back.first))
    assert rows[0]['rollback_of'] == rolled_back.first
    assert rows[0]['gate'] == rows[-1]['gate'] and rows[0]['span'] == 1
    assert [r['in_production'] for r in rows] == [True, False, False]
    # The table: a header, then one line per version, the served one marked.
    lines = rolled_back.table.stdout.strip().splitlines()
    assert len(lines) == 4 and lines[1].startswith(f'* {latest}') and 'rollback to' in lines[1]
    assert 'recall ' in lines[2] and '(floor 0.5)' in lines[2]
    # Each floor's value with its interval, e.g. 'recall 0.8889 [0.653, 0.986] (floor 0.5)'.
    assert re.search(r'recall \d\.\d{4} \[\d\.\d{3}, \d\.\d{3}\] \(floor 0\.5\)', lines[2])


def test_rollback_refuses_an_unknown_version_or_the_one_served(rounds, rolled_back, run_cli):
    config = ['--config', CONFIG, '--set', f'pipeline.runs_dir={os.path.dirname(rounds.run_dir)}']
    unknown = run_cli('rollback', *config, '--to', '12345')
    assert unknown.returncode == 2 and unknown.stderr.startswith('cannot roll back: --to 12345: no such version')
    assert len(unknown.stderr.strip().splitlines()) == 1
    served = json.loads(run_cli('history', *config, '--json').stdout)[0]['version']
    again = run_cli('rollback', *config, '--to', served)
    assert again.returncode == 2 and 'already the version in production' in again.stderr


def test_the_run_after_a_rollback_gates_and_warm_starts_against_the_rolled_back_model(rounds, rolled_back):
    run = rolled_back.run
    assert run.result.returncode in (0, 3), run.result.stdout[-3000:] + run.result.stderr[-3000:]
    rows = json.loads(rolled_back.after.stdout)
    restored = os.path.join(rounds.run_dir, 'serving', rows[0]['version'])
    # Nothing in the cache answered for the model rolled back from: production was read again,
    # the Trainer warm-started from it, the gate compared against it.
    states = {node: record.state for node, record in run.records.items()}
    assert states['ImportExampleGen'] == 'CACHED'  # span 2 again
    assert {states['ProductionModel'], states['Trainer'], states['Evaluator']} == {'COMPLETE'}, states
    [production] = run.records['ProductionModel'].outputs['model']
    assert production.custom_properties['production_path'].string_value == restored
    assert _files(os.path.join(production.uri, 'Format-Serving')) == \
        _files(os.path.join(rounds.run_dir, 'serving', rolled_back.first))
    assert _training_log(run.records)['started_from']['production_path'] == restored
    with open(os.path.join(run.records['Evaluator'].outputs['evaluation'][0].uri, GATE_REPORT_JSON)) as f:
        assert json.load(f)['baseline']['version'] == rows[0]['version']
    assert f'gate baseline: model in production {restored}' in run.lines
