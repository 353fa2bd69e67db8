#!/usr/bin/env bash
# The whole product on a fresh machine, end to end: train -> evaluate -> export -> verify -> serve ->
# call Encode / Decode / Sample / Reconstruct -> PNG of samples -> a small batch generation job ->
# interpolation and traversal grids, and likelihood scores of digits against noise (a histogram).
# Uses scikit-learn's bundled digits (offline). Everything lands under $1 (default: demo/).
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO=${1:-demo}
VAE=${VAE:-.venv/bin/vae}
PY=${PY:-.venv/bin/python}
mkdir -p "$DEMO"
rm -rf "$DEMO/run" "$DEMO/generated"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1/7 train a conv VAE on the bundled digits (8x8, Bernoulli likelihood)"
"$VAE" train --data digits --out "$DEMO/run" --arch conv --hidden 32,64 --latent-dim 8 \
  --epochs 30 --batch-size 64 --lr 2e-3 --beta-schedule linear --beta-warmup-steps 300 --no-progress

step "2/7 evaluate on the validation split (negative ELBO, IWAE NLL, active units)"
"$VAE" evaluate "$DEMO/run" --k 100 --out "$DEMO/evaluation.json" >/dev/null
"$PY" - "$DEMO/evaluation.json" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
keys = [k for k in ("n_images", "neg_elbo", "iwae_nll", "k", "active_units", "latent_dim") if k in r]
print(json.dumps({k: r[k] for k in keys}, indent=2))
PYEOF

step "3/7 export encoder.onnx + decoder.onnx + manifest.json, then verify them"
"$VAE" export "$DEMO/run" --out "$DEMO/model" --force
"$VAE" verify "$DEMO/model" --checkpoint "$DEMO/run"

step "4/7 serve it (gRPC + /metrics) on free loopback ports"
read -r PORT MPORT < <("$PY" -c 'import socket
def free():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
print(free(), free())')
"$VAE" serve --model-dir "$DEMO/model" --host 127.0.0.1 --port "$PORT" --metrics-port "$MPORT" \
  >"$DEMO/serve.log" 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  if "$VAE" health --target "127.0.0.1:$PORT" --timeout 1 >/dev/null 2>&1; then break; fi
  kill -0 $SERVER 2>/dev/null || { cat "$DEMO/serve.log"; exit 1; }
  sleep 0.2
done
"$VAE" health --target "127.0.0.1:$PORT"
echo "server pid $SERVER on 127.0.0.1:$PORT, metrics on http://127.0.0.1:$MPORT/metrics"

step "5/7 call the service: GetModelInfo, Encode, Decode, Sample; scrape /metrics"
T="127.0.0.1:$PORT"
"$VAE" client info --target "$T"
"$VAE" client encode --target "$T" --data digits --limit 500 --out "$DEMO/encoded.npz"
"$PY" -c "import numpy as np; np.save('$DEMO/z.npy', np.load('$DEMO/encoded.npz')['mu'][:16])"
"$VAE" client decode --target "$T" --z "$DEMO/z.npy" --grid "$DEMO/decoded.png"
"$VAE" client sample --target "$T" --n 64 --seed 7 --grid "$DEMO/samples.png"
echo "latent health on /metrics after 500 encoded digits (the service's view of collapse and drift):"
sleep 0.5  # the latent statistics are folded in by a background worker, off the request path
"$PY" - "$MPORT" <<'PYEOF'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
wanted = ("vae_latent_active_units", "vae_latent_reference_active_units", "vae_latent_collapse ",
          "vae_latent_drift_score", "vae_latent_kl_mean_nats", "vae_latent_kl_per_sample_nats_count",
          'vae_requests_total{code="OK"')
for line in text.splitlines():
    if line.startswith(wanted):
        print(line)
PYEOF

step "6/7 a small batch generation job (sharded, resumable, deterministic)"
"$VAE" generate --target "$T" --n 512 --shard-size 128 --seed 1 --out "$DEMO/generated" --no-progress

step "7/7 what only a VAE server does: interpolation, traversal, likelihood scores"
"$VAE" client interpolate --target "$T" --data digits --a 0 --b 7 --steps 10 --grid "$DEMO/interpolation.png" \
  --out "$DEMO/interpolation.npz" >/dev/null
"$VAE" client traverse --target "$T" --data digits --base 0 --steps 9 --grid "$DEMO/traversal.png" >/dev/null
# 300 held-out-like digits plus 60 uniform-noise images: the noise scores far below the training p01.
"$PY" -c "
import numpy as np
from sklearn.datasets import load_digits
x = (load_digits().images[-300:, None] / 16.0).astype(np.float32)
noise = np.random.default_rng(0).random((60, 1, 8, 8), dtype=np.float32)
np.save('$DEMO/to_score.npy', np.concatenate([x, noise]))"
rm -rf "$DEMO/scores.csv" "$DEMO/scores.csv.parts"
"$VAE" score --target "$T" --input "$DEMO/to_score.npy" --out "$DEMO/scores.csv" --histogram "$DEMO/scores.png" \
  --chunk-size 128 --no-progress
echo "fraction of scored inputs below the training p01 on /metrics:"
"$PY" - "$MPORT" <<'PYEOF'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
for line in text.splitlines():
    if line.startswith(("vae_score_images_total", "vae_score_below_reference_p01_total")):
        print(line)
PYEOF

kill -TERM $SERVER; wait $SERVER || true; trap - EXIT
step "done"
echo "run folder:        $DEMO/run   (metrics.jsonl, curves.png, grids/, best.pt, last.pt)"
echo "model folder:      $DEMO/model (encoder.onnx, decoder.onnx, manifest.json)"
echo "samples:           $DEMO/samples.png   decoded posterior means of 16 digits: $DEMO/decoded.png"
echo "generation job:    $DEMO/generated (shards + manifest.json)"
echo "latent space:      $DEMO/interpolation.png  $DEMO/traversal.png (one row per latent dimension)"
echo "scores:            $DEMO/scores.csv  histogram against the training reference: $DEMO/scores.png"
