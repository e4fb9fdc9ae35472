# bqdrain container image: the worker (`bqdrain`) and the producer
# (`bqdrain-producer`) on a distroless base, running as user 65532.
#
# With Docker and network, from the repository's root:
#
#   docker build -t bqdrain .
#
# fetches the crates that Cargo.lock pins from crates.io. Without network,
# vendor them into .cargo-vendor/ first; the build then reads them from there
# and never reaches a registry:
#
#   scripts/image/build.sh                  # vendors, builds with buildah (no
#                                           # Docker daemon), checks the image
# or, where Docker is available:
#
#   cargo vendor --locked --versioned-dirs .cargo-vendor >/dev/null
#   docker build -t bqdrain .
#
# (scripts/image/crate-source.sh makes the choice: vendored crates when there
# are any, crates.io otherwise.)
#
# One image serves both Cloud Run jobs. It has no ENTRYPOINT and both binaries
# are on PATH, so a job names the one it runs:
#   producer job: command = ["bqdrain-producer"], args = [...]
#   worker job:   command = ["bqdrain"],          args = ["work", ...]
# (or args alone: ["bqdrain", "work", ...]). With nothing set, it prints help.

# Base images are pinned by tag, not by digest (issue 17): no registry serving
# them was reachable where this was written, and no trustworthy record of the
# tags' digests was at hand, so none was written down unverified. To pin them,
# where a registry is reachable:
#   docker buildx imagetools inspect docker.io/library/rust:1.95-slim-bookworm
#   docker buildx imagetools inspect gcr.io/distroless/cc-debian12:nonroot
# then write FROM IMAGE:TAG@sha256:DIGEST below, and the same two names in
# scripts/image/build.sh (rust_base, runtime_base), which checks these lines.

# ---- builder: compiles the two binaries, from vendored crates or crates.io --
FROM docker.io/library/rust:1.95-slim-bookworm AS builder

WORKDIR /src

# Dependencies first, in a layer of their own: the manifests, the lockfile,
# .cargo-vendor/ (its .gitignore alone in a clone, so the COPY always works)
# and empty stand-ins for every declared target. This layer is reused as long
# as Cargo.toml, Cargo.lock and .cargo-vendor/ are.
COPY Cargo.toml Cargo.lock ./
COPY producer/Cargo.toml producer/
COPY scripts/image/stub-targets.sh scripts/image/crate-source.sh scripts/image/cargo-config.toml scripts/image/
COPY .cargo-vendor/ .cargo-vendor/
RUN bash scripts/image/crate-source.sh .cargo-vendor scripts/image/cargo-config.toml \
    && bash scripts/image/stub-targets.sh Cargo.toml producer/Cargo.toml \
    && cargo build --release --locked \
        -p bqdrain -p bqdrain-producer --bin bqdrain --bin bqdrain-producer

# The real sources. The stub build left fingerprints for the two workspace
# crates; removing them makes cargo rebuild both, whatever the copied files'
# timestamps.
COPY src/ src/
COPY producer/src/ producer/src/
RUN rm -rf target/release/.fingerprint/bqdrain-* \
    && cargo build --release --locked \
        -p bqdrain -p bqdrain-producer --bin bqdrain --bin bqdrain-producer \
    && mkdir -p /out \
    && cp target/release/bqdrain target/release/bqdrain-producer /out/

# ---- runtime: glibc, libgcc, CA certificates, user nonroot (65532) ----------
FROM gcr.io/distroless/cc-debian12:nonroot

LABEL org.opencontainers.image.title="bqdrain" \
      org.opencontainers.image.description="Exports BigQuery tables to Cloud Storage through a Pub/Sub queue: bqdrain (worker) and bqdrain-producer" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=builder /out/bqdrain /out/bqdrain-producer /usr/local/bin/

USER 65532:65532
WORKDIR /home/nonroot

# No ENTRYPOINT: Cloud Run's `command` picks the binary (see the top).
CMD ["bqdrain", "--help"]
