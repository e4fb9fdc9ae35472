#!/usr/bin/env bash
# Chooses where the image build takes its crates from, so that one Dockerfile
# serves both a plain `docker build .` with network and a build without any:
#
#   - crates vendored in the given folder (scripts/image/build.sh vendors them):
#     installs cargo-config.toml as cargo's configuration, which replaces
#     crates.io by that folder and turns the network off;
#   - none (a fresh clone: the folder holds only its .gitignore): leaves
#     cargo's defaults, so the build fetches the crates that Cargo.lock pins
#     from crates.io.
#
# Prints which one it chose.
#
#   scripts/image/crate-source.sh VENDOR_DIR CARGO_CONFIG
set -euo pipefail

[ $# -eq 2 ] || { echo "usage: $0 VENDOR_DIR CARGO_CONFIG" >&2; exit 2; }
vendor_dir=$1
config=$2

# `cargo vendor` writes a .cargo-checksum.json into every crate it vendors.
vendored=$(find "$vendor_dir" -mindepth 2 -maxdepth 2 -name .cargo-checksum.json | wc -l)
if [ "$vendored" -gt 0 ]; then
  install -D -m 0644 "$config" "${CARGO_HOME:?}/config.toml"
  echo "crates: $vendored vendored in $vendor_dir/, offline" \
    "(empty it but for its .gitignore to fetch them from crates.io instead)"
else
  echo "crates: none vendored in $vendor_dir/, fetching them from crates.io"
fi
