"""The run report of the end-to-end run (tests/conftest.py): each section is there, its numbers are
those of training_log.json, the evaluation artifact (TFMA) and StatisticsGen, and the page opens
in headless Chromium without a console message."""

import html.parser
import json
import os
import re

import psutil
import pytest
import yaml

import headless
from components.shared.artifact_files import TRAINING_LOG

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group('default_run')]


class _Page(html.parser.HTMLParser):
    """Tables (by id: rows of cell texts), <pre> texts, ids, and a count of tags."""

    def __init__(self):
        super().__init__()
        self.tables, self.pre, self.ids, self.tags = {}, {}, set(), {}
        self._table = self._row = self._cell = self._pre = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if 'id' in attrs:
            self.ids.add(attrs['id'])
        if tag == 'table':
            self._table = self.tables.setdefault(attrs.get('id'), [])
        elif tag == 'tr' and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ('td', 'th') and self._row is not None:
            self._cell = []
        elif tag == 'pre':
            self._pre = (attrs.get('id'), [])

    def handle_endtag(self, tag):
        if tag in ('td', 'th') and self._cell is not None:
            self._row.append(''.join(self._cell).strip())
            self._cell = None
        elif tag == 'table':
            self._table = self._row = None
        elif tag == 'pre' and self._pre is not None:
            self.pre[self._pre[0]] = ''.join(self._pre[1])
            self._pre = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._pre is not None:
            self._pre[1].append(data)


@pytest.fixture(scope='module')
def report(first_run):
    line = next(line for line in first_run.lines if line.startswith('run report: '))
    path = line[len('run report: '):]
    with open(path) as f:
        text = f.read()
    page = _Page()
    page.feed(text)
    return path, text, page


@pytest.fixture(scope='module')
def log(first_run):
    with open(os.path.join(first_run.records['Trainer'].outputs['model_run'][0].uri, TRAINING_LOG)) as f:
        return json.load(f)


def _rows(page, table):
    header, *rows = page.tables[table]
    return [dict(zip(header, row)) for row in rows]


def test_the_summary_prints_where_the_report_is(first_run, report):
    path, _, _ = report
    assert path.startswith(os.path.join(first_run.run_dir, 'reports') + os.sep) and path.endswith('report.html')


# The sections of the page, in order; the Kubeflow run's page has the same (tools/kfp_launcher_test.py).
SECTIONS = ['summary', 'data', 'training', 'gate', 'lineage', 'config']


def test_the_page_is_the_run_report_step_s_system_html_artifact(first_run, report):
    import ml_metadata as mlmd
    from tfx import v1 as tfx

    path, text, _ = report
    artifact = first_run.records['RunReport'].outputs['report'][0]
    assert os.path.isfile(artifact.uri)  # one file at the URI, as the Kubeflow UI reads it
    with open(artifact.uri) as f:
        assert f.read() == text
    store = mlmd.MetadataStore(tfx.orchestration.metadata.sqlite_metadata_connection_config(
        os.path.join(first_run.run_dir, 'metadata.sqlite')))
    [artifact_type] = store.get_artifact_types_by_id([artifact.type_id])
    assert artifact_type.name == 'system.HTML' and not artifact_type.properties
    assert artifact.custom_properties['display_name'].string_value == 'run report'
    assert re.findall(r'<h2 id="([^"]+)"', text) == SECTIONS


def test_the_page_is_self_contained(report):
    _, text, page = report
    for section in ('summary', 'data', 'training', 'gate', 'lineage', 'config', 'lr-plot', 'curves-plot',
                    'pr-plot', 'gate-checks', 'confusion-matrix', 'data-counts', 'stages', 'lineage-table'):
        assert section in page.ids, section
    assert page.tags['svg'] >= 3  # the plots are inline
    assert not re.search(r'(src|href)\s*=\s*["\'](https?:)?//', text)  # nothing fetched from a network
    assert 'script' not in page.tags


def test_data_counts_per_split_and_class_match_statisticsgen(first_run, report):
    from tensorflow_metadata.proto.v0 import statistics_pb2

    _, _, page = report
    rows = {row['split']: row for row in _rows(page, 'data-counts')}
    statistics = first_run.records['StatisticsGen'].outputs['statistics'][0].uri
    for split in ('train', 'eval', 'test'):
        with open(os.path.join(statistics, f'Split-{split}', 'FeatureStats.pb'), 'rb') as f:
            stats = statistics_pb2.DatasetFeatureStatisticsList.FromString(f.read())
        assert int(rows[split]['total']) == stats.datasets[0].num_examples
        by_class = [int(v) for k, v in rows[split].items() if k.startswith('label ')]
        assert sum(by_class) == int(rows[split]['total']) and len(by_class) == 5 and min(by_class) > 0
    assert 'label 9 (positive)' in rows['train']


def test_stages_and_learning_rates_are_those_of_the_training_log(report, log):
    _, text, page = report
    rows = _rows(page, 'stages')
    assert [row['stage'] for row in rows] == [stage['name'] for stage in log['stages']] == ['head', 'finetune']
    first_step = 0
    for row, stage in zip(rows, log['stages']):
        assert row['epochs run / planned'] == f"{stage['epochs_run']} / {stage['epochs_planned']}"
        assert row['learning rate'] == f"{stage['learning_rate']:.3g}"
        assert row['first step'] == str(first_step)
        assert row['val_recall (last)'] == f"{stage['epochs'][-1]['val_recall']:.4f}"
        assert row['trainable params'] == f"{stage['trainable_params']:,}"
        first_step += len(stage['lr_by_step'])
    assert f'{first_step} optimizer steps' in text
    # The default learns from few labels: the page says how many, next to the split's counts.
    assert log['train_examples'] == 40 and log['train_examples_per_class'] == 20
    assert 'Trained on 40 examples drawn from the training split (20 per class' in text
    assert 'Augmentation of the training images: none.' in text and 'Class weights in the loss: none.' in text


def test_plots_mark_every_stage_boundary(report, log):
    _, text, _ = report
    lr_svg = text[text.index('id="lr-plot"'):text.index('id="curves-plot"')]
    curves_svg = text[text.index('id="curves-plot"'):text.index('id="gate"')]
    for stage in log['stages']:
        assert f'>{stage["name"]}<' in lr_svg
        assert curves_svg.count(f'>{stage["name"]}<') == 2  # one per panel
    assert '>val_loss<' in curves_svg and '>val_recall<' in curves_svg


def test_gate_table_and_confusion_matrix_are_the_evaluation_artifact_s(first_run, report):
    from components.gate import tfma_checks

    _, _, page = report
    evaluation = first_run.records['Evaluator'].outputs['evaluation'][0].uri
    metrics = tfma_checks.load_metrics(evaluation)[tfma_checks.OVERALL]
    values = {m.label: v for m, v in metrics.values['candidate'].items()}
    checks = {(row['metric'], row['check']): row for row in _rows(page, 'gate-checks')}
    from components.statistics import proportions

    for metric, floor in (('recall', '0.65'), ('precision', '0.65')):
        row = checks[(metric, 'floor')]
        assert row['value'] == f'{values[metric]:.4f}' and row['threshold'] == floor and row['result'] == 'pass'
        tp = metrics.confusion_matrix['true_positives']
        other = metrics.confusion_matrix['false_negatives' if metric == 'recall' else 'false_positives']
        interval = proportions.proportion_interval(int(tp), int(tp + other))
        assert row['interval'] == f'[{interval.low:.3f}, {interval.high:.3f}]'
        assert row['decided on'].startswith(f'{values[metric]:.4f} [{interval.low:.3f}, {interval.high:.3f}], lower bound')
    assert 'interval-plot' in page.ids
    matrix = metrics.confusion_matrix
    cells = {row['']: row for row in _rows(page, 'confusion-matrix')}
    assert cells['actual positive']['predicted positive'] == str(int(matrix['true_positives']))
    assert cells['actual positive']['predicted negative'] == str(int(matrix['false_negatives']))
    assert cells['actual negative']['predicted positive'] == str(int(matrix['false_positives']))
    assert cells['actual negative']['predicted negative'] == str(int(matrix['true_negatives']))


def test_lineage_names_the_backbone_the_data_and_the_baseline(first_run, report, log):
    _, _, page = report
    lineage = {row[0]: row[1] for row in page.tables['lineage-table']}
    assert lineage['started from'] == f"backbone {log['started_from']['backbone']}"
    assert lineage['examples'] == first_run.records['ImportExampleGen'].outputs['examples'][0].uri
    assert lineage['model'] == first_run.records['Trainer'].outputs['model'][0].uri
    assert lineage['gated against'].startswith('none: nothing in production yet')


def test_the_config_shown_is_the_one_used(report):
    _, _, page = report
    shown = yaml.safe_load(page.pre['config-yaml'])
    assert shown['task'] == {'type': 'binary', 'positive_class': 9}
    assert [stage['name'] for stage in shown['trainer']['stages']] == ['head', 'finetune']
    assert shown['evaluation']['thresholds'] == {'recall': 0.65, 'precision': 0.65}
    assert shown['evaluation']['confidence'] == 0.95


def test_the_page_opens_in_headless_chromium_without_console_messages(report, tmp_path):
    from PIL import Image

    path, _, _ = report
    png = str(tmp_path / 'report.png')
    assert headless.screenshot(path, png) == []
    with Image.open(png) as image:
        assert image.size == (1200, 3000)
        assert len(image.convert('RGB').getcolors(maxcolors=1 << 16) or range(1 << 16)) > 50  # not a blank page


def test_a_console_error_would_be_caught(tmp_path):
    """The check above can fail: a page that throws is reported."""
    page = tmp_path / 'broken.html'
    page.write_text('<html><body><p>x</p><script>undefinedFunction();</script></body></html>')
    messages = headless.screenshot(str(page), str(tmp_path / 'broken.png'), height=400)
    assert len(messages) == 1 and 'undefinedFunction is not defined' in messages[0]


def test_tensorboard_serves_the_latest_run_s_training_logs_per_stage_and_leaves_no_process(first_run):
    """Served until SIGTERM, as a service manager or a terminal closing ends it; then the command
    and every process it started are gone."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with socket.socket() as s:
        s.bind(('localhost', 0))
        port = s.getsockname()[1]
    from tfx.orchestration import metadata

    from components.reporting import run_summary

    # The latest run in the store (other tests of the session may have run after first_run).
    latest = run_summary.latest_run(metadata.sqlite_metadata_connection_config(
        os.path.join(first_run.run_dir, 'metadata.sqlite')))['Trainer'].outputs['model_run'][0].uri
    with open(os.path.join(latest, TRAINING_LOG)) as f:
        log = json.load(f)
    server = subprocess.Popen(
        [sys.executable, '-m', 'pipeline', 'tensorboard', '--config', os.path.join(repo, 'configs', 'local.yaml'),
         '--port', str(port),
         '--set', f'pipeline.runs_dir={os.path.dirname(first_run.run_dir)}'],
        cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        announced = server.stdout.readline()
        assert announced.startswith('TensorBoard on ') and f'localhost:{port}' in announced
        assert os.path.join(latest, 'logs') in announced
        runs, deadline = [], time.monotonic() + 120
        while time.monotonic() < deadline and len(runs) < 2 * len(log['stages']):
            time.sleep(2)
            try:
                with urllib.request.urlopen(f'http://localhost:{port}/data/runs', timeout=5) as response:
                    runs = json.load(response)
            except OSError:
                continue
        assert sorted(runs) == sorted(f"{stage['name']}/{part}" for stage in log['stages']
                                      for part in ('train', 'validation'))
        started = psutil.Process(server.pid).children(recursive=True)
    finally:
        server.terminate()
        code = server.wait(timeout=30)
    assert code == 0
    _, alive = psutil.wait_procs(started, timeout=10)
    assert alive == []
    with pytest.raises(OSError):  # nothing serves on the port any more
        urllib.request.urlopen(f'http://localhost:{port}/data/runs', timeout=5)
