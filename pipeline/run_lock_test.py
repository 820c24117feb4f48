import datetime
import os
import signal
import subprocess
import sys
import time

import pytest

from pipeline import run_lock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A process that takes the lock (waiting for it when `wait`), says so, and holds it until killed.
HOLDER = '''
import sys, time
from pipeline import run_lock
with run_lock.hold(sys.argv[1], 'holder of ' + sys.argv[1], wait=sys.argv[2] == 'wait',
                   on_wait=lambda holder: print('waiting for', holder['pid'], flush=True)):
    print('held', flush=True)
    time.sleep(600)
'''


def _start(run_dir, wait=False) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, '-c', HOLDER, str(run_dir), 'wait' if wait else 'no'], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)


def _kill(process):
    process.kill()
    process.wait(timeout=10)


def test_a_second_process_is_refused_with_the_holder_named_and_a_killed_holder_frees_the_lock(tmp_path):
    first = _start(tmp_path)
    try:
        assert first.stdout.readline() == 'held\n'
        started = time.monotonic()
        with pytest.raises(run_lock.Locked) as refused:
            with run_lock.hold(str(tmp_path), 'second'):
                pytest.fail('the lock was taken twice')
        assert time.monotonic() - started < 1
        holder = refused.value.holder
        assert holder['pid'] == first.pid and holder['command'] == f'holder of {tmp_path}'
        assert abs(datetime.datetime.fromisoformat(holder['since']).timestamp() - time.time()) < 60
        assert str(refused.value) == (f'{tmp_path} is in use by pid {first.pid} (holder of {tmp_path}), '
                                      f"since {holder['since']}")

        waiter = _start(tmp_path, wait=True)
        try:
            assert waiter.stdout.readline() == f'waiting for {first.pid}\n'
            first.send_signal(signal.SIGKILL)  # no cleanup runs: the kernel releases the lock
            first.wait(timeout=10)
            assert waiter.stdout.readline() == 'held\n'  # the waiter has it now
            assert run_lock.holder(str(tmp_path))['pid'] == waiter.pid
        finally:
            _kill(waiter)
    finally:
        if first.poll() is None:
            _kill(first)
    # Both holders are gone, killed: the lock is free at once.
    with run_lock.hold(str(tmp_path), 'third'):
        assert run_lock.holder(str(tmp_path))['pid'] == os.getpid()


def test_the_lock_is_released_when_the_block_ends_even_by_an_exception(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with run_lock.hold(str(tmp_path), 'first'):
            1 / 0
    with run_lock.hold(str(tmp_path), 'second'):
        pass


def _cli(run_dir, *args) -> list[str]:
    return [sys.executable, '-m', 'pipeline', *args, '--config', os.path.join(REPO, 'configs', 'local.yaml'),
            '--set', f'pipeline.runs_dir={os.path.dirname(run_dir)}']


def test_run_and_rollback_refuse_at_once_with_exit_5_or_wait_with_wait(tmp_path):
    run_dir = tmp_path / 'digits-finetune'
    holder = _start(run_dir)
    try:
        assert holder.stdout.readline() == 'held\n'
        since = run_lock.holder(str(run_dir))['since']
        busy = f'{run_dir} is in use by pid {holder.pid} (holder of {run_dir}), since {since}'
        run = subprocess.run(_cli(run_dir, 'run'), cwd=REPO, capture_output=True, text=True, timeout=60)
        assert (run.returncode, run.stdout, run.stderr) == (
            run_lock.EXIT_LOCKED, '', f'cannot start: {busy}; give --wait to wait for it\n')
        rollback = subprocess.run(_cli(run_dir, 'rollback', '--to', '7'), cwd=REPO, capture_output=True, text=True,
                                  timeout=60)
        assert (rollback.returncode, rollback.stderr) == (
            run_lock.EXIT_LOCKED, f'cannot roll back: {busy}; give --wait to wait for it\n')
        waiting = subprocess.Popen(_cli(run_dir, 'rollback', '--to', '7', '--wait'), cwd=REPO, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert waiting.stderr.readline() == f'waiting: {busy}\n'
        assert waiting.poll() is None
    finally:
        _kill(holder)
    # The holder is gone: the rollback goes on, and answers as it would have (no such version).
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 2 and err.startswith('cannot roll back: --to 7: no such version')
