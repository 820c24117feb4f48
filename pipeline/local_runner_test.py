from tfx.orchestration import metadata

from pipeline import local_runner
from components.config import load_config


def test_production_cache_key_names_the_newest_version_and_the_config(tmp_path):
    serving = tmp_path / 'serving'
    connection = metadata.sqlite_metadata_connection_config(str(tmp_path / 'metadata.sqlite'))
    config = load_config('configs/local.yaml')
    empty = local_runner.production_cache_key(connection, str(serving), config)
    assert empty.startswith('none@')
    (serving / '17').mkdir(parents=True)
    (serving / '17' / 'saved_model.pb').write_bytes(b'')
    # A version nobody in this store pushed (the store has recorded no run at all): it is the key.
    served = local_runner.production_cache_key(connection, str(serving), config)
    assert served == '17@' + empty.split('@')[1]
    other = load_config('configs/local.yaml', ('evaluation.thresholds.recall=0.9',))
    assert local_runner.production_cache_key(connection, str(serving), other) != served
