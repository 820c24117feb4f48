"""ProductionModel: the newest complete version in the serving directory, or an empty model."""

import os

import pytest

from components.nodes import production_model
from components.nodes.gate_evaluator_test import _production, _scoring_model
from components.shared import release_keys


def test_nothing_in_production_gives_an_empty_model_and_no_path(tmp_path):
    output = _production(tmp_path, tmp_path / 'serving')  # the directory does not exist yet
    assert not production_model.has_serving_model(output)
    assert output.get_string_custom_property(release_keys.PRODUCTION_PATH) == ''
    assert output.get_string_custom_property(release_keys.PRODUCTION_VERSION) == ''


def test_the_newest_complete_version_is_the_baseline_and_an_unfinished_push_is_not(tmp_path):
    serving = tmp_path / 'serving'
    for version in ('100', '200'):
        _scoring_model(tmp_path / 'models' / version)
        serving.mkdir(exist_ok=True)
        os.rename(tmp_path / 'models' / version / 'Format-Serving', serving / version)
    (serving / '300' / 'variables').mkdir(parents=True)  # a push that has not finished: no saved_model.pb
    output = _production(tmp_path, serving)
    assert production_model.has_serving_model(output)
    assert output.get_string_custom_property(release_keys.PRODUCTION_VERSION) == '200'
    assert output.get_string_custom_property(release_keys.PRODUCTION_PATH) == str(serving / '200')
    served = os.path.join(output.uri, 'Format-Serving', 'saved_model.pb')
    assert os.path.exists(served)


@pytest.mark.parametrize('damage, problem', [
    (lambda v: os.remove(v / 'variables' / 'variables.index'), 'variables/variables.index is missing'),
    (lambda v: _cut_short(v / 'variables' / 'variables.data-00000-of-00001'),
     'variables/ does not read back (IndexError: Read less bytes than requested)'),
])
def test_a_broken_model_in_production_stops_the_step_named(tmp_path, damage, problem):
    serving = tmp_path / 'serving'
    _scoring_model(tmp_path / 'models' / '100')
    serving.mkdir()
    os.rename(tmp_path / 'models' / '100' / 'Format-Serving', serving / '100')
    damage(serving / '100')
    with pytest.raises(production_model.BrokenProduction) as raised:
        _production(tmp_path, serving)
    assert str(raised.value) == (f'production version 100 is broken ({serving / "100" / problem}); roll back to a '
                                 f'complete version (python -m pipeline rollback --to VERSION, where it runs '
                                 f'locally), then run again')


def _cut_short(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
