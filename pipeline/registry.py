"""The model versions a local pipeline has pushed: `history` lists them, `rollback` puts an earlier
one back in production.

What it reads is what the pipeline already keeps: the serving directory (one numeric directory
per version, as TF Serving reads them; the newest one is served) and ML Metadata (which run
pushed each version, what that run's gate measured, which data and starting weights it used).
A rollback pushes a copy of the chosen version as the newest one, atomically (the Pusher's own
push), and records itself in ML Metadata as the copy's producer. Version numbers only grow, so the
next run reads production again: no cache key of an earlier run can match.

A rollback serves only a complete version whose variables read back (serving_layout.unservable),
and records itself before it pushes: a RUNNING execution naming the version it copies and the one
it replaces, made COMPLETE with the copy once the copy is in place. A store that cannot be written stops it before
anything is pushed; a record that fails after the push leaves the RUNNING execution, and the same
rollback run again finds the copy it made (a version newer than the one it replaced, recorded by
nothing, with the chosen version's files) and records that instead of pushing another.

Only ml_metadata is imported here; a rollback loads TensorFlow to read the variables back, and
TFX for the push.
"""

import contextlib
import datetime
import hashlib
import os
import time
from typing import Callable, Iterator, NamedTuple, Optional

import ml_metadata as mlmd
from ml_metadata.proto import metadata_store_pb2

from components.shared import node_ids, storage
from components.shared.artifact_files import GATE_REPORT_JSON, TRAINING_LOG
from components.shared.release_keys import CACHE_KEY, GATED_AGAINST
from components.shared.serving_layout import incomplete, unservable, versions
from components.config import Config
from pipeline.paths import LocalPaths
from components.reporting.mlmd_records import (contexts_of, custom_value, display_path, examples_span, output_uri,
                                               run_records)

ROLLBACK_TYPE = 'staged_finetune.Rollback'
# The rollback execution's properties: the version copied, the copy's version, and the version in
# production when the rollback started.
FROM_VERSION, TO_VERSION, REPLACED_VERSION = 'from_version', 'to_version', 'replaced_version'


class RegistryError(Exception):
    """A request the serving directory cannot answer (unknown version, nothing pushed)."""


class BrokenVersion(RegistryError):
    """The version asked for is not complete, or its variables do not read back; the message names
    the file and the versions that are complete."""


class StoreError(Exception):
    """The ML Metadata store cannot be read or written: `problem` names it and why, `advice` what to do."""

    def __init__(self, problem: str, advice: str):
        super().__init__(f'{problem}; {advice}')
        self.problem, self.advice = problem, advice


class PushFailed(Exception):
    """A rollback's push failed; nothing was pushed. The message says why and what production is."""


class NotRecorded(Exception):
    """A rollback's copy is in production but ML Metadata did not record it; the message says how
    to record it (the same rollback again, which pushes nothing)."""


class Rollback(NamedTuple):
    version: str  # the copy's
    destination: str
    pushed: bool  # False: an earlier rollback had pushed this copy, and this one recorded it


def describe(version_dir: str, problem: str) -> str:
    """serving_layout.incomplete's `problem` with the version's path: `runs/x/serving/7/variables/... is missing`."""
    return os.path.join(display_path(version_dir), problem)


def config_digest(config: Config) -> str:
    """A digest of the validated config: two runs with the same digest ran the same config."""
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:16]


def _store(paths: LocalPaths, writable: bool = False) -> Optional[mlmd.MetadataStore]:
    """The store (None when none exists and only reading is asked), opened and read once, so that a
    store that is not one raises StoreError here."""
    if not os.path.exists(paths.metadata) and not writable:
        return None
    sqlite = metadata_store_pb2.SqliteMetadataSourceConfig
    mode = sqlite.READWRITE_OPENCREATE if writable else sqlite.READONLY
    with _store_errors(paths):
        store = mlmd.MetadataStore(metadata_store_pb2.ConnectionConfig(
            sqlite=sqlite(filename_uri=paths.metadata, connection_mode=mode)))
        store.get_execution_types()
    return store


@contextlib.contextmanager
def _store_errors(paths: LocalPaths) -> Iterator[None]:
    """Turns what ML Metadata raises for a store it cannot use (a RuntimeError naming SQLite's
    reason, then the SQL it ran) into StoreError naming the file, the reason and what to do."""
    try:
        yield
    except (RuntimeError, mlmd.errors.StatusError) as error:
        reason = str(error).removeprefix('Error when executing query: ').split(' query: ')[0].strip()
        if 'locked' in reason or 'Concurrent writes' in reason:
            advice = 'another process holds it locked; run this again once that process is done'
        else:
            advice = ('restore it from a backup, or move it aside to start an empty one (serving/ keeps every '
                      'version; the lineage `history` shows is lost)')
        raise StoreError(f'{display_path(paths.metadata)} is not a usable ML Metadata store ({reason})',
                         advice) from error


def check_store(config: Config) -> None:
    """Raises StoreError when the pipeline's store exists and cannot be opened for writing, as a run
    opens it (a run would fail on it before its first step)."""
    paths = LocalPaths(os.path.abspath(config.run_dir))
    if os.path.exists(paths.metadata):
        _store(paths, writable=True)


def _started_from(training_log: Optional[dict]) -> str:
    started = (training_log or {}).get('started_from') or {}
    if 'production_path' in started:
        return f"warm start from version {started.get('production_version') or display_path(started['production_path'])}"
    if 'backbone' in started:
        return f"backbone {display_path(started['backbone'])}"
    if 'scratch' in started:
        return 'random weights'
    return 'unknown'


def _recipe(training_log: Optional[dict], searched: bool) -> str:
    """Whether the model's values were tuned: 'tuned, trial 4 of 6' (searched in its run), 'tuned,
    imported' (tuning.reuse), or 'as configured'."""
    tuning = (training_log or {}).get('tuning')
    if not tuning:
        return 'as configured' if training_log else 'unknown'
    if searched and 'winner' in tuning:
        return f"tuned, trial {tuning['winner']['trial']} of {tuning['trials']}"
    return 'tuned, imported'


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
        'recipe': _recipe(training_log, node_ids.TUNER in records),
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
    with _store_errors(paths):
        return _history(paths, _store(paths))


def _history(paths: LocalPaths, store: Optional[mlmd.MetadataStore]) -> list[dict]:
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
               'started_from': None, 'recipe': None, 'config_digest': None, 'run': None,
               # The Pusher's compare-and-swap: production when the gate ran, still so at the push.
               'gated_against': custom_value(artifact, GATED_AGAINST) if artifact else None,
               'broken': describe(path, problem) if (problem := incomplete(path)) else None}
        if execution is not None and execution.type_id == rollback_type:
            source = str(custom_value(execution, FROM_VERSION))
            copied = {k: v for k, v in rows.get(source, {}).items()
                      if k not in ('version', 'path', 'in_production', 'pushed_at', 'rollback_of', 'gated_against',
                                   'broken')}
            row.update(copied, rollback_of=source, run=f'rollback to {source}')
        elif execution is not None:
            row.update(_pushed_by_run(store, execution))
        rows[version] = row
    return [rows[v] for v in ordered]


def unfinished_rollbacks(config: Config) -> list[dict]:
    """The rollbacks recorded as started and never as done, oldest first: their record failed after
    the push, or their process ended during it. {'from_version', 'replaced_version', 'started_at'}."""
    paths = LocalPaths(os.path.abspath(config.run_dir))
    with _store_errors(paths):
        store = _store(paths)
        return [] if store is None else [
            {'from_version': custom_value(e, FROM_VERSION), 'replaced_version': custom_value(e, REPLACED_VERSION),
             'started_at': datetime.datetime.fromtimestamp(custom_value(e, 'time')).astimezone().isoformat(
                 timespec='seconds')}
            for e in _pending(store)]


def broken_production_line(serving_dir: str, version: str, why: str, fallback: Optional[str],
                           rollback_command: str) -> str:
    """What to say when production (`version`) cannot be served: `why`, and the rollback to run
    (`fallback`: the newest complete version, None when there is none)."""
    line = f'production version {version} is broken ({why})'
    if fallback is None:
        return (f'{line} and no earlier version is complete: move {display_path(os.path.join(serving_dir, version))} '
                f'out of {display_path(serving_dir)} and run the pipeline to push a new model')
    return f'{line}; roll back to the last complete version: {rollback_command} --to {fallback}'


def broken_production(config: Config, rollback_command: str, check: Callable[[str], Optional[str]] = incomplete,
                      why: Optional[str] = None) -> Optional[str]:
    """broken_production_line for the version in production when `check` finds a problem with it
    (serving_layout.incomplete, or .unservable, which reads the variables too) or `why` says it
    failed to load, else None. `rollback_command`: the `python -m pipeline rollback --config ...`
    to print, without `--to`; the version it names passes `incomplete`."""
    serving = LocalPaths(os.path.abspath(config.run_dir)).serving
    available = versions(serving)
    if not available:
        return None
    problem = None if why else check(os.path.join(serving, available[0]))
    if problem is None and why is None:
        return None
    fallback = next((v for v in available[1:] if incomplete(os.path.join(serving, v)) is None), None)
    return broken_production_line(serving, available[0], why or describe(os.path.join(serving, available[0]), problem),
                                  fallback, rollback_command)


def notes(config: Config, rows: list[dict], unfinished: list[dict], rollback_command: str) -> list[str]:
    """The lines under history's table: production broken, each other broken version, each
    unfinished rollback and what to run for it."""
    lines = []
    for row in rows:
        if row['broken'] and row['in_production']:
            fallback = next((r['version'] for r in rows if not r['in_production'] and not r['broken']), None)
            serving = LocalPaths(os.path.abspath(config.run_dir)).serving
            lines.append(broken_production_line(serving, row['version'], row['broken'], fallback, rollback_command))
        elif row['broken']:
            lines.append(f"version {row['version']} is broken ({row['broken']}); a rollback to it is refused")
    for pending in unfinished:
        lines.append(f"the rollback to {pending['from_version']} started {pending['started_at']} has no recorded end "
                     f"(it is under way, or its record failed): unless it is under way, run `{rollback_command} --to "
                     f"{pending['from_version']}`; it records the copy if one was pushed, else pushes one")
    return lines


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
              'recipe', 'config', 'run']
    lines = [[('* ' if r['in_production'] else '  ') + r['version'] + (' broken' if r.get('broken') else ''),
              r['pushed_at'], _gated_against_text(r),
              _gate_text(r),
              '-' if r['span'] is None else str(r['span']), r['examples'] or '-',
              r['started_from'] or ('not in this store' if r['run'] is None else '-'),
              r.get('recipe') or '-', r['config_digest'] or '-', r['run'] or '-'] for r in rows]
    header[0] = '  ' + header[0]
    widths = [max(len(row[i]) for row in [header] + lines) for i in range(len(header))]
    return ['  '.join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header] + lines]


def rollback(config: Config, to_version: str) -> Rollback:
    """Puts a copy of `to_version` in production as the newest version (so TF Serving serves it),
    recorded in ML Metadata as its producer (see the module docstring for the order). Raises
    RegistryError when `to_version` is unknown or already served, BrokenVersion when it is not
    complete, StoreError when the store cannot be written (nothing pushed), PushFailed when the push
    fails (nothing pushed), NotRecorded when the copy is served but the record failed."""
    paths = LocalPaths(os.path.abspath(config.run_dir))
    available = versions(paths.serving)
    if to_version not in available:
        raise RegistryError(f'--to {to_version}: no such version under {display_path(paths.serving)} '
                            f'(versions: {", ".join(available) or "none"})')
    if to_version == available[0]:
        raise RegistryError(f'--to {to_version}: already the version in production')
    source = os.path.join(paths.serving, to_version)
    problem = unservable(source)
    if problem:
        others = [v for v in available[1:] if v != to_version and incomplete(os.path.join(paths.serving, v)) is None]
        raise BrokenVersion(f'{describe(source, problem)}; '
                            + (f'roll back to a complete version instead: {", ".join(others)}' if others else
                               'no other earlier version is complete'))
    try:
        with _store_errors(paths):
            store = _store(paths, writable=True)
            execution = _resume(store, paths, source)
            if execution is not None and custom_value(execution, TO_VERSION):  # its copy landed: now recorded
                version = custom_value(execution, TO_VERSION)
                if version == available[0]:
                    return Rollback(version, os.path.join(paths.serving, version), pushed=False)
                execution = None  # that copy was served, and something newer is now: push again
            execution = _started(store, execution, to_version, available[0])
    except StoreError as error:
        raise StoreError(f'{error.problem}: nothing was pushed, production is still version {available[0]}',
                         error.advice) from error.__cause__
    from components.nodes import atomic_pusher

    try:
        version, destination = atomic_pusher.push_atomically(source, paths.serving)
    except Exception as error:  # noqa: BLE001 - what the file system raises varies; the line names it
        _mark_failed(store, execution)
        now = versions(paths.serving)
        raise PushFailed(f'the push into {display_path(paths.serving)} failed ({_first_line(error)}); nothing was '
                         f'pushed, production is still version {now[0] if now else "none"}; make '
                         f'{display_path(paths.serving)} writable and run this rollback again') from error
    try:
        with _store_errors(paths):
            _record(store, execution, version, destination)
    except StoreError as error:
        raise NotRecorded(
            f'version {to_version} is in production again, as version {version} ({display_path(destination)}), but '
            f'ML Metadata did not record it: {error.problem}; until it does, `history` shows {version} without its '
            f'lineage; once that store can be written (keep it: it holds the start of this rollback), run this '
            f'rollback again: it records {version} and pushes nothing') from error.__cause__
    return Rollback(version, destination, pushed=True)


def _first_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:300]}"


def _rollback_type(store: mlmd.MetadataStore) -> int:
    return store.put_execution_type(metadata_store_pb2.ExecutionType(name=ROLLBACK_TYPE))


def _pending(store: mlmd.MetadataStore) -> list[metadata_store_pb2.Execution]:
    """The rollbacks recorded as started (RUNNING) and never as done, oldest first."""
    try:
        executions = store.get_executions_by_type(ROLLBACK_TYPE)
    except mlmd.errors.NotFoundError:
        return []
    return sorted((e for e in executions if e.last_known_state == metadata_store_pb2.Execution.RUNNING),
                  key=lambda e: e.id)


def _resume(store: mlmd.MetadataStore, paths: LocalPaths, source: str) -> Optional[metadata_store_pb2.Execution]:
    """The newest unfinished rollback of the version at `source`, or None. When its push landed (a
    version newer than the one it replaced, which no PushedModel records, holding `source`'s files)
    it is recorded here with that copy, and comes back with TO_VERSION set."""
    to_version = os.path.basename(source)
    pending = [e for e in _pending(store) if custom_value(e, FROM_VERSION) == to_version]
    if not pending:
        return None
    execution = pending[-1]
    replaced = int(custom_value(execution, REPLACED_VERSION) or 0)
    recorded = set(_pushes(store))
    for version in reversed(versions(paths.serving)):  # oldest first: the first copy after it started
        destination = os.path.join(paths.serving, version)
        if int(version) > replaced and destination not in recorded and storage.same_files(source, destination):
            _record(store, execution, version, destination)
            return execution
    return execution


def _started(store: mlmd.MetadataStore, execution: Optional[metadata_store_pb2.Execution], to_version: str,
             replaced: str) -> metadata_store_pb2.Execution:
    """Records the rollback as started (RUNNING), before its push: a new execution, or `execution`
    (an unfinished one whose push never landed) started again."""
    if execution is None:
        execution = metadata_store_pb2.Execution(type_id=_rollback_type(store))
    execution.last_known_state = metadata_store_pb2.Execution.RUNNING
    execution.custom_properties[FROM_VERSION].string_value = to_version
    execution.custom_properties[REPLACED_VERSION].string_value = replaced
    execution.custom_properties['time'].int_value = int(time.time())
    execution.id = store.put_execution(execution, [], [])[0]
    return execution


def _record(store: mlmd.MetadataStore, execution: metadata_store_pb2.Execution, version: str,
            destination: str) -> None:
    """Makes the started rollback `execution` COMPLETE, the producer of the copy at `destination`."""
    from tfx.types import standard_artifacts

    execution.last_known_state = metadata_store_pb2.Execution.COMPLETE
    execution.custom_properties[TO_VERSION].string_value = version
    artifact = metadata_store_pb2.Artifact(
        type_id=store.put_artifact_type(standard_artifacts.PushedModel().artifact_type, can_add_fields=True),
        uri=destination, state=metadata_store_pb2.Artifact.LIVE)
    artifact.custom_properties['pushed'].int_value = 1
    artifact.custom_properties['pushed_destination'].string_value = destination
    artifact.custom_properties['pushed_version'].string_value = version
    artifact.custom_properties['rolled_back_from'].string_value = custom_value(execution, FROM_VERSION)
    event = metadata_store_pb2.Event(type=metadata_store_pb2.Event.OUTPUT)
    event.path.steps.add().key = 'pushed_model'
    store.put_execution(execution, [(artifact, event)], [])


def _mark_failed(store: mlmd.MetadataStore, execution: metadata_store_pb2.Execution) -> None:
    """Records that the rollback's push failed. When even that write fails the execution stays
    RUNNING, which says no more than the truth: a retry finds no copy of it and pushes."""
    execution.last_known_state = metadata_store_pb2.Execution.FAILED
    try:
        store.put_execution(execution, [], [])
    except (RuntimeError, mlmd.errors.StatusError):
        pass
