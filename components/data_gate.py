"""Stops a run before Transform and training when ExampleValidator found anomalies.

ExampleValidator records anomalies but lets the pipeline go on; this step turns them into a
failure that names every anomaly, so bad data never reaches training and the CLI exits 4.
"""

import os

from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx.dsl.component.experimental.annotations import InputArtifact
from tfx.dsl.component.experimental.decorators import component
from tfx.dsl.io import fileio
from tfx.types import artifact_utils
from tfx.types.standard_artifacts import ExampleAnomalies

# Written by ExampleValidator into each split's directory.
ANOMALIES_FILE = 'SchemaDiff.pb'


class DataValidationError(RuntimeError):
    """The data failed validation; the message lists each anomaly."""


def list_anomalies(anomalies: ExampleAnomalies) -> list[str]:
    """One line per anomaly, e.g. "split eval, feature 'label': Out-of-range values (...)"."""
    lines = []
    for split in anomalies.splits:
        path = os.path.join(artifact_utils.get_split_uri([anomalies], split), ANOMALIES_FILE)
        if not fileio.exists(path):
            continue
        with fileio.open(path, 'rb') as f:
            found = anomalies_pb2.Anomalies.FromString(f.read())
        for feature, info in sorted(found.anomaly_info.items()):
            lines.append(f"split {split}, feature '{feature}': {info.short_description} ({info.description})")
        if found.HasField('dataset_anomaly_info'):
            info = found.dataset_anomaly_info
            lines.append(f'split {split}, data set: {info.short_description} ({info.description})')
    return lines


@component
def DataValidationGate(anomalies: InputArtifact[ExampleAnomalies]) -> None:
    """Fails when `anomalies` holds any anomaly in any split."""
    problems = list_anomalies(anomalies)
    if problems:
        raise DataValidationError('data failed validation:\n  ' + '\n  '.join(problems))
