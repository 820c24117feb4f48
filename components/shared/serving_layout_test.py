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
