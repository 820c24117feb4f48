"""Headless Chromium (Debian's `chromium` package) for the tests: opens a page, takes a screenshot,
and returns what the page wrote to the browser console (each message is logged on stderr as
"INFO:CONSOLE..."; an uncaught exception is one too)."""

import os
import shutil
import subprocess
import tempfile

# The flags this machine's closed network needs: no background fetches, sync, component updates.
_FLAGS = ('--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
          '--disable-background-networking', '--disable-component-update', '--disable-sync',
          '--hide-scrollbars', '--enable-logging=stderr', '--v=0')


def chromium() -> str:
    path = shutil.which('chromium')
    if path is None:
        raise RuntimeError("Debian's chromium is not installed; `make test` installs it (apt-get install chromium)")
    return path


def screenshot(page: str, png: str, width: int = 1200, height: int = 3000) -> list[str]:
    """Screenshots the local HTML file `page` into `png`; returns the console messages."""
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [chromium(), *_FLAGS, f'--user-data-dir={profile}', f'--window-size={width},{height}',
             f'--screenshot={png}', 'file://' + os.path.abspath(page)],
            capture_output=True, text=True, timeout=120)
    if result.returncode != 0 or not os.path.exists(png):
        raise RuntimeError(f'chromium failed ({result.returncode}): {result.stderr[-2000:]}')
    return [line for line in result.stderr.splitlines() if ':CONSOLE' in line]
