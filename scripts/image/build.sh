#!/usr/bin/env bash
# Builds the bqdrain container image from the Dockerfile with buildah (no
# Docker daemon, chroot isolation) and proves that it runs:
#
#   1. tools   installs buildah, mmdebstrap and runc from Debian if missing;
#   2. bases   makes local stand-ins for the Dockerfile's two base images, under
#              exactly the names the Dockerfile uses, unless buildah has them
#              already (no container registry is reachable from here, so they
#              cannot be pulled): Debian bookworm plus gcc and this machine's
#              Rust toolchain for docker.io/library/rust:1.95-slim-bookworm,
#              and a shell-less Debian rootfs with glibc, libgcc, CA
#              certificates and user nonroot (65532) for
#              gcr.io/distroless/cc-debian12:nonroot;
#   3. crates  `cargo vendor --locked --versioned-dirs .cargo-vendor`, which the
#              build reads instead of a registry; or, with --crates-io, a
#              build context of what a clone holds (the files git tracks or
#              would track: .cargo-vendor/ is its .gitignore alone), so the
#              build fetches the crates from crates.io, as `docker build .`
#              does on a machine with network and nothing else (trusting the
#              host's CA certificates, mounted into its RUN steps);
#   4. build   `buildah bud --layers` (the dependency layer is cached across
#              runs as long as Cargo.toml, Cargo.lock and .cargo-vendor/ do
#              not change);
#   5. checks  inside the image, as user 65532: both binaries' --version, a
#              whole `bqdrain demo` (every table exported), the image's user,
#              and that no toolchain (cargo, rustc, gcc) came along.
#
# Prints how long each phase took and the image's size. Runs from any folder,
# as root. Rootfs tarballs and logs are kept in .tools/image/ (git-ignored).
#
#   scripts/image/build.sh [--tag NAME] [--rebuild-bases] [--no-cache] [--crates-io]
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/image/build.sh [--tag NAME] [--rebuild-bases] [--no-cache] [--crates-io]
  --tag NAME        name of the image to build (default bqdrain:dev)
  --rebuild-bases   remake the two local base images (and their rootfs tarballs)
  --no-cache        build every Dockerfile step afresh (no layer cache)
  --crates-io       build what a clone holds, crates fetched from crates.io
                    (needs network), instead of vendoring them first
EOF
}

tag=bqdrain:dev
rebuild_bases=0
cache_flags=(--layers)
bud_flags=()
crates_io=0
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) [ $# -ge 2 ] || { usage >&2; exit 2; }; tag=$2; shift 2 ;;
    --tag=*) tag=${1#--tag=}; shift ;;
    --rebuild-bases) rebuild_bases=1; shift ;;
    --no-cache) cache_flags=(--layers --no-cache); shift ;;
    --crates-io) crates_io=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"

die() { echo "error: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root: buildah and mmdebstrap need it here"

# The Dockerfile's bases; the stand-ins below are committed under these names.
rust_base=docker.io/library/rust:1.95-slim-bookworm
runtime_base=gcr.io/distroless/cc-debian12:nonroot
rust_version=1.95.0
grep -qx "FROM $rust_base AS builder" Dockerfile ||
  die "the Dockerfile's builder is no longer FROM $rust_base: update $0"
grep -qx "FROM $runtime_base" Dockerfile ||
  die "the Dockerfile's runtime is no longer FROM $runtime_base: update $0"

vendor_dir=.cargo-vendor
cache=$repo/.tools/image
mkdir -p "$cache"
mirrors=(
  "deb http://deb.debian.org/debian bookworm main"
  "deb http://deb.debian.org/debian bookworm-updates main"
  "deb http://deb.debian.org/debian-security bookworm-security main"
)

# ---- bookkeeping ------------------------------------------------------------
declare -A took=()
phases=()
phase_start=0
begin() {
  phase=$1
  phases+=("$1")
  phase_start=$(date +%s.%N)
  echo "== $1" >&2
}
end() {
  took[$phase]=$(awk -v a="$phase_start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - a }')
  echo "   $phase: ${took[$phase]} s" >&2
}

containers=()
work=$(mktemp -d)
cleanup() {
  local c
  for c in "${containers[@]}"; do
    buildah umount "$c" >/dev/null 2>&1 || true
    buildah rm "$c" >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

new_container() { # IMAGE -> sets ctr to a new working container of it
  ctr=$(buildah from --pull=never --quiet "$1")
  containers+=("$ctr")
}

# ---- 1. tools ---------------------------------------------------------------
begin tools
missing=()
for tool in buildah mmdebstrap runc; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "   installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-cache show "${missing[@]}" >/dev/null 2>&1; then
    apt-get update -qq
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$cache/apt.log" 2>&1 ||
    { tail -20 "$cache/apt.log" >&2; die "apt-get install ${missing[*]} failed"; }
fi
end

# ---- 2. bases ---------------------------------------------------------------
begin bases

have_image() { buildah inspect --type image "$1" >/dev/null 2>&1; }

# A Debian bookworm rootfs tarball, made once and kept in .tools/image/; its
# name carries a hash of what it holds, so a change of packages remakes it.
rootfs_tar() { # NAME VARIANT PACKAGES -> prints the tarball's path
  local key tar
  key=$(printf '%s\n' "$@" "${mirrors[@]}" | sha256sum | cut -c1-12)
  tar=$cache/$1-$key.tar
  if [ "$rebuild_bases" = 1 ] || [ ! -s "$tar" ]; then
    echo "   mmdebstrap $1 ($2: $3)" >&2
    rm -f "$cache/$1"-*.tar
    mmdebstrap --format=tar --variant="$2" --include="$3" \
      bookworm "$tar.part" "${mirrors[@]}" >"$cache/$1.log" 2>&1 ||
      { tail -20 "$cache/$1.log" >&2; rm -f "$tar.part"; die "mmdebstrap $1 failed"; }
    mv "$tar.part" "$tar"
  fi
  echo "$tar"
}

# The toolchain that stands in for the one in the rust image: this machine's
# rustup toolchain of the same version (none can be downloaded here).
find_toolchain() {
  local dir
  for dir in "${RUSTUP_HOME:-$HOME/.rustup}/toolchains/$rust_version-x86_64-unknown-linux-gnu" \
    "$(rustc --print sysroot 2>/dev/null || true)"; do
    if [ -x "$dir/bin/rustc" ] && [ -x "$dir/bin/cargo" ] &&
      "$dir/bin/rustc" --version | grep -q "^rustc $rust_version "; then
      (cd "$dir" && pwd -P)
      return
    fi
  done
  die "no Rust $rust_version toolchain on this machine (rustup toolchain install $rust_version)"
}

# Stand-in for docker.io/library/rust:1.95-slim-bookworm: Debian bookworm
# minbase with what that image installs (ca-certificates, gcc, libc6-dev; enough
# for the C code of the -sys crates: aws-lc-sys, ring, libsqlite3-sys bundled)
# and the Rust toolchain laid out and configured as that image has it
# (RUSTUP_HOME=/usr/local/rustup, CARGO_HOME=/usr/local/cargo, its bin/ first on
# PATH). rustup itself is left out: the commands in /usr/local/cargo/bin link
# straight to the toolchain.
make_rust_base() {
  local tar toolchain ctr mnt tc tool
  tar=$(rootfs_tar rust-base minbase ca-certificates,gcc,libc6-dev)
  toolchain=$(find_toolchain)
  ctr=$(buildah from --quiet scratch)
  containers+=("$ctr")
  mnt=$(buildah mount "$ctr")
  tar -C "$mnt" --numeric-owner -xpf "$tar"
  tc=/usr/local/rustup/toolchains/$rust_version-x86_64-unknown-linux-gnu
  mkdir -p "$mnt$tc" "$mnt/usr/local/cargo/bin"
  tar -C "$toolchain" --exclude=./share/doc -cf - . | tar -C "$mnt$tc" -xpf -
  for tool in "$mnt$tc"/bin/*; do
    ln -s "$tc/bin/${tool##*/}" "$mnt/usr/local/cargo/bin/${tool##*/}"
  done
  chmod -R a+w "$mnt/usr/local/rustup" "$mnt/usr/local/cargo"
  buildah umount "$ctr" >/dev/null
  buildah config \
    --env RUSTUP_HOME=/usr/local/rustup \
    --env CARGO_HOME=/usr/local/cargo \
    --env PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env RUST_VERSION="$rust_version" \
    --cmd bash \
    --label org.opencontainers.image.description="local stand-in for $rust_base (scripts/image/build.sh)" \
    "$ctr"
  buildah commit --quiet --rm "$ctr" "$rust_base" >/dev/null
}

# Stand-in for gcr.io/distroless/cc-debian12:nonroot, which no registry here
# can serve: the same Debian bookworm packages that image is made of (base-files,
# netbase, tzdata, libc6, libgcc-s1, libstdc++6, libgomp1, libssl3 and the CA
# certificates as one bundle), extracted without running any package script,
# then stripped of every executable as distroless is: no shell, no package
# manager. Users root, nobody and nonroot (65532, home /home/nonroot) as there;
# the image's user is 65532 and its working folder /home/nonroot, as there.
make_runtime_base() {
  local tar ctr mnt crt
  tar=$(rootfs_tar distroless-cc extract \
    base-files,netbase,tzdata,libc6,libgcc-s1,libstdc++6,libgomp1,libssl3,ca-certificates)
  ctr=$(buildah from --quiet scratch)
  containers+=("$ctr")
  mnt=$(buildah mount "$ctr")
  tar -C "$mnt" --numeric-owner -xpf "$tar"
  # ca-certificates' own script would build this bundle: all Mozilla roots.
  mkdir -p "$mnt/etc/ssl/certs"
  for crt in "$mnt"/usr/share/ca-certificates/mozilla/*.crt; do
    awk 1 "$crt" # each one ending with a newline
  done >"$mnt/etc/ssl/certs/ca-certificates.crt"
  # What distroless leaves out: executables, package-tool data, docs.
  rm -rf "${mnt:?}"/bin/* "${mnt:?}"/sbin/* "${mnt:?}"/usr/bin/* "${mnt:?}"/usr/sbin/* \
    "$mnt"/usr/share/perl5 "$mnt"/usr/share/debconf "$mnt"/usr/lib/ssl/misc \
    "$mnt"/usr/share/doc "$mnt"/usr/share/man "$mnt"/usr/share/lintian \
    "$mnt"/var/cache/debconf "$mnt"/var/lib/dpkg "$mnt"/var/lib/apt "$mnt"/var/cache/apt
  cat >"$mnt/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
  cat >"$mnt/etc/group" <<'EOF'
root:x:0:
tty:x:5:
staff:x:50:
nobody:x:65534:
nonroot:x:65532:
EOF
  printf 'hosts: files dns\nnetworks: files\npasswd: files\ngroup: files\n' >"$mnt/etc/nsswitch.conf"
  install -d -m 1777 "$mnt/tmp"
  install -d -m 0700 "$mnt/root"
  install -d -m 0700 -o 65532 -g 65532 "$mnt/home/nonroot"
  buildah umount "$ctr" >/dev/null
  buildah config \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    --user 65532 \
    --workingdir /home/nonroot \
    --label org.opencontainers.image.description="local stand-in for $runtime_base (scripts/image/build.sh)" \
    "$ctr"
  buildah commit --quiet --rm "$ctr" "$runtime_base" >/dev/null
}

if [ "$rebuild_bases" = 1 ] || ! have_image "$rust_base"; then
  echo "   making $rust_base" >&2
  make_rust_base
else
  echo "   $rust_base: present" >&2
fi
if [ "$rebuild_bases" = 1 ] || ! have_image "$runtime_base"; then
  echo "   making $runtime_base" >&2
  make_runtime_base
else
  echo "   $runtime_base: present" >&2
fi
end

# ---- 3. crates --------------------------------------------------------------
begin crates
if [ "$crates_io" = 1 ]; then
  git rev-parse --git-dir >/dev/null 2>&1 || die "--crates-io builds what a clone holds: run it in a git checkout"
  context=$work/clone
  mkdir "$context"
  # Tracked files that still exist, and new ones that are not ignored.
  git ls-files -z --cached --others --exclude-standard |
    tar --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -C "$context" -xf -
  echo "   context: the $(find "$context" -type f | wc -l) files a clone has;" \
    "$vendor_dir/ holds: $(ls -A "$context/$vendor_dir" | tr '\n' ' ')" >&2
  # The host's CA certificates, bind-mounted read-only into the build's RUN
  # steps (never into a layer), so that cargo in the builder trusts what the
  # host trusts: a TLS-intercepting proxy on the way to crates.io, as here.
  host_ca=/etc/ssl/certs/ca-certificates.crt
  if [ -s "$host_ca" ]; then
    bud_flags+=(--volume "$host_ca:$host_ca:ro")
  fi
else
  command -v cargo >/dev/null || die "cargo is needed on the host (for cargo vendor)"
  context=.
  cargo vendor --locked --versioned-dirs "$vendor_dir" >/dev/null 2>"$cache/vendor.log" ||
    { tail -20 "$cache/vendor.log" >&2; die "cargo vendor failed"; }
  echo "   $vendor_dir: $(find "$vendor_dir" -mindepth 1 -maxdepth 1 -type d | wc -l) crates" >&2
  if git rev-parse --git-dir >/dev/null 2>&1 && ! git check-ignore -q "$vendor_dir/a-crate-1.0.0"; then
    echo "   warning: the crates in $vendor_dir/ are not git-ignored: restore $vendor_dir/.gitignore" \
      "(git checkout -- $vendor_dir/.gitignore), never commit them" >&2
  fi
fi
end

# ---- 4. build ---------------------------------------------------------------
begin build
echo "   load: $(uptime | sed 's/.*load average/load average/')" >&2
buildah bud --isolation chroot --pull=never "${cache_flags[@]}" "${bud_flags[@]}" \
  -t "$tag" -f "$context/Dockerfile" "$context" >"$cache/build.log" 2>&1 ||
  { tail -40 "$cache/build.log" >&2; die "buildah bud failed (log: $cache/build.log)"; }
# The steps, those taken from the cache, and where the crates came from (said
# only when the dependency layer is built afresh).
grep -E '^(\[[0-9]+/[0-9]+\] STEP|--> Using cache|crates: )' "$cache/build.log" | sed 's/^/   /' >&2 || true
end

# ---- 5. checks --------------------------------------------------------------
begin checks
new_container "$tag"
in_image() { buildah run --isolation chroot --user 65532:65532 "$ctr" -- "$@"; }

bq_version=$(in_image bqdrain --version) || die "bqdrain --version failed in the image"
producer_version=$(in_image bqdrain-producer --version) || die "bqdrain-producer --version failed in the image"
echo "   $bq_version; $producer_version" >&2
# The image's own command (what runs when a job sets none), then the two jobs'.
read -r -a default_cmd <<<"$(buildah inspect --type image --format '{{range .OCIv1.Config.Cmd}}{{.}} {{end}}' "$tag")"
[ ${#default_cmd[@]} -gt 0 ] || die "the image has no CMD"
in_image "${default_cmd[@]}" >/dev/null || die "the image's CMD (${default_cmd[*]}) failed"
in_image bqdrain work --help >/dev/null || die "bqdrain work --help failed in the image"
in_image bqdrain-producer --help >/dev/null || die "bqdrain-producer --help failed in the image"
echo "   CMD ${default_cmd[*]}, bqdrain work --help, bqdrain-producer --help: ok" >&2

in_image bqdrain demo --json --dir /tmp/demo >"$work/demo.json" 2>"$work/demo.log" ||
  { tail -20 "$work/demo.log" >&2; die "bqdrain demo failed in the image"; }
python3 - "$work/demo.json" <<'EOF' || die "the demo in the image did not export every table"
import json, sys
report = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
ok = (report.get("ok") is True and report["tables"] > 0
      and report["exported"] == report["tables"]
      and report["dead_lettered"] == 0 and report["pending"] == 0
      and report["failed_tasks"] == 0)
print("   demo: %(exported)s/%(tables)s tables exported, %(rows)s rows, "
      "%(tasks)s worker processes, %(seconds).2f s" % report, file=sys.stderr)
sys.exit(0 if ok else 1)
EOF

user=$(buildah inspect --type image --format '{{.OCIv1.Config.User}}' "$tag")
case "$user" in
  65532 | 65532:65532 | nonroot | nonroot:nonroot) echo "   user: $user" >&2 ;;
  *) die "the image's user is '$user', not 65532" ;;
esac

mnt=$(buildah mount "$ctr")
toolchain=$(cd "$mnt" && find . \( -type f -o -type l \) \
  \( -name cargo -o -name 'rustc*' -o -name rustup -o -name cc -o -name 'gcc' \
  -o -name 'gcc-[0-9]*' -o -name '*-linux-gnu-gcc*' -o -name 'libLLVM*' -o -name 'librustc_driver*' \) -print)
[ -z "$toolchain" ] || die "build tools in the final image: $toolchain"
shells=$(cd "$mnt" && find . \( -type f -o -type l \) \( -name sh -o -name bash -o -name dash \) -print)
echo "   no cargo, rustc or gcc in the image; shell: ${shells:-none}" >&2
size_bytes=$(du -sb "$mnt" | cut -f1)
buildah umount "$ctr" >/dev/null
size=$(awk -v b="$size_bytes" 'BEGIN { printf "%.1f MiB", b / 1048576 }')
echo "   size: $size ($(buildah images --format '{{.Size}}' "$tag" | head -1) as buildah counts it)" >&2
end

# ---- summary ----------------------------------------------------------------
summary=""
for p in "${phases[@]}"; do
  summary+="${summary:+, }$p ${took[$p]} s"
done
echo "image $tag $size; $summary"
