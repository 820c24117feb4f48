import os

import pytest
from google.protobuf.internal.encoder import _VarintBytes
from tensorboard.compat.proto import meta_graph_pb2

from components.shared import serving_layout


def test_versions_are_the_complete_numeric_directories_newest_first(tmp_path):
    for name, complete in (('9', True), ('10', True), ('11', False), ('.partial-12', True), ('notes', True)):
        (tmp_path / name).mkdir()
        if complete:
            (tmp_path / name / 'saved_model.pb').write_bytes(b'')
    assert serving_layout.versions(str(tmp_path)) == ['10', '9']
    assert serving_layout.versions(str(tmp_path / 'missing')) == []


def test_names_with_a_trailing_slash_count_as_their_directory(tmp_path):
    (tmp_path / '3').mkdir()
    (tmp_path / '3' / 'saved_model.pb').write_bytes(b'')
    assert serving_layout.versions(str(tmp_path), listdir=lambda d: ['3/']) == ['3']


def saved_model_bytes(tags=('serve',)) -> bytes:
    """A serialized SavedModel: schema version 1 and one MetaGraphDef with `tags`, nothing else."""
    graph = meta_graph_pb2.MetaGraphDef()
    graph.meta_info_def.tags.extend(tags)
    body = graph.SerializeToString()
    return b'\x08\x01' + b'\x12' + _VarintBytes(len(body)) + body


def write_complete_version(path, marker: str = 'model', shards: int = 1) -> str:
    """The files `incomplete` asks of a version, holding `marker` (which tells copies apart)."""
    os.makedirs(os.path.join(path, 'variables'))
    with open(os.path.join(path, 'saved_model.pb'), 'wb') as f:
        f.write(saved_model_bytes())
    with open(os.path.join(path, 'variables', 'variables.index'), 'w') as f:
        f.write(marker)
    for shard in range(shards):
        with open(os.path.join(path, 'variables', f'variables.data-{shard:05d}-of-{shards:05d}'), 'w') as f:
            f.write(marker)
    return str(path)


def test_a_version_with_every_file_is_complete(tmp_path):
    assert serving_layout.incomplete(write_complete_version(tmp_path / '1', shards=3)) is None


@pytest.mark.parametrize('damage, problem', [
    (lambda v: os.remove(v / 'variables' / 'variables.index'), 'variables/variables.index is missing'),
    (lambda v: (v / 'variables' / 'variables.index').write_bytes(b''), 'variables/variables.index is empty'),
    (lambda v: os.remove(v / 'variables' / 'variables.data-00001-of-00003'),
     'variables/variables.data-00001-of-00003 is missing'),
    (lambda v: (v / 'variables' / 'variables.data-00002-of-00003').write_bytes(b''),
     'variables/variables.data-00002-of-00003 is empty'),
    (lambda v: [os.remove(v / 'variables' / f'variables.data-0000{n}-of-00003') for n in range(3)],
     'variables/variables.data-00000-of-* is missing'),
    (lambda v: os.remove(v / 'saved_model.pb'), 'saved_model.pb is missing'),
    (lambda v: (v / 'saved_model.pb').write_bytes(b''), 'saved_model.pb is empty'),
    (lambda v: (v / 'saved_model.pb').write_bytes(saved_model_bytes()[:-3]),
     'saved_model.pb does not parse as a SavedModel (cut short: a field of '),
    (lambda v: (v / 'saved_model.pb').write_bytes(b'\x08\x01\x12\x03\xff\xff\xff'),
     'saved_model.pb does not parse as a SavedModel ('),
    (lambda v: (v / 'saved_model.pb').write_bytes(b'not a proto'), 'saved_model.pb does not parse as a SavedModel ('),
    (lambda v: (v / 'saved_model.pb').write_bytes(saved_model_bytes(tags=('train',))),
     "saved_model.pb holds no MetaGraph tagged 'serve' (the one TF Serving loads)"),
])
def test_a_missing_empty_or_unparsable_file_is_named(tmp_path, damage, problem):
    version = tmp_path / '1'
    write_complete_version(version, shards=3)
    damage(version)
    assert serving_layout.incomplete(str(version)).startswith(problem)


def test_tfx_files_read_as_the_local_ones(tmp_path):
    version = tmp_path / '1'
    write_complete_version(version)
    assert serving_layout.incomplete(str(version), serving_layout.tfx_files()) is None
    os.remove(version / 'variables' / 'variables.index')
    assert serving_layout.incomplete(str(version), serving_layout.tfx_files()) == 'variables/variables.index is missing'
