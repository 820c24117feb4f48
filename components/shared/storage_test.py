import os

import pytest

from components.shared import storage


def test_atomic_path_renames_into_place_and_a_failure_keeps_the_old_file_and_leaves_no_partial(tmp_path):
    path = str(tmp_path / 'log.json')
    storage.write_text_atomically(path, 'old')
    with pytest.raises(RuntimeError):
        with storage.atomic_path(path) as partial:
            with open(partial, 'w') as f:
                f.write('half')
            raise RuntimeError('killed mid-write')
    assert open(path).read() == 'old' and os.listdir(tmp_path) == ['log.json']


def test_atomic_path_keeps_a_suffix_and_stages_whole_directories(tmp_path):
    with storage.atomic_path(str(tmp_path / 'head.weights.h5'), suffix='.weights.h5') as partial:
        assert partial == str(tmp_path / 'head.partial.weights.h5')
        open(partial, 'w').close()
    with pytest.raises(ValueError):
        with storage.atomic_path(str(tmp_path / 'backbone')) as staging:
            os.makedirs(os.path.join(staging, 'inner'))
            raise ValueError
    assert sorted(os.listdir(tmp_path)) == ['head.weights.h5']
    with storage.atomic_path(str(tmp_path / 'backbone')) as staging:
        os.makedirs(staging)
        open(os.path.join(staging, 'backbone.keras'), 'w').close()
    assert os.listdir(tmp_path / 'backbone') == ['backbone.keras']
