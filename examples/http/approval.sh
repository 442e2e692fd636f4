#!/usr/bin/env bash
# The README's HTTP session: start an `approval` orchestration, look at it, approve it, read the
# result. Needs `cairn serve` (HTTP API on localhost:8080) and examples/python/approval_worker.py.
set -euo pipefail

curl -si -X POST localhost:8080/runtime/webhooks/durabletask/orchestrators/approval/order-42 \
       -H 'Content-Type: application/json' -d '600'
printf '\n\n'

curl -si localhost:8080/runtime/webhooks/durabletask/instances/order-42
printf '\n\n'

curl -si -X POST localhost:8080/runtime/webhooks/durabletask/instances/order-42/raiseEvent/approval \
       -H 'Content-Type: application/json' -d '"alice"'
printf '\n\n'

# The status URL answers 202 while the instance runs and 200 once it has ended: poll (up to 10 s).
for _ in $(seq 50); do
  code=$(curl -s -o /dev/null -w '%{http_code}' localhost:8080/runtime/webhooks/durabletask/instances/order-42)
  [ "$code" = 202 ] || break
  sleep 0.2
done
curl -si localhost:8080/runtime/webhooks/durabletask/instances/order-42
printf '\n'
