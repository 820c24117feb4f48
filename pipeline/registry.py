"""The model versions a local pipeline has pushed: `history` lists them, `rollback` puts an earlier
one back in production.

What it reads is what the pipeline already keeps: the serving directory (one numeric directory
per version, as TF Serving reads them; the newest one is served) and ML Metadata (which run
pushed each version, what that run's gate measured, which data and starting weights it used).
A rollback pushes a copy of the chosen version as the newest one, atomically (the Pusher's own
push), and records itself in ML Metadata as the copy's producer. Version numbers only grow, so the
next run reads production again: no cache key of an earlier run can match.

Only ml_metadata is imported here; a rollback loads TFX for the push.
"""

import datetime
import hashlib
import os
import time
from typing import Optional

import ml_metadata as mlmd
from ml_metadata.proto import metadata_store_pb2

from components.shared import node_ids, storage
from components.shared.artifact_files import GATE_REPORT_JSON, TRAINING_LOG
from components.shared.release_keys import CACHE_KEY, GATED_AGAINST
from components.shared.serving_layout import versions
from components.config import Config
from pipeline.paths import LocalPaths
from components.reporting.mlmd_records import (contexts_of, custom_value, display_path, examples_span, output_uri,
                                               run_records)

ROLLBACK_TYPE = 'staged_finetune.Rollback'


class RegistryError(Exception):
    """A request the serving directory cannot answer (unknown version, nothing pushed)."""


def config_digest(config: Config) -> str:
    """A digest of the validated config: two runs with the same digest ran the same config."""
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:16]


def _store(paths: LocalPaths, writable: bool = False) -> Optional[mlmd.MetadataStore]:
    if not os.path.exists(paths.metadata) and not writable:
        return None
    sqlite = metadata_store_pb2.SqliteMetadataSourceConfig
    mode = sqlite.READWRITE_OPENCREATE if writable else sqlite.READONLY
    return mlmd.MetadataStore(metadata_store_pb2.ConnectionConfig(
        sqlite=sqlite(filename_uri=paths.metadata, connection_mode=mode)))


def _started_from(training_log: Optional[dict]) -> str:
    started = (training_log or {}).get('started_from') or {}
    if 'production_path' in started:
        return f"warm start from version {started.get('production_version') or display_path(started['production_path'])}"
    if 'backbone' in started:
        return f"backbone {display_path(started['backbone'])}"
    if 'scratch' in started:
        return 'random weights'
    return 'unknown'


def _pushed_by_run(store: mlmd.MetadataStore, execution: metadata_store_pb2.Execution) -> dict:
    """What the pipeline run that holds `execution` (its Pusher's) says about the model it pushed."""
    run_type = store.get_context_type('pipeline_run')
    runs = [c for c in contexts_of(store, execution.id) if c.type_id == run_type.id]
    if not runs:
        return {}
    records = run_records(store, runs[0])
    report = storage.read_json(output_uri(records, node_ids.EVALUATOR, 'evaluation'), GATE_REPORT_JSON) or {}
    training_log = storage.read_json(output_uri(records, node_ids.TRAINER, 'model_run'), TRAINING_LOG)
    examples = (records.get(node_ids.EXAMPLE_GEN).outputs.get('examples') or [None])[0] \
        if node_ids.EXAMPLE_GEN in records else None
    production = records.get(node_ids.PRODUCTION_MODEL)
    key = production.properties.get(CACHE_KEY) if production else None  # `<version>@<config digest>`
    # Each floor with its interval (None: decided on the point value) and how it was decided.
    gate = [{'metric': c['metric'], 'slice': c['slice'], 'value': c['value'], 'floor': c['threshold'],
             'interval': ([c['interval']['low'], c['interval']['high']] if c.get('interval') else None),
             'confidence': (c.get('interval') or {}).get('confidence'), 'rule': c.get('rule', 'point')}
            for c in report.get('checks', []) if c['kind'] == 'floor']
    return {
        'gate': gate,
        'baseline_version': (report.get('baseline') or {}).get('version'),
        'span': examples_span(examples) if examples is not None else None,
        'examples': display_path(examples.uri) if examples is not None else None,
        'started_from': _started_from(training_log),
        'config_digest': key.split('@', 1)[1] if isinstance(key, str) and '@' in key else None,
        'run': runs[0].name,
    }


def _pushes(store: Optional[mlmd.MetadataStore]) -> dict[str, tuple]:
    """Pushed destination -> (its PushedModel artifact, the execution that produced it)."""
    if store is None:
        return {}
    try:
        artifacts = store.get_artifacts_by_type('PushedModel')
    except mlmd.errors.NotFoundError:
        return {}
    pushed = {a.id: a for a in artifacts if custom_value(a, 'pushed') == 1}
    events = store.get_events_by_artifact_ids(list(pushed)) if pushed else []
    # A run answered from the cache records the same artifact as its Pusher's output again; the
    # first execution is the one that pushed.
    producers: dict[int, int] = {}
    for e in events:
        if e.type == metadata_store_pb2.Event.OUTPUT:
            producers[e.artifact_id] = min(producers.get(e.artifact_id, e.execution_id), e.execution_id)
    executions = {e.id: e for e in store.get_executions_by_id(sorted(set(producers.values())))}
    return {custom_value(a, 'pushed_destination'): (a, executions.get(producers.get(a.id)))
            for a in pushed.values() if producers.get(a.id) in executions}


def history(config: Config) -> list[dict]:
    """One entry per version in the serving directory, newest (the one served) first.

    `baseline_version` is the version the run's gate compared against (its gate report's), and
    `gated_against` the same version as the Pusher's compare-and-swap checked it at the push
    ('' when nothing was in production; None where no gate ran, as for a rollback)."""
    paths = LocalPaths(os.path.abspath(config.run_dir))
    store = _store(paths)
    pushes = _pushes(store)
    rollback_type = None
    if store is not None:
        try:
            rollback_type = store.get_execution_type(ROLLBACK_TYPE).id
        except mlmd.errors.NotFoundError:
            pass
    rows: dict[str, dict] = {}
    ordered = versions(paths.serving)
    for version in reversed(ordered):  # oldest first: a rollback copies the row of an older version
        path = os.path.join(paths.serving, version)
        artifact, execution = pushes.get(path, (None, None))
        row = {'version': version, 'path': display_path(path), 'in_production': version == ordered[0],
               'pushed_at': datetime.datetime.fromtimestamp(
                   # Registered as the push step started (a re-run from the cache may touch it later).
                   (artifact.create_time_since_epoch / 1000) if artifact else os.path.getmtime(path)
               ).astimezone().isoformat(timespec='seconds'),
               'rollback_of': None, 'gate': [], 'baseline_version': None, 'span': None, 'examples': None,
               'started_from': None, 'config_digest': None, 'run': None,
               # The Pusher's compare-and-swap: production when the gate ran, still so at the push.
               'gated_against': custom_value(artifact, GATED_AGAINST) if artifact else None}
        if execution is not None and execution.type_id == rollback_type:
            source = str(custom_value(execution, 'from_version'))
            copied = {k: v for k, v in rows.get(source, {}).items()
                      if k not in ('version', 'path', 'in_production', 'pushed_at', 'rollback_of', 'gated_against')}
            row.update(copied, rollback_of=source, run=f'rollback to {source}')
        elif execution is not None:
            row.update(_pushed_by_run(store, execution))
        rows[version] = row
    return [rows[v] for v in ordered]


def _gated_against_text(row: dict) -> str:
    if row['gated_against'] is None:
        return '-'
    return row['gated_against'] or 'none'


def _gate_text(row: dict) -> str:
    # gate_statistics.value_text's format; that module is not imported here, as scipy alone would
    # take a second of `history`'s start-up.
    def value(g: dict) -> str:
        text = 'undefined' if g['value'] is None else format(g['value'], '.4f')
        if g.get('interval'):
            text += f" [{g['interval'][0]:.3f}, {g['interval'][1]:.3f}]"
        return text

    return ', '.join(f"{g['metric']}{'' if g['slice'] == 'Overall' else ' on ' + g['slice']} {value(g)} "
                     f"(floor {g['floor']:g})" for g in row['gate']) or '-'


def table(rows: list[dict]) -> list[str]:
    """The history as aligned text, one line per version."""
    header = ['version', 'pushed at', 'gated against', 'gate (value [interval], floor)', 'span', 'examples', 'started from',
              'config', 'run']
    lines = [[('* ' if r['in_production'] else '  ') + r['version'], r['pushed_at'], _gated_against_text(r),
              _gate_text(r),
              '-' if r['span'] is None else str(r['span']), r['examples'] or '-',
              r['started_from'] or ('not in this store' if r['run'] is None else '-'),
              r['config_digest'] or '-', r['run'] or '-'] for r in rows]
    header[0] = '  ' + header[0]
    widths = [max(len(row[i]) for row in [header] + lines) for i in range(len(header))]
    return ['  '.join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header] + lines]


def rollback(config: Config, to_version: str) -> tuple[str, str]:
    """Pushes a copy of `to_version` as the newest version (so TF Serving serves it) and records the
    rollback in ML Metadata. Returns (new version, its path). Raises RegistryError when
    `to_version` is not a complete version, or is already the one served."""
    paths = LocalPaths(os.path.abspath(config.run_dir))
    available = versions(paths.serving)
    if to_version not in available:
        raise RegistryError(f'--to {to_version}: no such version under {display_path(paths.serving)} '
                            f'(versions: {", ".join(available) or "none"})')
    if to_version == available[0]:
        raise RegistryError(f'--to {to_version}: already the version in production')
    from tfx.types import standard_artifacts

    from components.nodes import atomic_pusher

    version, destination = atomic_pusher.push_atomically(os.path.join(paths.serving, to_version), paths.serving)
    store = _store(paths, writable=True)
    execution_type = metadata_store_pb2.ExecutionType(name=ROLLBACK_TYPE)
    execution = metadata_store_pb2.Execution(
        type_id=store.put_execution_type(execution_type), last_known_state=metadata_store_pb2.Execution.COMPLETE)
    for name, value in (('from_version', to_version), ('to_version', version),
                        ('replaced_version', available[0])):
        execution.custom_properties[name].string_value = value
    execution.custom_properties['time'].int_value = int(time.time())
    artifact = metadata_store_pb2.Artifact(
        type_id=store.put_artifact_type(standard_artifacts.PushedModel().artifact_type, can_add_fields=True),
        uri=destination, state=metadata_store_pb2.Artifact.LIVE)
    artifact.custom_properties['pushed'].int_value = 1
    artifact.custom_properties['pushed_destination'].string_value = destination
    artifact.custom_properties['pushed_version'].string_value = version
    artifact.custom_properties['rolled_back_from'].string_value = to_version
    event = metadata_store_pb2.Event(type=metadata_store_pb2.Event.OUTPUT)
    event.path.steps.add().key = 'pushed_model'
    store.put_execution(execution, [(artifact, event)], [])
    return version, destination
