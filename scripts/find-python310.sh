#!/usr/bin/env bash
# Prints the path of a Python 3.10 interpreter, or explains what to install.
# TFX 1.16 (the newest TFX whose wheels install on glibc < 2.39) supports Python 3.10 only.
set -u

is_310() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' 2>/dev/null; }

for candidate in "${PYTHON310:-}" python3.10; do
  [ -n "$candidate" ] || continue
  path=$(command -v "$candidate" 2>/dev/null) || continue
  if is_310 "$path"; then echo "$path"; exit 0; fi
done

# pyenv installs 3.10 without making it global; its shim then refuses to run.
if command -v pyenv >/dev/null 2>&1; then
  for version in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.10\.[0-9]+$' | sort -t. -k3 -n -r); do
    path="$(pyenv prefix "$version" 2>/dev/null)/bin/python3.10"
    if is_310 "$path"; then echo "$path"; exit 0; fi
  done
fi

cat >&2 <<'MSG'
error: Python 3.10 is required (TFX 1.16 supports Python 3.10 only) and none was found.
Install it, for example `pyenv install 3.10.13` or `apt-get install python3.10 python3.10-venv`,
or point PYTHON310=/path/to/python3.10 at one.
MSG
exit 1
