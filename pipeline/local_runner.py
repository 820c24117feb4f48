"""Runs the pipeline on this machine: LocalDagRunner, an SQLite ML Metadata store, Beam DirectRunner."""

import datetime
import os
import traceback

import ml_metadata as mlmd
from ml_metadata.proto import metadata_store_pb2
from tfx.dsl.compiler import compiler, constants
from tfx.orchestration import metadata
from tfx.orchestration import pipeline as tfx_pipeline
from tfx.orchestration.local.local_dag_runner import LocalDagRunner
from tfx.orchestration.portable import runtime_parameter_utils

from components.training import backbone, digits
from components.shared import node_ids, storage
from components.shared import release_keys, serving_layout
from pipeline import beam_mode, registry
from components.reporting import run_summary, report_page
from components.config import Config
from pipeline.paths import LocalPaths
from pipeline.pipeline import create_pipeline
from components.reporting.mlmd_records import contexts_of


def prepare_data(config: Config, paths: LocalPaths) -> str:
    """The directory ExampleGen imports: the user's, or the embedded digits written once."""
    if config.data.source != 'digits':
        return os.path.abspath(config.data.path)
    digits.write_digits_tfrecords(paths.data, config.data.digits_classes, config.data.image_feature,
                                  config.data.label_feature)
    return os.path.abspath(paths.data)


def production_cache_key(connection: metadata_store_pb2.ConnectionConfig, serving_dir: str, config: Config) -> str:
    """The ProductionModel step's cache key for this run: `<version>@<config digest>`, where version
    is the newest one in `serving_dir` ('none' when empty).

    One exception keeps an unchanged re-run cached from start to end: when that version was pushed
    by an earlier run of this same config, the key is the one that run's ProductionModel had. The
    cache then answers only if the examples are that run's too (they are the step's input), and
    its answer is the production model that run compared against and trained from: a re-run
    over the same data and config finds the same decision already made and carried out. New data,
    or another config, reads production again.
    """
    digest = registry.config_digest(config)
    version = serving_layout.latest_version(serving_dir)
    key = f'{version or "none"}@{digest}'
    if version is None:
        return key
    store = mlmd.MetadataStore(connection)
    try:
        run_type = store.get_context_type('pipeline_run')
    except mlmd.errors.NotFoundError:  # a store that has recorded no run (e.g. a new one)
        return key
    destination = os.path.join(serving_dir, version)
    pushes = [a.id for a in store.get_artifacts_by_type('PushedModel')
              if run_summary.custom_value(a, 'pushed') == 1 and run_summary.custom_value(a, 'pushed_destination') == destination]
    producers = [e.execution_id for e in store.get_events_by_artifact_ids(pushes)
                 if e.type == metadata_store_pb2.Event.OUTPUT] if pushes else []
    for execution in store.get_executions_by_id(sorted(set(producers))):
        for run in contexts_of(store, execution.id):
            if run.type_id != run_type.id:
                continue
            for record in store.get_executions_by_context(run.id):
                earlier = run_summary.custom_value(record, release_keys.CACHE_KEY)
                if isinstance(earlier, str) and earlier.endswith(f'@{digest}'):
                    return earlier
    return key


def run(config: Config) -> run_summary.Outcome:
    """Runs the whole pipeline once and returns how it ended."""
    paths = LocalPaths(os.path.abspath(config.run_dir))
    os.makedirs(paths.run_dir, exist_ok=True)
    data_uri = prepare_data(config, paths)
    backbone_uri = backbone.prepare_backbone(config.model.backbone, config.model.input, paths.backbones)
    connection = metadata.sqlite_metadata_connection_config(paths.metadata)
    dag = create_pipeline(config, data_uri=data_uri, backbone_uri=backbone_uri,
                          pipeline_root=paths.pipeline_root, serving_dir=paths.serving,
                          metadata_connection_config=connection,
                          production_cache_key=production_cache_key(connection, paths.serving, config),
                          beam_args=beam_mode.local_beam_args(config, data_uri))
    run_id = new_run_id()
    try:
        run_dag(dag, run_id)
    except Exception as error:  # noqa: BLE001 - the run's records say what failed; see summarize.
        records = run_summary.run_by_id(connection, run_id)
        result = run_summary.summarize(config, records)
        if result.exit_code == run_summary.EXIT_FAILED:
            # One line of cause here; the whole traceback in a file the summary names.
            log = os.path.join(paths.run_dir, 'logs', f'{run_id}.traceback.txt')
            os.makedirs(os.path.dirname(log), exist_ok=True)
            storage.write_text_atomically(log, traceback.format_exc())
            cause = (str(error).strip().splitlines() or [''])[0]
            result.lines.append(f'cause: {type(error).__name__}: {cause[:300]}')
            result.lines.append(f'full traceback: {run_summary.display_path(log)}')
        elif result.exit_code == run_summary.EXIT_BAD_DATA:
            # The gate's own message lists every problem, including the checks beyond TFDV's.
            problems = run_summary.validation_problems(error) or [line.strip() for line in result.lines[1:]]
            result.lines[1:] = ['  ' + line for line in problems]
            result.lines[0:0] = ['note: ' + line for line in run_summary.data_notes(records)]
            # The RunReport step comes after the gate and did not run: the page of a stopped run.
            page = report_page.save(report_page.render(report_page.stopped(config, problems)), reports_dir(paths, run_id))
            result.lines.append(f'run report: {run_summary.display_path(page)}')
        return result
    records = run_summary.run_by_id(connection, run_id)
    result = run_summary.summarize(config, records)
    written = run_summary.output_uri(records, node_ids.RUN_REPORT, 'report')
    if written:
        # The RunReport step's page, copied to a name ending in .html that a browser opens as a page.
        with open(written) as f:
            page = report_page.save(f.read(), reports_dir(paths, run_id))
        result.lines.insert(-1, f'run report: {run_summary.display_path(page)}')
    return result


def new_run_id() -> str:
    """A run id as LocalDagRunner makes one (the local time, ISO 8601, to the microsecond)."""
    return datetime.datetime.now().isoformat()


def run_dag(dag: tfx_pipeline.Pipeline, run_id: str) -> None:
    """Runs `dag` with LocalDagRunner as the run `run_id` (its pipeline_run context's name).

    LocalDagRunner.run names the run itself, from the clock, and does not say the name; with two
    runs in one store, "the newest run" may be another process's. So the pipeline is compiled to
    its IR here, as LocalDagRunner.run does (it also resolves the pip dependencies of components
    given a module_file; this pipeline names its functions by module path instead), with
    pipeline_run_id bound to `run_id`; run_with_ir then finds nothing left to bind.
    """
    ir = compiler.Compiler().compile(dag)
    runtime_parameter_utils.substitute_runtime_parameter(ir, {constants.PIPELINE_RUN_ID_PARAMETER_NAME: run_id})
    LocalDagRunner().run_with_ir(ir)


def reports_dir(paths: LocalPaths, run_id: str) -> str:
    """runs/<name>/reports/<run id>: where the report_page.html of the run `run_id` goes."""
    return os.path.join(paths.reports, run_id)
