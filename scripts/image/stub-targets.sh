#!/usr/bin/env bash
# Writes an empty stand-in for every build target that the given Cargo.toml
# files declare or imply ([lib], [[bin]], [[bench]], [[example]], [[test]],
# with or without `path`), so that the Dockerfile can build the dependencies
# in a layer of their own before the real sources are copied: cargo refuses a
# manifest whose declared target file is missing. Existing files are kept.
#
#   scripts/image/stub-targets.sh Cargo.toml producer/Cargo.toml
set -euo pipefail

# Prints "lib PATH" or "main PATH" for each target of one manifest, PATH
# relative to the manifest's folder.
targets() {
  awk '
    function flush() {
      if (kind == "lib") print "lib " (path != "" ? path : "src/lib.rs")
      else if (kind == "bin") {
        if (path != "") print "main " path
        else if (name == "" || name == pkg) print "main src/main.rs"
        else print "main src/bin/" name ".rs"
      }
      else if (kind == "bench") print "main " (path != "" ? path : "benches/" name ".rs")
      else if (kind == "example") print "main " (path != "" ? path : "examples/" name ".rs")
      else if (kind == "test") print "main " (path != "" ? path : "tests/" name ".rs")
      kind = ""; name = ""; path = ""
    }
    function value(line) {
      sub(/^[^=]*=[ \t]*"/, "", line); sub(/".*$/, "", line); return line
    }
    /^[ \t]*\[/ {
      flush(); section = $0
      gsub(/[ \t\[\]]/, "", section)
      if (section == "lib" || section == "bin" || section == "bench" || section == "example" || section == "test") {
        kind = section; targets++
        if (section == "lib" || section == "bin") bins_or_lib++
      }
      next
    }
    section == "package" && /^[ \t]*name[ \t]*=/ { pkg = value($0) }
    kind != "" && /^[ \t]*name[ \t]*=/ { name = value($0) }
    kind != "" && /^[ \t]*path[ \t]*=/ { path = value($0) }
    END {
      flush()
      # A package that declares neither: cargo needs one target at least.
      if (bins_or_lib == 0) print "main src/main.rs"
    }
  ' "$1"
}

for manifest in "$@"; do
  dir=$(dirname "$manifest")
  while read -r kind path; do
    file="$dir/$path"
    [ -e "$file" ] && continue
    mkdir -p "$(dirname "$file")"
    if [ "$kind" = lib ]; then
      : >"$file"
    else
      echo 'fn main() {}' >"$file"
    fi
    echo "stub $file"
  done < <(targets "$manifest")
done
