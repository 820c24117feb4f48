"""ExampleValidator's anomalies as lines: the data gate stops on them, the run summary prints them."""

import os

from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx.dsl.io import fileio
from tfx.types import artifact_utils
from tfx.types.standard_artifacts import ExampleAnomalies

# The file ExampleValidator writes into each split's directory of its anomalies artifact.
ANOMALIES_FILE = 'SchemaDiff.pb'


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
            # Several reasons arrive as "Multiple errors"; each is named instead.
            reasons = [f'{r.short_description} ({r.description})' for r in info.reason] or [
                f'{info.short_description} ({info.description})']
            lines.append(f"split {split}, feature '{feature}': " + '; '.join(reasons))
        if found.HasField('dataset_anomaly_info'):
            info = found.dataset_anomaly_info
            lines.append(f'split {split}, data set: {info.short_description} ({info.description})')
    return lines
