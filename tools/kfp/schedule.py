"""Uploads a compiled pipeline to Kubeflow Pipelines and creates or replaces its recurring run,
through the official kfp client.

Runs in the kfp tool virtualenv (.venv-kfp); `python -m pipeline schedule` compiles the pipeline
and calls this script. The request is one JSON argument:
  {"package": path, "endpoint": URL, "pipeline": name, "version": name, "experiment": name,
   "cron": "0 0 3 * * 1", "max_concurrency": 1, "params": {...}, "dry_run": false}
It prints what it sent (or, with dry_run, what it would send) as JSON, on the last line of its output.
"""

import json
import sys


def schedule(request: dict) -> dict:
    plan = {
        'endpoint': request['endpoint'],
        'upload': {'pipeline': request['pipeline'], 'version': request['version'], 'package': request['package']},
        'experiment': request['experiment'],
        'recurring_run': {'name': request['pipeline'], 'cron': request['cron'],
                          'max_concurrency': request['max_concurrency'], 'params': request['params']},
    }
    if request['dry_run']:
        return {'dry_run': True, **plan}

    import kfp

    client = kfp.Client(host=request['endpoint'])
    pipeline_id = client.get_pipeline_id(request['pipeline'])
    if pipeline_id is None:
        pipeline = client.upload_pipeline(request['package'], pipeline_name=request['pipeline'])
        pipeline_id = pipeline.pipeline_id
        versions = client.list_pipeline_versions(pipeline_id, page_size=1, sort_by='created_at desc')
        version_id = versions.pipeline_versions[0].pipeline_version_id
    else:
        version = client.upload_pipeline_version(request['package'], pipeline_version_name=request['version'],
                                                 pipeline_id=pipeline_id)
        version_id = version.pipeline_version_id
    experiment = client.create_experiment(request['experiment'])  # returns the existing one if there is
    # KFP has no update for a recurring run: replace the one with this pipeline's name.
    existing = client.list_recurring_runs(experiment_id=experiment.experiment_id, page_size=100)
    replaced = [r.recurring_run_id for r in existing.recurring_runs or [] if r.display_name == request['pipeline']]
    for recurring_run_id in replaced:
        client.delete_recurring_run(recurring_run_id)
    # enable_caching stays unset: set, it would override the per-task caching the spec carries
    # (the production-model lookup must never come from the cache).
    run = client.create_recurring_run(
        experiment_id=experiment.experiment_id, job_name=request['pipeline'], cron_expression=request['cron'],
        max_concurrency=request['max_concurrency'], params=request['params'], pipeline_id=pipeline_id,
        version_id=version_id, enabled=True)
    return {'dry_run': False, **plan, 'pipeline_id': pipeline_id, 'version_id': version_id,
            'experiment_id': experiment.experiment_id, 'replaced': replaced, 'recurring_run_id': run.recurring_run_id}


if __name__ == '__main__':
    print(json.dumps(schedule(json.loads(sys.argv[1])), sort_keys=True))
