"""Runs the pipeline on this machine: LocalDagRunner, an SQLite ML Metadata store, Beam DirectRunner."""

import dataclasses
import os

from tfx import v1 as tfx

from components import backbone, digits
from pipeline import outcome
from pipeline.config import Config
from pipeline.pipeline import create_pipeline


@dataclasses.dataclass(frozen=True)
class LocalPaths:
    """Everything a local run writes, under runs/<pipeline name>/."""

    run_dir: str

    @property
    def pipeline_root(self) -> str:
        return os.path.join(self.run_dir, 'pipeline')

    @property
    def metadata(self) -> str:
        return os.path.join(self.run_dir, 'metadata.sqlite')

    @property
    def serving(self) -> str:
        return os.path.join(self.run_dir, 'serving')

    @property
    def data(self) -> str:
        return os.path.join(self.run_dir, 'data')

    @property
    def backbones(self) -> str:
        return os.path.join(self.run_dir, 'backbones')


def prepare_data(config: Config, paths: LocalPaths) -> str:
    """The directory ExampleGen imports: the user's, or the embedded digits written once."""
    if config.data.source != 'digits':
        return os.path.abspath(config.data.path)
    digits.write_digits_tfrecords(paths.data, config.data.digits_classes, config.data.image_feature,
                                  config.data.label_feature)
    return os.path.abspath(paths.data)


def run(config: Config) -> outcome.Outcome:
    """Runs the whole pipeline once and returns how it ended."""
    paths = LocalPaths(os.path.abspath(config.run_dir))
    os.makedirs(paths.run_dir, exist_ok=True)
    data_uri = prepare_data(config, paths)
    backbone_uri = backbone.prepare_backbone(config.model.backbone, config.model.input, paths.backbones)
    connection = tfx.orchestration.metadata.sqlite_metadata_connection_config(paths.metadata)
    dag = create_pipeline(config, data_uri=data_uri, backbone_uri=backbone_uri,
                          pipeline_root=paths.pipeline_root, serving_dir=paths.serving,
                          metadata_connection_config=connection)
    try:
        tfx.orchestration.LocalDagRunner().run(dag)
    except Exception as error:  # noqa: BLE001 - the run's records say what failed; see summarize.
        result = outcome.summarize(config, outcome.latest_run(connection))
        if result.exit_code == outcome.EXIT_FAILED:
            result.lines.append(f'{type(error).__name__}: {error}')
        elif result.exit_code == outcome.EXIT_BAD_DATA:
            # The gate's own message lists every problem, including the checks beyond TFDV's.
            result.lines[1:] = ['  ' + line for line in outcome.validation_problems(error)] or result.lines[1:]
        return result
    return outcome.summarize(config, outcome.latest_run(connection))
