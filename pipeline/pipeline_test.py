import json
import os
import shutil

from pipeline import pipeline as pipeline_lib
from pipeline.config import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_code_changes_reach_the_cache_key_of_transform_and_trainer(tmp_path):
    import components

    copy = tmp_path / 'components'
    shutil.copytree(os.path.dirname(components.__file__), copy)
    before = pipeline_lib.code_fingerprint(str(copy))
    (copy / 'trainer_test.py').write_text('# tests do not count\n')
    assert pipeline_lib.code_fingerprint(str(copy)) == before
    with open(copy / 'preprocessing.py', 'a') as f:
        f.write('\n# changed\n')
    assert pipeline_lib.code_fingerprint(str(copy)) != before

    config = load_config(os.path.join(REPO, 'configs', 'local.yaml'))
    dag = pipeline_lib.create_pipeline(config, data_uri='data', backbone_uri='backbone', pipeline_root='root',
                                       serving_dir='serving')
    nodes = {node.id: node for node in dag.components}
    current = pipeline_lib.code_fingerprint()
    assert json.loads(nodes['Trainer'].exec_properties['custom_config'])['code'] == current
    assert json.loads(nodes['Transform'].exec_properties['custom_config'])['code'] == current
