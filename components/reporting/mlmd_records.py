"""A pipeline run as ML Metadata recorded it: its node executions, their inputs and outputs.

Only ml_metadata is imported here (not TensorFlow or TFX), so that commands reading the store,
such as `history`, answer in a second.
"""

import dataclasses
import os
from typing import Optional

import ml_metadata as mlmd
from ml_metadata.proto import metadata_store_pb2

from components.shared import node_ids

_OUTPUT_EVENTS = (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)
_INPUT_EVENTS = (metadata_store_pb2.Event.INPUT, metadata_store_pb2.Event.DECLARED_INPUT)


@dataclasses.dataclass
class NodeRecord:
    """One node's execution in a run: its state, input and output artifacts by key, and its
    execution properties (as TFX recorded them: strings, numbers, JSON)."""

    state: str
    inputs: dict[str, list[metadata_store_pb2.Artifact]]
    outputs: dict[str, list[metadata_store_pb2.Artifact]]
    properties: dict = dataclasses.field(default_factory=dict)


def latest_run_context(store: mlmd.MetadataStore) -> Optional[metadata_store_pb2.Context]:
    runs = store.get_contexts_by_type('pipeline_run')
    return max(runs, key=lambda c: (c.create_time_since_epoch, c.id)) if runs else None


def latest_run_id(connection_config: metadata_store_pb2.ConnectionConfig) -> Optional[str]:
    """The id of the newest pipeline run in the store."""
    run = latest_run_context(mlmd.MetadataStore(connection_config))
    return run.name if run else None


def training_logs_dir(metadata_path: str) -> Optional[str]:
    """The Keras/TensorBoard logs of the newest run's Trainer (one subdirectory per stage), or None."""
    sqlite = metadata_store_pb2.SqliteMetadataSourceConfig
    connection = metadata_store_pb2.ConnectionConfig(sqlite=sqlite(
        filename_uri=metadata_path, connection_mode=sqlite.READONLY))
    uri = output_uri(latest_run(connection), node_ids.TRAINER, 'model_run')
    logs = os.path.join(uri, 'logs') if uri else None
    return logs if logs and os.path.isdir(logs) else None


def latest_run(connection_config: metadata_store_pb2.ConnectionConfig) -> dict[str, NodeRecord]:
    """Node id -> NodeRecord for the newest pipeline run in the store (one store per pipeline).
    Another process's run, when runs overlap: a run reads itself back with run_by_id."""
    store = mlmd.MetadataStore(connection_config)
    run = latest_run_context(store)
    return {} if run is None else run_records(store, run)


def run_by_id(connection_config: metadata_store_pb2.ConnectionConfig, run_id: str) -> dict[str, NodeRecord]:
    """Node id -> NodeRecord for the pipeline run `run_id`; {} when it recorded nothing (it
    stopped before its first step)."""
    store = mlmd.MetadataStore(connection_config)
    try:
        run = store.get_context_by_type_and_name('pipeline_run', run_id)
    except mlmd.errors.NotFoundError:  # a store that has recorded no run at all
        return {}
    return {} if run is None else run_records(store, run)


def run_records(store: mlmd.MetadataStore, run: metadata_store_pb2.Context) -> dict[str, NodeRecord]:
    """Node id -> NodeRecord for the pipeline run `run` (a `pipeline_run` context)."""
    executions = store.get_executions_by_context(run.id)
    node_type = store.get_context_type('node')
    records: dict[str, NodeRecord] = {}
    for execution in sorted(executions, key=lambda e: e.id):
        node_names = [c.name for c in contexts_of(store, execution.id) if c.type_id == node_type.id]
        if not node_names:
            continue
        node_id = node_names[0].split('.', 1)[1]
        events = store.get_events_by_execution_ids([execution.id])
        artifacts = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
        inputs: dict[str, list] = {}
        outputs: dict[str, list] = {}
        for event in events:
            by_key = outputs if event.type in _OUTPUT_EVENTS else inputs if event.type in _INPUT_EVENTS else None
            if by_key is not None:
                by_key.setdefault(event.path.steps[0].key, []).append(artifacts[event.artifact_id])
        state = metadata_store_pb2.Execution.State.Name(execution.last_known_state)
        properties = {k: _custom_value(v) for k, v in execution.custom_properties.items()}
        records[node_id] = NodeRecord(state, inputs, outputs, properties)
    return records


def contexts_of(store: mlmd.MetadataStore, execution_id: int) -> list[metadata_store_pb2.Context]:
    """The contexts of an execution; none (not an error) for one recorded outside a pipeline run,
    such as a rollback."""
    try:
        return store.get_contexts_by_execution(execution_id)
    except mlmd.errors.NotFoundError:
        return []


def _custom_value(value: metadata_store_pb2.Value):
    kind = value.WhichOneof('value')
    return getattr(value, kind) if kind else None


def custom_value(item, name: str):
    """A custom property of an artifact or execution, or None."""
    value = item.custom_properties.get(name)
    return None if value is None else _custom_value(value)


def examples_span(examples):
    """The spans an Examples artifact holds: the list read together (data.rolling_spans), else its
    one span (ExampleGen's custom properties)."""
    spans = custom_value(examples, 'spans')
    return spans if spans else custom_value(examples, 'span')


def output_uri(records: dict[str, NodeRecord], node: str, key: str) -> Optional[str]:
    """The URI of the first artifact a node of the run output under `key`, or None."""
    record = records.get(node)
    artifacts = record.outputs.get(key) if record else None
    return artifacts[0].uri if artifacts else None


def display_path(path: str) -> str:
    """`path` relative to the working directory when it lies inside it, else as it is."""
    relative = os.path.relpath(path)
    return path if relative.startswith(os.pardir) else relative
