"""The run report as the last step of the pipeline, on every orchestrator.

RunReport reads what the run produced (the examples, the data gate's label counts, the Trainer's
model and training log, the Evaluator's evaluation, the Pusher's outcome) and writes the
self-contained HTML page of components.reporting.report_page as one file at its output's URI.

The output's type is `system.HTML`, the one type the Kubeflow Pipelines UI renders as a web page
in the run's artifact view (it reads the single file at the artifact's URI). TFX's Kubeflow v2
compiler writes a custom type's TYPE_NAME as the schema title, and TFX's v2 entrypoint imports
that title back as a Python class path at run time: the top-level `system` package of this
project exists so that `system.HTML` imports (it re-exports HTML from here).
"""

import os

from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.dsl.io import fileio
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter
from tfx.types.experimental import simple_artifacts

from components.shared import node_ids

# The Kubeflow UI shows an artifact under this custom property (its launcher also sets it, to the
# output's name, where it records the artifact).
DISPLAY_NAME = 'display_name'


class HTML(types.Artifact):
    """One self-contained HTML page, the file at the artifact's URI. No PROPERTIES: the Kubeflow
    UI's HTML viewer matches the type name `system.HTML` of a type that declares none."""

    TYPE_NAME = 'system.HTML'


class RunReportSpec(ComponentSpec):
    PARAMETERS = {
        # The validated config (Config.model_dump_json()): the page shows it, and its task.
        'config': ExecutionParameter(type=str),
        # Where the data were read from (the data_path run parameter on Kubeflow).
        'data_path': ExecutionParameter(type=str),
    }
    INPUTS = {
        'examples': ChannelParameter(type=standard_artifacts.Examples),
        'label_counts': ChannelParameter(type=simple_artifacts.Statistics),
        'model': ChannelParameter(type=standard_artifacts.Model),
        'model_run': ChannelParameter(type=standard_artifacts.ModelRun),
        'evaluation': ChannelParameter(type=standard_artifacts.ModelEvaluation),
        'pushed_model': ChannelParameter(type=standard_artifacts.PushedModel),
    }
    OUTPUTS = {'report': ChannelParameter(type=HTML)}


# Input key -> (the node that produced it, its output key there), as components.reporting.run_summary reads a run.
_PRODUCERS = {
    'examples': (node_ids.EXAMPLE_GEN, 'examples'),
    'label_counts': (node_ids.DATA_GATE, 'label_counts'),
    'model': (node_ids.TRAINER, 'model'),
    'model_run': (node_ids.TRAINER, 'model_run'),
    'evaluation': (node_ids.EVALUATOR, 'evaluation'),
    'pushed_model': (node_ids.PUSHER, 'pushed_model'),
}


def _plain(artifact: types.Artifact):
    """The artifact's ML Metadata record with every custom property as a plain int, float or
    string. On Kubeflow, TFX's entrypoint hands the upstream steps' custom properties over as
    JSON structs (`pushed` arrives as the struct 1.0), which components.reporting.run_summary does not read."""
    record = type(artifact.mlmd_artifact)()
    record.CopyFrom(artifact.mlmd_artifact)
    for name, value in artifact.mlmd_artifact.custom_properties.items():
        if value.WhichOneof('value') != 'struct_value':
            continue
        plain = artifact.get_custom_property(name)
        if isinstance(plain, bool) or (isinstance(plain, float) and plain.is_integer()):
            record.custom_properties[name].int_value = int(plain)
        elif isinstance(plain, (int, float)):
            record.custom_properties[name].double_value = plain
        elif isinstance(plain, str):
            record.custom_properties[name].string_value = plain
    return record


def records_from_inputs(input_dict: dict, data_path: str) -> dict:
    """The step's inputs as components.reporting.run_summary's node records of a completed run."""
    from components.reporting.run_summary import NodeRecord

    records: dict = {}
    for key, (node, output) in _PRODUCERS.items():
        record = records.setdefault(node, NodeRecord('COMPLETE', {}, {}, {}))
        record.outputs[output] = [_plain(artifact) for artifact in input_dict.get(key, [])]
    records[node_ids.EXAMPLE_GEN].properties['input_base'] = data_path
    return records


def write_page(uri: str, page: str) -> None:
    """Writes `page` as the single file at `uri`. The orchestrator made a directory there (it does
    for every output but a value artifact); the Kubeflow UI renders a file, not a directory."""
    from components.shared import storage

    if fileio.isdir(uri):
        fileio.rmtree(uri)
    if '://' in uri:
        with fileio.open(uri, 'w') as f:  # one object: written whole or not at all
            f.write(page)
    else:
        os.makedirs(os.path.dirname(uri), exist_ok=True)
        storage.write_text_atomically(uri, page)


class RunReportExecutor(base_executor.BaseExecutor):

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        from components.reporting import run_summary, report_page
        from components.config import Config

        config = Config.model_validate_json(exec_properties['config'])
        records = records_from_inputs(input_dict, exec_properties['data_path'])
        verdict = run_summary.summarize(config, records).lines
        page = report_page.build(config, records, verdict)
        output = artifact_utils.get_single_instance(output_dict['report'])
        write_page(output.uri, report_page.render(page))
        output.set_string_custom_property(DISPLAY_NAME, 'run report')


class RunReport(base_component.BaseComponent):
    """Writes the run report (components.reporting.report_page) as a `system.HTML` artifact."""

    SPEC_CLASS = RunReportSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(RunReportExecutor)

    def __init__(self, examples: types.BaseChannel, label_counts: types.BaseChannel, model: types.BaseChannel,
                 model_run: types.BaseChannel, evaluation: types.BaseChannel, pushed_model: types.BaseChannel,
                 config: str, data_path):
        super().__init__(spec=RunReportSpec(
            examples=examples, label_counts=label_counts, model=model, model_run=model_run, evaluation=evaluation,
            pushed_model=pushed_model, config=config, data_path=data_path, report=types.Channel(type=HTML)))
