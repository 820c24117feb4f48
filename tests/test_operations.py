"""Operating the pipeline when something under runs/ is broken, through the CLI: each failure ends
with its exit code and one line that names it and says what to do, and a rollback never serves a
broken version, never pushes without a record of its start, and never pushes a second copy.

Each test works on a copy of the session's first run (its served model and store) with two more
copies pushed, so that three versions are there: `oldest`, `older` and `newest` (in production).
No pipeline run of its own."""

import os
import re
import shlex
import shutil
import subprocess
import types

import pytest

from tests.conftest import CONFIG

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group('default_run')]


@pytest.fixture
def copied(first_run, tmp_path, tree_digest):
    from components.nodes import atomic_pusher
    from components.shared import serving_layout

    runs = tmp_path / 'runs'
    run_dir = runs / os.path.basename(first_run.run_dir)
    run_dir.mkdir(parents=True)
    served = os.path.join(first_run.run_dir, 'serving', serving_layout.latest_version(
        os.path.join(first_run.run_dir, 'serving')))
    serving = str(run_dir / 'serving')
    oldest, _ = atomic_pusher.push_atomically(served, serving)
    older, _ = atomic_pusher.push_atomically(served, serving)
    newest, _ = atomic_pusher.push_atomically(served, serving)
    shutil.copy(os.path.join(first_run.run_dir, 'metadata.sqlite'), run_dir / 'metadata.sqlite')
    config = ['--config', CONFIG, '--set', f'pipeline.runs_dir={runs}']
    return types.SimpleNamespace(
        config=config, run_dir=str(run_dir), serving=serving, store=str(run_dir / 'metadata.sqlite'),
        oldest=oldest, older=older, newest=newest, digest=lambda: tree_digest(serving),
        rollback_command=shlex.join(['python', '-m', 'pipeline', 'rollback', *config]))


def _one_line(result) -> str:
    assert result.stdout == '', result.stdout
    [line] = result.stderr.splitlines()
    return line


def _traceback_file(line: str, run_dir: str, command: str) -> str:
    """The file the line names after `; full traceback: `, which holds a traceback."""
    found = re.search(rf'; full traceback: ({re.escape(run_dir)}/logs/\S+\.{command}\.traceback\.txt)$', line)
    assert found, line
    with open(found[1]) as f:
        assert f.read().startswith('Traceback (most recent call last):')
    return found[1]


def test_rollback_refuses_a_version_that_is_not_complete(copied, run_cli):
    os.remove(os.path.join(copied.serving, copied.oldest, 'variables', 'variables.index'))
    before = copied.digest()
    result = run_cli('rollback', *copied.config, '--to', copied.oldest)
    assert result.returncode == 2
    assert _one_line(result) == (
        f'cannot roll back to {copied.oldest}: {copied.serving}/{copied.oldest}/variables/variables.index is missing; '
        f'roll back to a complete version instead: {copied.older}')
    assert copied.digest() == before


def test_a_broken_model_in_production_is_named_by_run_predict_and_history_with_the_rollback_that_mends_it(
        copied, run_cli, tmp_path):
    os.remove(os.path.join(copied.serving, copied.newest, 'variables', 'variables.data-00000-of-00001'))
    broken = (f'production version {copied.newest} is broken ({copied.serving}/{copied.newest}/variables/'
              f'variables.data-00000-of-* is missing); roll back to the last complete version: '
              f'{copied.rollback_command} --to {copied.older}')
    image = tmp_path / 'blank.png'
    from PIL import Image

    Image.new('L', (8, 8)).save(image)

    run = run_cli('run', *copied.config)
    assert (run.returncode, _one_line(run)) == (2, f'cannot start: {broken}')
    predict = run_cli('predict', *copied.config, str(image))
    assert (predict.returncode, _one_line(predict)) == (2, f'cannot predict: {broken}')
    history = run_cli('history', *copied.config)
    assert history.returncode == 0
    lines = history.stdout.splitlines()
    assert lines[1].startswith(f'* {copied.newest} broken  ') and lines[2].startswith(f'  {copied.older}  ')
    assert lines[-1] == broken

    # The line's command, as printed, mends production.
    mended = run_cli(*shlex.split(broken.split(': ')[-1])[3:])
    assert mended.returncode == 0, mended.stderr
    assert run_cli('predict', *copied.config, str(image)).returncode == 0


def test_a_model_in_production_whose_variables_do_not_read_back_stops_run_and_predict(copied, run_cli, tmp_path):
    data = os.path.join(copied.serving, copied.newest, 'variables', 'variables.data-00000-of-00001')
    with open(data, 'r+b') as f:
        f.truncate(os.path.getsize(data) // 2)
    image = tmp_path / 'blank.png'
    from PIL import Image

    Image.new('L', (8, 8)).save(image)
    mend = f'roll back to the last complete version: {copied.rollback_command} --to {copied.older}'

    run = run_cli('run', *copied.config)
    assert (run.returncode, _one_line(run)) == (
        2, f'cannot start: production version {copied.newest} is broken ({copied.serving}/{copied.newest}/variables/ '
           f'does not read back (IndexError: Read less bytes than requested)); {mend}')
    # predict checks the files only, and finds the rest when the model does not load.
    predict = run_cli('predict', *copied.config, str(image))
    line = _one_line(predict)
    assert predict.returncode == 2
    assert line.startswith(f'cannot predict: production version {copied.newest} is broken '
                           f'({copied.serving}/{copied.newest} does not load: ')
    assert f'); {mend}; full traceback: ' in line
    _traceback_file(line, copied.run_dir, 'predict')


def test_a_store_that_is_not_one_stops_history_rollback_and_run_before_anything_is_done(copied, run_cli):
    os.rename(copied.store, copied.store + '.aside')
    os.mkdir(copied.store)
    before = copied.digest()
    unusable = (rf'{re.escape(copied.store)} is not a usable ML Metadata store '
                rf'\(Cannot connect sqlite3 database: [^)]+\)')
    advice = ('restore it from a backup, or move it aside to start an empty one (serving/ keeps every version; the '
              'lineage `history` shows is lost)')

    history = run_cli('history', *copied.config)
    line = _one_line(history)
    assert history.returncode == 2
    assert re.fullmatch(rf'cannot read the history: {unusable}; {re.escape(advice)}; full traceback: \S+', line), line
    _traceback_file(line, copied.run_dir, 'history')

    rollback = run_cli('rollback', *copied.config, '--to', copied.oldest)
    line = _one_line(rollback)
    assert rollback.returncode == 2
    assert re.fullmatch(rf'cannot roll back to {copied.oldest}: {unusable}: nothing was pushed, production is still '
                        rf'version {copied.newest}; {re.escape(advice)}; full traceback: \S+', line), line
    _traceback_file(line, copied.run_dir, 'rollback')
    assert copied.digest() == before

    run = run_cli('run', *copied.config)
    line = _one_line(run)
    assert run.returncode == 2
    assert re.fullmatch(rf'cannot start: {unusable}; {re.escape(advice)}; full traceback: \S+', line), line

    # The store back in place, the same rollback pushes one copy, recorded.
    os.rmdir(copied.store)
    os.rename(copied.store + '.aside', copied.store)
    again = run_cli('rollback', *copied.config, '--to', copied.oldest)
    assert again.returncode == 0, again.stderr
    versions = sorted(os.listdir(copied.serving))
    assert len(versions) == 4
    assert again.stdout == (f'rolled back: version {copied.oldest} is in production again, as version {versions[-1]} '
                            f'({copied.serving}/{versions[-1]})\n')
    assert _history(run_cli, copied)[0]['rollback_of'] == copied.oldest


def _history(run_cli, copied) -> list[dict]:
    import json

    result = run_cli('history', *copied.config, '--json')
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_rollback_whose_record_fails_after_the_push_says_so_and_its_retry_records_it_pushing_nothing(
        copied, run_cli, monkeypatch):
    from pipeline import registry

    record = registry._record

    def locked(*args):  # what ML Metadata raises when another process holds the store locked
        raise RuntimeError('Error when executing query: database is locked query: UPDATE `Execution` ...')

    monkeypatch.setattr(registry, '_record', locked)
    failed = run_cli('rollback', *copied.config, '--to', copied.oldest)
    copy = max(os.listdir(copied.serving), key=int)
    line = _one_line(failed)
    assert failed.returncode == 1
    assert line.startswith(
        f'rolled back, not recorded: version {copied.oldest} is in production again, as version {copy} '
        f'({copied.serving}/{copy}), but ML Metadata did not record it: {copied.store} is not a usable ML Metadata '
        f'store (database is locked); until it does, `history` shows {copy} without its lineage; once that store '
        f'can be written (keep it: it holds the start of this rollback), run this rollback again: it records {copy} '
        f'and pushes nothing; full traceback: ')
    _traceback_file(line, copied.run_dir, 'rollback')
    table = run_cli('history', *copied.config).stdout.splitlines()
    assert re.fullmatch(
        rf'the rollback to {copied.oldest} started \S+ has no recorded end \(it is under way, or its record failed\): '
        rf'unless it is under way, run `{re.escape(copied.rollback_command)} --to {copied.oldest}`; it records the '
        rf'copy if one was pushed, else pushes one', table[-1]), table[-1]

    monkeypatch.setattr(registry, '_record', record)
    before = copied.digest()
    retry = run_cli('rollback', *copied.config, '--to', copied.oldest)
    assert (retry.returncode, retry.stderr) == (0, '')
    assert retry.stdout == (f'recorded: version {copied.oldest} was in production again already, as version {copy} '
                            f'({copied.serving}/{copy}), pushed by a rollback whose record had failed; nothing pushed '
                            f'now\n')
    assert copied.digest() == before  # no second copy
    rows = _history(run_cli, copied)
    assert (rows[0]['version'], rows[0]['rollback_of']) == (copy, copied.oldest)
    assert len(run_cli('history', *copied.config).stdout.splitlines()) == 1 + 4  # the rows, no line under them


@pytest.fixture
def read_only(copied):
    """Makes a directory unwritable, for root too (chattr +i, immutable), and writable again after
    the test; skips where neither that nor chmod stops a write."""
    made = []

    def make(path):
        if os.geteuid() == 0:
            subprocess.run(['chattr', '+i', path], capture_output=True)
        else:
            os.chmod(path, 0o555)
        made.append(path)
        try:
            open(os.path.join(path, '.probe'), 'w').close()
        except OSError:
            return
        os.remove(os.path.join(path, '.probe'))
        pytest.skip(f'cannot make {path} read-only here')

    yield make
    for path in made:
        if os.geteuid() == 0:
            subprocess.run(['chattr', '-i', path], capture_output=True)
        else:
            os.chmod(path, 0o755)


def test_a_rollback_into_a_read_only_serving_directory_pushes_nothing_and_says_so(copied, run_cli, read_only):
    before = copied.digest()
    read_only(copied.serving)
    result = run_cli('rollback', *copied.config, '--to', copied.oldest)
    line = _one_line(result)
    assert result.returncode == 1
    assert re.fullmatch(
        rf'cannot roll back to {copied.oldest}: the push into {re.escape(copied.serving)} failed \(\w+: .+\); nothing '
        rf'was pushed, production is still version {copied.newest}; make {re.escape(copied.serving)} writable and run '
        rf'this rollback again; full traceback: \S+', line), line
    _traceback_file(line, copied.run_dir, 'rollback')
    assert copied.digest() == before
    # Recorded as failed, not as a rollback still under way: no line under the rows.
    assert len(run_cli('history', *copied.config).stdout.splitlines()) == 1 + 3


def test_predict_names_a_jpeg_that_does_not_decode_as_the_models_channels(first_run, run_cli, tmp_path):
    """The served model decodes 1 channel; libjpeg converts no CMYK JPEG to that."""
    from PIL import Image

    cmyk = tmp_path / 'cmyk.jpg'
    Image.new('CMYK', (16, 16), (10, 20, 30, 40)).save(cmyk)
    result = run_cli('predict', '--config', CONFIG, '--set', f'pipeline.runs_dir={os.path.dirname(first_run.run_dir)}',
                     str(cmyk))
    assert (result.returncode, _one_line(result)) == (
        2, f"cannot predict: {cmyk}: does not decode as the model's 1 channel (Unsupported color conversion request)")
