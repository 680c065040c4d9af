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
# The build needs a C compiler and make (librdkafka's own configure build, zstd, zlib) and the
# OpenSSL headers (librdkafka's TLS); nothing else. No cmake and no protoc: the README's first
# command must work without them, so they are hidden from PATH while cargo builds (below).
missing=""
need cc || missing="$missing build-essential"
need make || missing="$missing make"
[ -f /usr/include/openssl/ssl.h ] || missing="$missing libssl-dev"
need pkg-config || missing="$missing pkg-config"
if [ -n "$missing" ]; then
  if need apt-get; then
    apt-get install -y -qq $missing >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq $missing >/dev/null; }
  else
    echo "please install:$missing" >&2
    exit 1
  fi
fi

VENV="$CACHE/venv"
TOOLS_DIR="$CACHE/tools"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV" || { need apt-get && apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null && python3 -m venv "$VENV"; }
fi
# Python readers for the reader tests: the deltalake package, polars, and a Spark-API engine
# (Sail, a Spark Connect server, driven by the PySpark client), in a venv in the cache.
"$VENV/bin/python" -c "import deltalake, polars, pyarrow, pysail, pyspark" 2>/dev/null ||
  "$VENV/bin/pip" install -q "deltalake==1.6.6" "polars==2.1.0" "pyarrow>=18" "pysail==0.7.2" "pyspark-client==4.1.1"
# gRPC clients for the gateway tests: grpcio stubs generated from the test proto, the error
# details (grpcio-status), reflection and health clients, and `buf curl` (buf-bin).
"$VENV/bin/python" -c "import grpc, grpc_tools, grpc_status, grpc_reflection, grpc_health" 2>/dev/null &&
  [ -x "$VENV/bin/buf" ] ||
  "$VENV/bin/pip" install -q "grpcio==1.85.3" "grpcio-tools==1.85.1" "grpcio-status==1.85.3" \
    "grpcio-reflection==1.85.1" "grpcio-health-checking==1.85.1" "buf-bin==1.75.0"
export PROTOLAKE_PYTHON="$VENV/bin/python"

# Object stores for the storage tests: an S3-compatible server (moto, which answers
# If-None-Match with 412) and Azurite (Azure Blob), both on loopback; the SDKs create the
# bucket and the container.
"$VENV/bin/python" -c "import moto.server, boto3, azure.storage.blob" 2>/dev/null ||
  "$VENV/bin/pip" install -q "moto[server]==5.2.5" "azure-storage-blob==12.31.1"
AZURITE="$TOOLS_DIR/azurite/node_modules/.bin/azurite-blob"
if [ ! -x "$AZURITE" ]; then
  need npm || { need apt-get && apt-get install -y -qq nodejs npm >/dev/null; }
  npm install --silent --no-audit --no-fund --prefix "$TOOLS_DIR/azurite" azurite@3.35.0 >/dev/null
fi

# A real Kafka-protocol broker for the ingest tests: tansu, in-memory storage, on loopback.
# Its build takes a while, so the binary is cached with the target directory.
TOOLS="$TOOLS_DIR"
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
s3_port="${PROTOLAKE_S3_PORT:-19000}"
az_port="${PROTOLAKE_AZURITE_PORT:-19010}"
stores="$(mktemp -d)"
"$VENV/bin/moto_server" -H 127.0.0.1 -p "$s3_port" >"$CACHE/moto.log" 2>&1 &
moto_pid=$!
"$AZURITE" --blobHost 127.0.0.1 --blobPort "$az_port" --location "$stores/azurite" --silent \
  --skipApiVersionCheck >"$CACHE/azurite.log" 2>&1 &
azurite_pid=$!
cleanup() {
  kill "$broker_pid" "$moto_pid" "$azurite_pid" 2>/dev/null || true
  [ -n "${scratch:-}" ] && rm -rf "$scratch"
  [ -n "${hidden:-}" ] && rm -rf "$hidden"
  rm -rf "$stores"
}
trap cleanup EXIT
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  kill -0 "$broker_pid" 2>/dev/null || { echo "the tansu broker did not start:"; cat "$broker_log"; exit 1; }
  sleep 0.2
done
export PROTOLAKE_KAFKA_BROKERS="127.0.0.1:$port"
# The gateway test that stops a broker starts one of its own.
export PROTOLAKE_TANSU="$TANSU"
echo "== Kafka broker: tansu on $PROTOLAKE_KAFKA_BROKERS"

for p in "$s3_port" "$az_port"; do
  for _ in $(seq 1 150); do
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break
    sleep 0.2
  done
done
for pid in "$moto_pid" "$azurite_pid"; do
  kill -0 "$pid" 2>/dev/null || { echo "an object store did not start (port taken?):"; tail -5 "$CACHE/moto.log" "$CACHE/azurite.log"; exit 1; }
done
export PROTOLAKE_S3_ENDPOINT="http://127.0.0.1:$s3_port"
export AZURITE_BLOB_STORAGE_URL="http://127.0.0.1:$az_port"
"$VENV/bin/python" - <<'PY' || { echo "the object stores did not start:"; tail -5 "$CACHE/moto.log" "$CACHE/azurite.log"; exit 1; }
import os, boto3
from azure.storage.blob import BlobServiceClient
boto3.client("s3", endpoint_url=os.environ["PROTOLAKE_S3_ENDPOINT"], region_name="us-east-1",
             aws_access_key_id="test", aws_secret_access_key="test").create_bucket(Bucket="protolake")
key = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
BlobServiceClient.from_connection_string(
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=" + key
    + ";BlobEndpoint=" + os.environ["AZURITE_BLOB_STORAGE_URL"] + "/devstoreaccount1;"
).create_container("protolake")
PY
echo "== object stores: moto (S3) on $PROTOLAKE_S3_ENDPOINT, Azurite on $AZURITE_BLOB_STORAGE_URL"

# cmake and protoc hidden: whatever the machine has installed, a build step that calls either
# fails here, as it would on a newcomer's machine.
hidden="$(mktemp -d)"
for tool in cmake protoc; do
  printf '#!/bin/sh\necho "%s is hidden by scripts/test.sh: protolake must build without it (called as: %s $*)" >&2\nexit 127\n' \
    "$tool" "$tool" >"$hidden/$tool"
  chmod +x "$hidden/$tool"
done
export PATH="$hidden:$PATH"
echo "== cargo test (target dir: $CARGO_TARGET_DIR; cmake and protoc hidden)"
cargo test --locked --lib --bins --tests 2>&1
echo "== without buf.validate support, descriptors with rules are refused"
cargo test --locked --no-default-features --lib validate 2>&1
echo "== benches still compile"
cargo check --locked --benches 2>&1
echo "== the quickstart, built and run as a newcomer runs it (cmake and protoc hidden)"
scratch="$(mktemp -d)"
cargo run --locked --quiet -- quickstart --events 200 --lake "$scratch/lake" >"$scratch/quickstart.out"
grep -q "close-books" "$scratch/quickstart.out" || { cat "$scratch/quickstart.out"; exit 1; }
cargo run --locked --quiet -- schema print --proto proto/protolake/examples/v1/events.proto -I proto \
  --message protolake.examples.v1.AdImpression >/dev/null
cargo run --locked --quiet -- schema check --table ad_impressions
echo "all tests passed"
