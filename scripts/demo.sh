#!/usr/bin/env bash
# The main job, end to end: train a small LSTM on the built-in corpus, export it to ONNX, serve it,
# stream a generation and per-step predictions through the gRPC client, then stop the server (SIGTERM).
# DEMO_MINUTES sets the training budget (default 1); DEMO_DIR where everything is written.
set -euo pipefail
dir="${DEMO_DIR:-runs/demo}"
minutes="${DEMO_MINUTES:-1}"
mkdir -p "$dir"

echo "== train: 2-layer LSTM, hidden 256, byte tokenizer, built-in corpus, ${minutes} min"
rnnserve train --minutes "$minutes" --out "$dir/lm.pt" --force  # --force: a second run starts over

echo "== export to $dir/models/lm/1/model.onnx (parity-checked against PyTorch)"
rnnserve export "$dir/lm.pt" --repository "$dir/models" --name lm --force

echo "== serve"
rnnserve serve --repository "$dir/models" --port 0 >"$dir/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
target=""
for _ in $(seq 300); do
    target=$(sed -n 's/.*listening on \([0-9.]*:[0-9]*\).*/\1/p' "$dir/server.log")
    [ -n "$target" ] && break
    kill -0 "$server" 2>/dev/null || { cat "$dir/server.log"; exit 1; }
    sleep 0.1
done
[ -n "$target" ] || { echo "server did not start:"; cat "$dir/server.log"; exit 1; }
rnnserve models --target "$target"

echo "== generate (streamed as it is produced)"
rnnserve generate --target "$target" --model lm --max-tokens 300 --temperature 0.7 --seed 1 "The "

echo "== stream: per-step predictions"
printf 'The return statement\n' | rnnserve stream --target "$target" --model lm --top-k 3

echo "== stop the server"
kill -TERM "$server"
wait "$server"
trap - EXIT
echo "done: server stopped cleanly"
