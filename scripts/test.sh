#!/usr/bin/env bash
# The test command: installs what the build and tests need, then runs every test.
#
# Caches (reused when present, rebuilt when not): cargo's target directory lives outside the
# clone in $PROTOLAKE_CACHE (default ~/.cache/protolake), so a fresh clone does not rebuild
# arrow & co. from scratch on a machine that already built them.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${PROTOLAKE_CACHE:-$HOME/.cache/protolake}"
mkdir -p "$CACHE"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Tests are single-process and light; two build jobs match the CI machine.
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
# A build that is run once: no incremental state, and line tables rather than full debug info
# (backtraces keep file:line; the test binaries, each linking DataFusion, stay a fraction of the
# size).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
export CARGO_PROFILE_DEV_DEBUG="${CARGO_PROFILE_DEV_DEBUG:-line-tables-only}"
# Test binaries of earlier builds are never run again; drop those older than two days so the
# cached target directory does not grow with every run.
if [ -d "$CARGO_TARGET_DIR/debug/deps" ]; then
  find "$CARGO_TARGET_DIR/debug/deps" -maxdepth 1 -type f -executable -mtime +2 -delete 2>/dev/null || true
fi

need() { command -v "$1" >/dev/null 2>&1; }

if ! need cargo; then
  echo "cargo is required (https://rustup.rs)" >&2
  exit 1
fi
# A C compiler is needed by -sys crates; protoc by the buf.validate feature's build; cmake and
# the OpenSSL headers by librdkafka's build.
missing=""
need cc || missing="$missing build-essential"
need protoc || missing="$missing protobuf-compiler"
need cmake || missing="$missing cmake"
[ -f /usr/include/openssl/ssl.h ] || missing="$missing libssl-dev"
[ -f /usr/include/zlib.h ] || missing="$missing zlib1g-dev"
need pkg-config || missing="$missing pkg-config"
if [ -n "$missing" ]; then
  if need apt-get; then
    apt-get install -y -qq $missing >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq $missing >/dev/null; }
  else
    echo "please install:$missing" >&2
    exit 1
  fi
fi

# Python readers for the reader tests (the deltalake package and polars), in a venv in the cache.
VENV="$CACHE/venv"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV" || { need apt-get && apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null && python3 -m venv "$VENV"; }
fi
"$VENV/bin/python" -c "import deltalake, polars, pyarrow" 2>/dev/null ||
  "$VENV/bin/pip" install -q "deltalake==1.6.6" "polars==2.1.0" "pyarrow>=18"
export PROTOLAKE_PYTHON="$VENV/bin/python"

# A real Kafka-protocol broker for the ingest tests: tansu, in-memory storage, on loopback.
# Its build takes a while, so the binary is cached with the target directory.
TOOLS="$CACHE/tools"
TANSU="$TOOLS/bin/tansu"
if [ ! -x "$TANSU" ]; then
  echo "== building the tansu broker (cached in $TOOLS)"
  CARGO_TARGET_DIR="$CACHE/tansu-build" cargo install tansu --version 0.6.0 --locked --features dynostore \
    --root "$TOOLS" 2>&1 | tail -n 3
  rm -rf "$CACHE/tansu-build"
fi
port="${PROTOLAKE_KAFKA_PORT:-19092}"
broker_log="$CACHE/tansu.log"
"$TANSU" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
  --storage-engine memory://tansu/ >"$broker_log" 2>&1 &
broker_pid=$!
cleanup() {
  kill "$broker_pid" 2>/dev/null || true
  [ -n "${scratch:-}" ] && rm -rf "$scratch"
}
trap cleanup EXIT
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  kill -0 "$broker_pid" 2>/dev/null || { echo "the tansu broker did not start:"; cat "$broker_log"; exit 1; }
  sleep 0.2
done
export PROTOLAKE_KAFKA_BROKERS="127.0.0.1:$port"
echo "== Kafka broker: tansu on $PROTOLAKE_KAFKA_BROKERS"

echo "== cargo test (target dir: $CARGO_TARGET_DIR)"
cargo test --locked --features protovalidate --lib --bins --tests 2>&1
echo "== without buf.validate support, descriptors with rules are refused"
cargo test --locked --lib validate 2>&1
echo "== benches still compile"
cargo check --locked --benches 2>&1
echo "== CLI smoke test"
scratch="$(mktemp -d)"
cargo run --locked --quiet -- quickstart --events 200 --lake "$scratch/lake" >/dev/null
cargo run --locked --quiet -- schema print --proto proto/protolake/examples/v1/events.proto -I proto \
  --message protolake.examples.v1.AdImpression >/dev/null
echo "all tests passed"
