import os

import pandas as pd
import tensorflow_data_validation as tfdv
from tfx.types.standard_artifacts import ExampleAnomalies

from components import data_gate


def _anomalies_artifact(tmp_path, anomalies_by_split) -> ExampleAnomalies:
    artifact = ExampleAnomalies()
    artifact.uri = str(tmp_path)
    artifact.splits = list(anomalies_by_split)
    for split, anomalies in anomalies_by_split.items():
        split_dir = os.path.join(tmp_path, f'Split-{split}')
        os.makedirs(split_dir)
        with open(os.path.join(split_dir, data_gate.ANOMALIES_FILE), 'wb') as f:
            f.write(anomalies.SerializeToString())
    return artifact


def _validate(frame, schema):
    return tfdv.validate_statistics(tfdv.generate_statistics_from_dataframe(frame), schema)


def test_lists_each_anomaly_tfdv_found_by_split_and_feature(tmp_path):
    good = pd.DataFrame({'label': [5, 6, 7, 9], 'source': ['a', 'b', 'a', 'b']})
    schema = tfdv.infer_schema(tfdv.generate_statistics_from_dataframe(good))
    clean = _validate(good, schema)
    dropped_column = _validate(pd.DataFrame({'label': [5, 6]}), schema)
    artifact = _anomalies_artifact(tmp_path, {'train': clean, 'eval': dropped_column})

    problems = data_gate.list_anomalies(artifact)

    assert len(problems) == 1
    assert problems[0].startswith("split eval, feature 'source': ")


def test_clean_data_lists_nothing(tmp_path):
    good = pd.DataFrame({'label': [5, 6, 7, 9]})
    schema = tfdv.infer_schema(tfdv.generate_statistics_from_dataframe(good))
    assert data_gate.list_anomalies(_anomalies_artifact(tmp_path, {'train': _validate(good, schema)})) == []
