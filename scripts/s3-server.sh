#!/usr/bin/env bash
# A single-node Garage S3 server on 127.0.0.1 for tvault's S3 tests and benchmarks.
#
#   scripts/s3-server.sh start   install Garage if missing, start it, create a bucket and a key,
#                                print `export` lines and write them to $TVAULT_TEST_S3_ENV
#   scripts/s3-server.sh stop    stop it and remove its state
#   scripts/s3-server.sh env     print the export lines of the running server
#
# State (config, metadata, data, log, pid) lives in $TVAULT_S3_DIR (default /tmp/tvault-s3);
# the env file is $TVAULT_TEST_S3_ENV (default $TVAULT_S3_DIR/env), which the tests read.
# Block compression is off so that benchmarks measure tvault, not the server.
set -euo pipefail

GARAGE_VERSION=2.5.0
DIR=${TVAULT_S3_DIR:-/tmp/tvault-s3}
ENV_FILE=${TVAULT_TEST_S3_ENV:-$DIR/env}
BUCKET=tvault-test
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

say() { echo "s3-server: $*" >&2; }

# The pinned Garage, installed with cargo when missing or of another version (≈8 minutes).
garage_bin() {
  local bin
  bin=$(command -v garage || echo "$HOME/.cargo/bin/garage")
  if ! "$bin" --version 2>/dev/null | grep -q "[:v]$GARAGE_VERSION\b"; then
    say "installing garage $GARAGE_VERSION with cargo install (takes several minutes)"
    cargo install --locked garage --version "$GARAGE_VERSION" >&2
    bin=$(command -v garage || echo "$HOME/.cargo/bin/garage")
  fi
  echo "$bin"
}

# A TCP port on 127.0.0.1 that nothing listens on.
free_port() {
  local port
  for _ in $(seq 1 200); do
    port=$((20000 + RANDOM % 20000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return
    fi
  done
  say "no free port found"
  exit 1
}

hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }

running() { [ -f "$DIR/pid" ] && kill -0 "$(cat "$DIR/pid")" 2>/dev/null; }

stop() {
  if [ -f "$DIR/pid" ]; then
    local pid
    pid=$(cat "$DIR/pid")
    if kill "$pid" 2>/dev/null; then
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
  fi
  # Only a folder this script made (or an empty one) is removed.
  if [ -d "$DIR" ]; then
    if [ -f "$DIR/garage.toml" ] || [ -z "$(ls -A "$DIR")" ]; then
      rm -rf "$DIR"
    else
      say "$DIR is not a folder of this script; leaving it"
    fi
  fi
  [ "$ENV_FILE" = "$DIR/env" ] || rm -f "$ENV_FILE"
}

start() {
  if running && [ -f "$ENV_FILE" ]; then
    say "already running"
    cat "$ENV_FILE"
    return
  fi
  local garage
  garage=$(garage_bin)
  stop
  mkdir -p "$DIR/meta" "$DIR/data"
  chmod 700 "$DIR"
  local s3_port rpc_port
  s3_port=$(free_port)
  rpc_port=$(free_port)
  while [ "$rpc_port" = "$s3_port" ]; do rpc_port=$(free_port); done
  cat > "$DIR/garage.toml" <<TOML
metadata_dir = "$DIR/meta"
data_dir = "$DIR/data"
db_engine = "lmdb"
replication_factor = 1
compression_level = "none"
rpc_secret = "$(hex 32)"
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"

[s3_api]
api_bind_addr = "127.0.0.1:$s3_port"
s3_region = "garage"
TOML
  chmod 600 "$DIR/garage.toml"
  local g=("$garage" -c "$DIR/garage.toml")
  "${g[@]}" server > "$DIR/garage.log" 2>&1 &
  echo $! > "$DIR/pid"
  local node=""
  for _ in $(seq 1 100); do
    if ! running; then
      say "garage exited; its log:"
      tail -20 "$DIR/garage.log" >&2
      exit 1
    fi
    node=$("${g[@]}" node id -q 2>/dev/null | cut -d@ -f1) && [ -n "$node" ] && break
    sleep 0.2
  done
  [ -n "$node" ] || { say "garage did not come up; see $DIR/garage.log"; exit 1; }
  # The node ID is known before the server answers RPC: wait for that before the layout.
  local assigned=""
  for _ in $(seq 1 100); do
    if "${g[@]}" layout assign -z dc1 -c 1G "$node" >/dev/null 2>"$DIR/assign.err"; then
      assigned=1
      break
    fi
    sleep 0.2
  done
  [ -n "$assigned" ] || { say "garage did not accept a layout:"; cat "$DIR/assign.err" >&2; exit 1; }
  "${g[@]}" layout apply --version 1 >/dev/null
  "${g[@]}" bucket create "$BUCKET" >/dev/null
  local key_id secret
  key_id="GK$(hex 12)"
  secret="$(hex 32)"
  "${g[@]}" key import --yes -n tvault-test "$key_id" "$secret" >/dev/null
  "${g[@]}" bucket allow --read --write --owner "$BUCKET" --key "$key_id" >/dev/null
  # The S3 API answers once the layout is live.
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$s3_port") 2>/dev/null && break
    sleep 0.1
  done
  mkdir -p "$(dirname "$ENV_FILE")"
  cat > "$ENV_FILE" <<ENV
export TVAULT_TEST_S3_ENDPOINT=http://127.0.0.1:$s3_port
export TVAULT_TEST_S3_BUCKET=$BUCKET
export AWS_ACCESS_KEY_ID=$key_id
export AWS_SECRET_ACCESS_KEY=$secret
export AWS_REGION=garage
export TVAULT_TEST_S3_ENV=$ENV_FILE
ENV
  chmod 600 "$ENV_FILE"
  say "garage $GARAGE_VERSION on http://127.0.0.1:$s3_port, bucket $BUCKET (state in $DIR)"
  cat "$ENV_FILE"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  env) running && cat "$ENV_FILE" ;;
  *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
