"""`python -m pipeline schedule` against a loopback stand-in of the Kubeflow Pipelines REST API
(v2beta1) that records every request; the real kfp client (in .venv-kfp) makes them."""

import json
import os
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KUBEFLOW = os.path.join(REPO, 'configs', 'kubeflow.yaml')


class StandIn:
    """Just enough of the KFP API for upload + recurring run, with state between calls."""

    def __init__(self):
        self.requests: list[dict] = []
        self.pipelines: dict[str, str] = {}  # name -> id
        self.versions: dict[str, list[str]] = {}
        self.recurring_runs: dict[str, dict] = {}
        self.experiments: dict[str, str] = {}

    def handle(self, method: str, path: str, query: dict, body: bytes):
        self.requests.append({'method': method, 'path': path, 'query': query, 'body': body})
        api = '/apis/v2beta1/'
        route = path[len(api):] if path.startswith(api) else path
        if route == 'healthz':
            return {'multi_user': False}
        if route == 'pipelines' and method == 'GET':
            name = json.loads(query['filter'])['predicates'][0]['stringValue']
            return {'pipelines': [{'pipeline_id': self.pipelines[name], 'display_name': name}]} \
                if name in self.pipelines else {}
        if route == 'pipelines/upload':
            pipeline_id = f'pipeline-{len(self.pipelines) + 1}'
            self.pipelines[query['name']] = pipeline_id
            self.versions[pipeline_id] = [f'{pipeline_id}-v1']
            return {'pipeline_id': pipeline_id, 'display_name': query['name']}
        if route == 'pipelines/upload_version':
            pipeline_id = query['pipelineid']
            self.versions[pipeline_id].append(f'{pipeline_id}-v{len(self.versions[pipeline_id]) + 1}')
            return {'pipeline_id': pipeline_id, 'pipeline_version_id': self.versions[pipeline_id][-1],
                    'display_name': query['name']}
        if route.startswith('pipelines/') and route.endswith('/versions'):
            pipeline_id = route.split('/')[1]
            return {'pipeline_versions': [{'pipeline_id': pipeline_id, 'pipeline_version_id': v}
                                          for v in reversed(self.versions[pipeline_id])]}
        if route == 'experiments' and method == 'GET':
            name = json.loads(query['filter'])['predicates'][0]['stringValue'] if 'filter' in query else None
            return {'experiments': [{'experiment_id': self.experiments[name], 'display_name': name}]} \
                if name in self.experiments else {}
        if route == 'experiments' and method == 'POST':
            name = json.loads(body)['display_name']
            self.experiments[name] = f'experiment-{len(self.experiments) + 1}'
            return {'experiment_id': self.experiments[name], 'display_name': name}
        if route == 'recurringruns' and method == 'GET':
            return {'recurringRuns': list(self.recurring_runs.values())}
        if route == 'recurringruns' and method == 'POST':
            run = json.loads(body)
            run['recurring_run_id'] = f'recurring-{len(self.requests)}'
            self.recurring_runs[run['recurring_run_id']] = run
            return run
        if route.startswith('recurringruns/') and method == 'DELETE':
            self.recurring_runs.pop(route.split('/')[1])
            return {}
        raise AssertionError(f'unexpected request {method} {path}')


@pytest.fixture
def standin():
    state = StandIn()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self):
            url = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(url.query))
            body = self.rfile.read(int(self.headers.get('Content-Length') or 0))
            try:
                payload, status = state.handle(self.command, url.path, query, body), 200
            except AssertionError as error:
                payload, status = {'error': str(error)}, 404
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header('Content-Type', 'application/json')
            self.send_header('Content-Length', str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _serve

        def log_message(self, *args):
            pass

    server = HTTPServer(('127.0.0.1', 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.endpoint = f'http://127.0.0.1:{server.server_address[1]}'
    yield state
    server.shutdown()


# configs/kubeflow.yaml's values for the run parameters.
PARAMS = {'data_path': 'gs://your-bucket/defects/tfrecords', 'recall_floor': 0.9, 'precision_floor': 0.8,
          'head_learning_rate': 1e-3, 'head_epochs': 5, 'top_learning_rate': 1e-4, 'top_epochs': 10}


def _schedule(run_cli, tmp_path, endpoint, *extra):
    return run_cli('schedule', '--config', KUBEFLOW, '--endpoint', endpoint, '--output', str(tmp_path / 'pipeline.yaml'),
                   *extra)


@pytest.mark.slow
def test_schedule_uploads_the_pipeline_and_creates_then_replaces_the_recurring_run(standin, tmp_path, run_cli):
    first = _schedule(run_cli, tmp_path, standin.endpoint)
    assert first.returncode == 0, first.stderr[-3000:]
    uploads = [r for r in standin.requests if r['path'].endswith('/pipelines/upload')]
    assert len(uploads) == 1 and uploads[0]['query']['name'] == 'defects-finetune'
    uploaded = uploads[0]['body'].split(b'\r\n\r\n', 1)[1].rsplit(b'\r\n--', 1)[0]
    with open(tmp_path / 'pipeline.yaml', 'rb') as f:
        assert uploaded == f.read()  # the compiled spec, byte for byte
    assert yaml.safe_load(uploaded)['pipelineInfo']['name'] == 'defects-finetune'

    [created] = [json.loads(r['body']) for r in standin.requests
                 if r['method'] == 'POST' and r['path'].endswith('/recurringruns')]
    assert created['display_name'] == 'defects-finetune'
    assert created['trigger']['cron_schedule']['cron'] == '0 0 3 * * 1'
    assert int(created['max_concurrency']) == 1
    assert created['pipeline_version_reference'] == {'pipeline_id': 'pipeline-1', 'pipeline_version_id': 'pipeline-1-v1'}
    # The run parameters, with the config's values, so every scheduled run uses them.
    assert created['runtime_config']['parameters'] == PARAMS
    assert created['mode'] == 'ENABLE'

    # Again: a new version of the same pipeline, and the recurring run replaced, not duplicated.
    second = _schedule(run_cli, tmp_path, standin.endpoint, '--set', 'kubeflow.schedule.cron=0 30 4 * * *',
                       '--set', 'evaluation.thresholds.recall=0.95')
    assert second.returncode == 0, second.stderr[-3000:]
    assert len([r for r in standin.requests if r['path'].endswith('/pipelines/upload')]) == 1
    assert [r['query']['pipelineid'] for r in standin.requests if r['path'].endswith('/upload_version')] == ['pipeline-1']
    assert len(standin.recurring_runs) == 1
    [run] = standin.recurring_runs.values()
    assert run['trigger']['cron_schedule']['cron'] == '0 30 4 * * *'
    assert run['pipeline_version_reference']['pipeline_version_id'] == 'pipeline-1-v2'
    assert run['runtime_config']['parameters'] == {**PARAMS, 'recall_floor': 0.95}
    assert json.loads(second.stdout)['replaced'] == [json.loads(first.stdout)['recurring_run_id']]


def test_dry_run_prints_the_requests_and_sends_nothing(standin, tmp_path, run_cli):
    result = _schedule(run_cli, tmp_path, standin.endpoint, '--dry-run')
    assert result.returncode == 0, result.stderr[-3000:]
    plan = json.loads(result.stdout)
    assert plan['dry_run'] is True
    assert plan['recurring_run'] == {'name': 'defects-finetune', 'cron': '0 0 3 * * 1', 'max_concurrency': 1,
                                     'params': PARAMS}
    assert plan['upload']['package'] == str(tmp_path / 'pipeline.yaml')
    assert standin.requests == []
