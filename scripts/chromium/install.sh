#!/usr/bin/env bash
# Install headless Chromium (Debian's `chromium` package) for the run report's
# end-to-end test, when it is missing. Prints the path of the browser on
# stdout and exits 0; exits non-zero with the reason on stderr when it cannot
# be installed (not root, no apt-get, no package source).
#
# Idempotent and safe to run concurrently: one flock around apt-get.
#
# Usage: scripts/chromium/install.sh
set -euo pipefail

found() {
  for name in chromium chromium-browser; do
    if path=$(command -v "$name"); then
      echo "$path"
      return 0
    fi
  done
  return 1
}

found && exit 0

if ! command -v apt-get >/dev/null; then
  echo "chromium is not installed and there is no apt-get to install it with" >&2
  exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "chromium is not installed and installing it needs root: run 'apt-get install chromium' as root" >&2
  exit 1
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
{
  flock 9
  if ! found >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends chromium >"$log" 2>&1; then
      apt-get update >>"$log" 2>&1 || true
      apt-get install -y --no-install-recommends chromium >>"$log" 2>&1 || {
        echo "apt-get install chromium failed:" >&2
        tail -n 20 "$log" >&2
        exit 1
      }
    fi
  fi
} 9>/tmp/bqdrain-chromium-install.lock

found || { echo "chromium was installed but is not on PATH" >&2; exit 1; }
