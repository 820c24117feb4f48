"""Compiles the pipeline for Kubeflow Pipelines (v2 spec) with TFX's KubeflowV2DagRunner.

The DAG is the one create_pipeline builds for the local runner; only where it runs changes:
object-storage locations, container images (the Trainer and the tuning steps may have their own,
GPU, image), per-step resources (an accelerator on those only) and the Beam arguments of the data
steps. With `tuning.parallel_trials: N` the search is N tasks that run at once, each with the
trainer's resources, sharing one study in `tuning.storage`.
"""

import os
import re

import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2
from tfx import v1 as tfx
from tfx.orchestration.kubeflow.v2 import pipeline_builder

from components.shared import node_ids, storage
from components.config import Config, Resources
from pipeline.pipeline import create_pipeline, run_parameters

def trains(node_id: str) -> bool:
    """Whether the step trains models, and so gets kubeflow.trainer_resources and images.trainer:
    the Trainer, the tuning step and the workers of a parallel search (compare's ids end in a suffix)."""
    return node_id == node_ids.TRAINER or node_id.startswith((node_ids.TUNER, node_ids.TUNING_WORKER))


# Steps that read something outside the pipeline that changes between runs with the same inputs,
# so they must run every time, never from KFP's cache: the serving directory (the gate's
# baseline), and the data location. KFP caches a task by its inputs, and ExampleGen's are only the
# path; TFX's own answer, the input fingerprint computed by ExampleGen's driver (preCacheCheck),
# is ignored by the open-source backend, so a cached ExampleGen would never see new files.
UNCACHED = (node_ids.PRODUCTION_MODEL, node_ids.EXAMPLE_GEN)
_MEMORY_UNITS = {'': 1e-9, 'K': 1e-6, 'M': 1e-3, 'G': 1.0, 'T': 1e3,
                 'Ki': 1024 / 1e9, 'Mi': 1024 ** 2 / 1e9, 'Gi': 1024 ** 3 / 1e9, 'Ti': 1024 ** 4 / 1e9}

ResourceSpec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec


def resource_spec(resources: Resources) -> ResourceSpec:
    """Kubernetes quantities ('500m' CPU, '16Gi' memory) as the KFP ResourceSpec (CPUs, GB)."""
    spec = ResourceSpec()
    if resources.cpu is not None:
        cpu = resources.cpu
        spec.cpu_limit = float(cpu[:-1]) / 1000 if cpu.endswith('m') else float(cpu)
    if resources.memory is not None:
        number, unit = re.fullmatch(r'(\d+(?:\.\d+)?)([KMGT]i?)?', resources.memory).groups()
        spec.memory_limit = float(number) * _MEMORY_UNITS[unit or '']
    if resources.accelerator is not None:
        spec.accelerator.type = resources.accelerator
        spec.accelerator.count = resources.accelerator_count
    return spec


def build_pipeline(config: Config) -> tfx.dsl.Pipeline:
    """The local DAG, pointed at the cluster's storage, with per-step resources."""
    kubeflow = config.kubeflow
    dag = create_pipeline(
        config, data_uri=config.data.path, backbone_uri=kubeflow.backbone_uri,
        pipeline_root=kubeflow.pipeline_root, serving_dir=kubeflow.serving_dir,
        production_cache_key=None, beam_args=kubeflow.beam_args, runtime_parameters=True)
    for component in dag.components:
        if isinstance(component, tfx.dsl.Importer):
            continue  # not a container: the KFP backend runs importers itself
        resources = kubeflow.trainer_resources if trains(component.id) else kubeflow.step_resources
        spec = resource_spec(resources)
        if spec.ByteSize():
            component.with_platform_config(spec)
    return dag


def compile_pipeline(config: Config, output_path: str) -> dict:
    """Writes the KFP pipeline spec (YAML) to `output_path` and returns it."""
    if config.kubeflow is None:
        raise ValueError('the config has no `kubeflow` section')
    images = config.kubeflow.images
    default_image = {pipeline_builder.DEFAULT_IMAGE_PATH_KEY: images.default}
    dag = build_pipeline(config)
    if images.trainer:
        default_image.update({c.id: images.trainer for c in dag.components if trains(c.id)})
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
            display_name=config.pipeline.name, default_image=default_image,
            # Schema 2.1 (parameterValues, typed parameters): what the open-source KFP v2 backend reads.
            use_pipeline_spec_2_1=True),
        output_dir=os.path.dirname(output_path) or '.', output_filename=os.path.basename(output_path))
    job = runner.run(dag, write_out=False)
    spec = job['pipelineSpec']
    # TFX compiles FileBasedExampleGen (ImportExampleGen) through its own path, which drops the
    # platform config: put the step's resources on its container here.
    executors = spec['deploymentSpec']['executors']
    for component in dag.components:
        container = executors.get(f'{component.id}_executor', {}).get('container')
        if container is not None and 'resources' not in container and component.platform_config is not None:
            container['resources'] = json_format.MessageToDict(component.platform_config)
    # TFX sets one caching option for every task.
    for name in UNCACHED:
        spec['root']['dag']['tasks'][name].pop('cachingOptions', None)
    # TFX puts the runtime parameters' defaults and the pipeline root in the job it would submit to
    # Vertex, not in the pipeline spec; the Kubeflow UI and a recurring run read them from the spec.
    defaults = run_parameters(config, config.data.path)
    for name, parameter in spec['root']['inputDefinitions']['parameters'].items():
        parameter['defaultValue'] = defaults[name]
        parameter['isOptional'] = True
    spec['defaultPipelineRoot'] = config.kubeflow.pipeline_root
    os.makedirs(os.path.dirname(output_path) or '.', exist_ok=True)
    storage.write_text_atomically(output_path, yaml.safe_dump(spec, sort_keys=True))
    return spec
