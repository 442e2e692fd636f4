#!/usr/bin/env bash
# SDK-path benchmark driver: the official Python SDK (interop/python/bench_sdk.py) and JS SDK
# (interop/js/bench_sdk.js) against `cairn serve` (fsync on) and against the Python SDK's
# in-memory test backend (interop/python/inmemory_backend.py, its own process), one combined
# table at the end.
#
#   interop/bench_sdk.sh [--sdks python,js] [--backends cairn,in-memory] [--json] [--keep DIR] \
#                        [bench options, passed to both SDK benches unchanged]
#
# Bench options (defaults): --scenarios abcd --chain-n 200 --chain-steps 10 --tput-chains 2000
#   --tput-inflight 100 --fanout 1000 --fanout-runs 3 --signals 2000 --signal-concurrency 20
#   --poll-ms 10 --timeout 600
#
# Each (SDK, backend) pair gets a freshly started backend: cairn on a fresh data directory
# (`--partitions $CAIRN_PARTITIONS`, default 4), the in-memory backend empty. Rows are printed to
# stderr as they are measured; the combined table (or, with --json, the JSON lines) goes to
# stdout. --keep DIR keeps the JSON lines and backend logs in DIR.
#
# Environment: CAIRN_BIN (default target/release/cairn), PYTHON (default .venv/bin/python),
# NODE (default node), CAIRN_PARTITIONS (default 4).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CAIRN_BIN="${CAIRN_BIN:-$ROOT/target/release/cairn}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
NODE="${NODE:-node}"
PARTITIONS="${CAIRN_PARTITIONS:-4}"

SDKS=python,js
BACKENDS=cairn,in-memory
JSON=0
KEEP=
PASS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --sdks) SDKS="$2"; shift 2 ;;
    --backends) BACKENDS="$2"; shift 2 ;;
    --json) JSON=1; shift ;;
    --keep) KEEP="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) PASS+=("$1"); shift ;;
  esac
done

[[ -x "$CAIRN_BIN" ]] || { echo "cairn binary not found: $CAIRN_BIN (set CAIRN_BIN)" >&2; exit 1; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/cairn-bench-sdk.XXXXXX")"
ROWS="$WORK/rows.jsonl"
: > "$ROWS"
BACKEND_PID=

stop_backend() {
  if [[ -n "$BACKEND_PID" ]] && kill -0 "$BACKEND_PID" 2>/dev/null; then
    kill -TERM "$BACKEND_PID" 2>/dev/null || true
    for _ in $(seq 300); do kill -0 "$BACKEND_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$BACKEND_PID" 2>/dev/null || true
    wait "$BACKEND_PID" 2>/dev/null || true
  fi
  BACKEND_PID=
}

cleanup() {
  stop_backend
  if [[ -n "$KEEP" ]]; then
    mkdir -p "$KEEP"
    cp "$ROWS" "$WORK"/*.log "$KEEP"/ 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_port() { # port pid log
  for _ in $(seq 600); do
    if ! kill -0 "$2" 2>/dev/null; then echo "backend exited; log:" >&2; tail -20 "$3" >&2; exit 1; fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "backend did not listen on $1; log:" >&2; tail -20 "$3" >&2; exit 1
}

# start_backend NAME TAG: sets BACKEND_PID and ADDRESS
start_backend() {
  local port log
  port="$(free_port)"
  log="$WORK/$1-$2.log"
  case "$1" in
    cairn)
      RUST_LOG=warn NO_COLOR=1 "$CAIRN_BIN" serve --data "$WORK/data-$2" --grpc "127.0.0.1:$port" \
        --http "127.0.0.1:$(free_port)" --partitions "$PARTITIONS" >"$log" 2>&1 &
      ;;
    in-memory)
      "$PYTHON" "$ROOT/interop/python/inmemory_backend.py" --port "$port" >"$log" 2>&1 &
      ;;
    *) echo "unknown backend $1" >&2; exit 2 ;;
  esac
  BACKEND_PID=$!
  ADDRESS="127.0.0.1:$port"
  wait_port "$port" "$BACKEND_PID" "$log"
}

IFS=, read -r -a SDK_LIST <<<"$SDKS"
IFS=, read -r -a BACKEND_LIST <<<"$BACKENDS"
for sdk in "${SDK_LIST[@]}"; do
  for backend in "${BACKEND_LIST[@]}"; do
    start_backend "$backend" "$sdk"
    echo "# $sdk SDK -> $backend ($ADDRESS, pid $BACKEND_PID)" >&2
    case "$sdk" in
      python)
        "$PYTHON" "$ROOT/interop/python/bench_sdk.py" --json --progress \
          --target "$backend=$ADDRESS@$BACKEND_PID" ${PASS[@]+"${PASS[@]}"} >>"$ROWS"
        ;;
      js)
        (cd "$ROOT/interop/js" && "$NODE" bench_sdk.js --json --progress --address "$ADDRESS" \
          --backend-pid "$BACKEND_PID" --backend-name "$backend" ${PASS[@]+"${PASS[@]}"}) >>"$ROWS"
        ;;
      *) echo "unknown sdk $sdk" >&2; exit 2 ;;
    esac
    stop_backend
  done
done

if [[ "$JSON" == 1 ]]; then
  cat "$ROWS"
else
  "$PYTHON" "$ROOT/interop/python/bench_sdk.py" --table "$ROWS"
fi
