"""Kubeflow Pipelines: images, step resources and the recurring run."""

from __future__ import annotations

from typing import Optional

import pydantic

from components.config.base import _Section, bounded


class Resources(_Section):
    """Kubernetes requests for one step. `accelerator` is the resource name, e.g. nvidia.com/gpu."""

    cpu: Optional[str] = pydantic.Field(default=None, pattern=r'^\d+(\.\d+)?m?$')
    memory: Optional[str] = pydantic.Field(default=None, pattern=r'^\d+(\.\d+)?([KMGT]i?)?$')
    accelerator: Optional[str] = None
    # The most accelerators a node carries (a DGX-2 has 16).
    accelerator_count: bounded(int, ge=1, le=16) = 1


class ContainerImages(_Section):
    """Container images: `default` for every step (CPU); `trainer` for the Trainer and the tuning
    steps (GPU)."""

    default: str = pydantic.Field(min_length=1)
    trainer: Optional[str] = None


class KubeflowSchedule(_Section):
    """Recurring runs: a cron expression with seconds, as Kubeflow Pipelines reads it."""

    cron: str = pydantic.Field(pattern=r'^\S+( \S+){5}$')
    # One run at a time: two overlapping runs would gate against the same production model. No lock
    # spans pods, so this and the Pusher's compare-and-swap are what keep releases one at a time.
    max_concurrency: int = pydantic.Field(default=1, ge=1, le=1)


class KubeflowSection(_Section):
    """Where the pipeline runs on a cluster: object-storage locations, images, resources, schedule."""

    pipeline_root: str = pydantic.Field(min_length=1)
    # The pre-trained backbone the Importer brings in: a .keras file or a directory holding backbone.keras.
    backbone_uri: str = pydantic.Field(min_length=1)
    serving_dir: str = pydantic.Field(min_length=1)
    images: ContainerImages
    # The Trainer's, and each tuning worker's (tuning.parallel_trials of them run at once).
    trainer_resources: Resources = Resources()
    step_resources: Resources = Resources()
    # Beam arguments of the data steps on the cluster (e.g. --runner=DataflowRunner ...).
    beam_args: tuple[str, ...] = ()
    schedule: Optional[KubeflowSchedule] = None

    @pydantic.field_validator('step_resources')
    @classmethod
    def _no_accelerator_for_other_steps(cls, value: Resources) -> Resources:
        if value.accelerator is not None:
            raise ValueError('only the Trainer and the tuning steps get an accelerator (set '
                             'kubeflow.trainer_resources.accelerator)')
        return value
