# syntax=docker/dockerfile:1
# The `tollgate` image: one binary for `serve`, `envoy-bootstrap` (the Helm chart's init
# container), `logger` and the other subcommands. Build from the repository root:
#
#   docker build -t tollgate:0.1.0 .
#
# Two stages: the release build in the official Rust image, then only the binary on
# distroless/cc (glibc, libgcc, CA certificates at /etc/ssl/certs/ca-certificates.crt; no shell,
# no package manager), run as the fixed non-root user 65532 that the chart's pods use too
# (Envoy and serve share a Unix socket, which only its owner's UID may connect to).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# The whole workspace: Cargo loads every member's manifest (and their benches) even to build one
# binary. `.dockerignore` keeps target/, .git/ and the chart out.
COPY . .
# The cache mounts keep the registry and the target directory between builds (BuildKit); the
# binary is copied out of the cached target directory. protoc comes vendored (proto/build.rs),
# ring needs only the C compiler the image has.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tollgate \
 && install -D -m 0755 target/release/tollgate /out/tollgate

# Debian 12, like the build stage, so the glibc the binary was linked against is there.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/tollgate /usr/local/bin/tollgate
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/tollgate"]
CMD ["--help"]
