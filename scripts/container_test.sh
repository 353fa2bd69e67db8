#!/usr/bin/env bash
# Build the serving image for real and run it, with no registry in reach:
#   1. a Debian 12 base made locally with mmdebstrap (no Python in it, like the CUDA runtime base),
#      imported into containers-storage;
#   2. `buildah bud` of the project's Dockerfile with BASE_IMAGE=<that base> and ORT_PACKAGE=onnxruntime;
#   3. `podman run` of the image on an exported model (read-only root filesystem, model volume
#      read-only, published ports), then: the image's own HEALTHCHECK (`podman healthcheck run`), the
#      host-side `vae health` through the published port, a real request, a /metrics scrape, the numeric
#      user, no torch, the image config (ports, entrypoint, healthcheck), the Indexed Job's command
#      from deploy/k8s/generate/job.yaml (two indexes), and SIGTERM drain on stop;
#   4. with --trainer: the `trainer` target too, the training Job's script from
#      deploy/k8s/train/job.yaml in it (torchrun, two CPU ranks, then vae export), and step 3 again on
#      the model it wrote.
#
# usage: scripts/container_test.sh [--model DIR] [--trainer] [--keep-images]
#   --model DIR     exported model folder to serve (default: train + export a tiny one on digits)
#   --trainer       also build the trainer target and run train + export in it
#   --keep-images   keep the built images (default: remove them; the base and the layer cache stay)
# env: VAE_CT_CACHE  cache folder for the base tarball (default ~/.cache/vae-container)
#      VAE_CT_PYTHON python with the project installed, for the host-side client (default .venv/bin/python)
# Exit: 0 all checks passed, 1 a check failed, 2 bad usage or missing tools.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${VAE_CT_PYTHON:-$ROOT/.venv/bin/python}
VAE=$(dirname "$PY")/vae
CACHE=${VAE_CT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vae-container}
BASE_TAG=localhost/vae-base:bookworm
TAG=$$
SERVE_IMAGE=localhost/vae-serve:ct-$TAG
TRAINER_IMAGE=localhost/vae-trainer:ct-$TAG
MODEL=""
# A model small enough to train in seconds on 2 cores: the point is the container, not the model.
TINY_TRAIN=(--arch mlp --hidden 32 --latent-dim 4 --epochs 2 --no-grids --no-progress)
TRAINER=0
KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL=${2:?--model needs a folder}; shift 2 ;;
    --trainer) TRAINER=1; shift ;;
    --keep-images) KEEP=1; shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "container_test: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

T0=$(date +%s)
log() { printf '[container-test +%4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
fail() { log "FAIL: $*"; exit 1; }

for tool in mmdebstrap buildah podman; do
  command -v "$tool" >/dev/null || {
    echo "container_test: $tool not found; apt-get install mmdebstrap buildah podman uidmap" \
         "fuse-overlayfs slirp4netns runc" >&2; exit 2; }
done
if [ ! -x "$PY" ] || [ ! -x "$VAE" ]; then
  echo "container_test: no python + vae at $PY (make venv, or set VAE_CT_PYTHON)" >&2; exit 2
fi
if [ -n "$MODEL" ] && [ ! -f "$MODEL/manifest.json" ]; then
  echo "container_test: $MODEL has no manifest.json (not an exported model folder)" >&2; exit 2
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/vae-container-test.XXXXXX")
CONTAINERS=()
cleanup() {
  for c in "${CONTAINERS[@]}"; do podman rm -f -t 0 "$c" >/dev/null 2>&1 || true; done
  if [ "$KEEP" = 0 ]; then
    podman rmi -f "$SERVE_IMAGE" "$TRAINER_IMAGE" >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# Containers inside a VM or another container often may not set rlimits (crun and runc both fail on
# setrlimit there) or run crun on hybrid cgroups: inherit the limits, and prefer runc when present.
{
  echo '[containers]'
  echo 'default_ulimits = []'
  if command -v runc >/dev/null; then printf '[engine]\nruntime = "runc"\n'; fi
} > "$WORK/containers.conf"
export CONTAINERS_CONF="$WORK/containers.conf"
log "buildah $(buildah --version | awk '{print $3}'), podman $(podman --version | awk '{print $3}')"

# --- 1. the base -------------------------------------------------------------------------------------
if podman image exists "$BASE_TAG"; then
  log "base $BASE_TAG present"
else
  mkdir -p "$CACHE"
  if [ ! -s "$CACHE/base-bookworm.tar" ]; then
    log "mmdebstrap: Debian 12 minbase + ca-certificates (no python: the Dockerfile installs it)"
    mmdebstrap --quiet --variant=minbase --include=ca-certificates bookworm "$CACHE/base-bookworm.part.tar"
    mv "$CACHE/base-bookworm.part.tar" "$CACHE/base-bookworm.tar"
  fi
  podman import --quiet "$CACHE/base-bookworm.tar" "$BASE_TAG" >/dev/null
  log "imported $BASE_TAG"
fi

# --- pip configuration for the build (secrets and read-only volumes, never baked) --------------------
# Only what reaches an index is carried (scripts/pip_build_config.py): index-url, extra-index-url,
# find-links, trusted-host, ... as one ini file passed as the pip_conf secret, the CA bundle as pip_ca,
# local index folders bind-mounted read-only at the same paths. Constraints, requirements and anything
# naming a file that exists only on this machine are dropped (listed in the log).
BUILD_OPTS=()
"$PY" scripts/pip_build_config.py "$WORK" > "$WORK/build_opts" 2> "$WORK/pip_config.log" \
  || { cat "$WORK/pip_config.log" >&2; echo "container_test: could not read the pip configuration" >&2; exit 2; }
while read -r line; do log "$line"; done < "$WORK/pip_config.log"
mapfile -t BUILD_OPTS < "$WORK/build_opts"
log "build options: ${BUILD_OPTS[*]}"

# --- 2. build the serving image --------------------------------------------------------------------------
log "buildah bud (target serve, BASE_IMAGE=$BASE_TAG, ORT_PACKAGE=onnxruntime)"
B0=$(date +%s)
buildah bud --quiet --format docker --layers --isolation chroot \
  --build-arg BASE_IMAGE="$BASE_TAG" --build-arg ORT_PACKAGE=onnxruntime \
  "${BUILD_OPTS[@]}" -t "$SERVE_IMAGE" -f Dockerfile . > "$WORK/build-serve.log" 2>&1 \
  || { tail -40 "$WORK/build-serve.log"; fail "serving image build failed"; }
log "built $SERVE_IMAGE in $(( $(date +%s) - B0 ))s, $(podman image inspect "$SERVE_IMAGE" --format '{{.Size}}' \
  | awk '{printf "%.0f MB", $1/1e6}'): $(podman run --rm --network none --entrypoint python "$SERVE_IMAGE" -c \
  "import onnxruntime as o, sys; print(sys.version.split()[0], 'onnxruntime', o.__version__, o.get_available_providers())")"

# The image config: numeric user, ports, entrypoint, the project's own health command.
CONFIG=$(podman image inspect "$SERVE_IMAGE" --format \
  '{{.Config.User}}|{{json .Config.Entrypoint}}|{{json .Config.ExposedPorts}}|{{json .Config.Healthcheck}}')
log "image config: $CONFIG"
case "$CONFIG" in 10001:10001\|'["vae","serve"]'\|*50051/tcp*8000/tcp*vae\ health\ --target\ 127.0.0.1:*) ;;
  *) fail "image config is not user 10001, ENTRYPOINT vae serve, ports 50051/8000, vae health check" ;;
esac

# --- model -------------------------------------------------------------------------------------------------
if [ -z "$MODEL" ]; then
  log "training a tiny model on digits (host venv) and exporting it"
  OMP_NUM_THREADS=1 "$VAE" train --data digits "${TINY_TRAIN[@]}" --out "$WORK/run" \
    > "$WORK/train.log" 2>&1 || { tail -20 "$WORK/train.log"; fail "vae train failed"; }
  "$VAE" export "$WORK/run" --out "$WORK/model" > "$WORK/export.log" 2>&1 \
    || { tail -20 "$WORK/export.log"; fail "vae export failed"; }
  MODEL="$WORK/model"
fi
# A private copy readable by the image's user (uid 10001): pytest's and mktemp's folders are 0700.
cp -r "$MODEL" "$WORK/serve-model" && chmod -R a+rX "$WORK/serve-model"
MODEL="$WORK/serve-model"

# --- 3. run it -------------------------------------------------------------------------------------------
# serve_and_check NAME IMAGE MODEL_DIR: start, wait for the image's HEALTHCHECK to pass, then check.
serve_and_check() {
  local name=$1 image=$2 model=$3 grpc metrics t s code
  CONTAINERS+=("$name")
  podman run -d --name "$name" --read-only --network slirp4netns \
    -p 127.0.0.1::50051 -p 127.0.0.1::8000 -v "$model:/models:ro" \
    -e HOME=/tmp -e VAE_PROVIDER=auto -e VAE_LOG_LEVEL=INFO "$image" >/dev/null
  grpc=$(podman port "$name" 50051/tcp | sed 's/.*://')
  metrics=$(podman port "$name" 8000/tcp | sed 's/.*://')
  log "$name: started (gRPC -> 127.0.0.1:$grpc, metrics -> 127.0.0.1:$metrics)"
  for t in $(seq 1 120); do
    if podman healthcheck run "$name" >/dev/null 2>&1; then break; fi
    [ "$(podman inspect "$name" --format '{{.State.Running}}')" = true ] \
      || { podman logs "$name" 2>&1 | tail -20; fail "$name exited before becoming healthy"; }
    [ "$t" = 120 ] && { podman logs "$name" 2>&1 | tail -20; fail "$name not healthy after 120s"; }
    sleep 1
  done
  log "$name: HEALTHCHECK (vae health inside the container) passed after ~${t}s;" \
      "status $(podman inspect "$name" --format '{{.State.Health.Status}}')"
  s=$("$VAE" health --target "127.0.0.1:$grpc" 2>&1) || fail "host vae health: $s"
  log "$name: host vae health --target 127.0.0.1:$grpc -> $s"
  s=$("$VAE" health --target "127.0.0.1:$grpc" --service vae.v1.VaeService 2>&1) \
    || fail "host vae health (vae.v1.VaeService): $s"
  log "$name: vae.v1.VaeService -> $s"
  s=$("$VAE" client sample --target "127.0.0.1:$grpc" --n 4 --seed 1 2>&1) \
    || fail "vae client sample: $s"
  log "$name: vae client sample --n 4 -> $(echo "$s" | tr -d ' \n')"
  s=$("$PY" -c "import sys, urllib.request as u; sys.stdout.write(u.urlopen(sys.argv[1], timeout=10).read().decode())" \
      "http://127.0.0.1:$metrics/metrics") || fail "metrics scrape failed"
  echo "$s" | grep -q '^vae_' || fail "/metrics has no vae_ series"
  log "$name: /metrics scraped: $(echo "$s" | grep -c '^vae_') vae_ samples, e.g. $(echo "$s" | grep '^vae_' | head -2 | tr '\n' ' ')"
  s=$(podman exec "$name" id -u)
  [ "$s" = 10001 ] || fail "$name runs as uid $s, not 10001"
  podman exec "$name" sh -c 'touch /probe' 2>/dev/null && fail "root filesystem is writable"
  podman exec "$name" python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)" \
    || fail "torch is importable in the serving image"
  log "$name: uid 10001, root filesystem read-only, no torch"
  indexed_generate_job "$image" "$grpc"
  t=$(date +%s)
  podman stop -t 60 "$name" >/dev/null
  code=$(podman inspect "$name" --format '{{.State.ExitCode}}')
  log "$name: SIGTERM -> exited $code after $(( $(date +%s) - t ))s; last log lines:"
  podman logs "$name" 2>&1 | tail -4 | sed 's/^/    /'
  [ "$code" = 0 ] || fail "$name exited $code on SIGTERM (expected a clean drain, 0)"
}
# indexed_generate_job IMAGE GRPC_PORT: the Indexed Job's own command (deploy/k8s/generate/job.yaml)
# in the image, two indexes at once as Kubernetes would start them (JOB_COMPLETION_INDEX 0 and 1),
# scaled down (--n, --shard-size, --num-shards) and pointed at the published port.
indexed_generate_job() {
  local image=$1 grpc=$2 i pids=() n_files
  mapfile -t GEN_CMD < <("$PY" - "$grpc" <<'PYEOF'
import sys, yaml
job = yaml.safe_load(open("deploy/k8s/generate/job.yaml"))
spec = job["spec"]
c = spec["template"]["spec"]["containers"][0]
over = {"--target": f"127.0.0.1:{sys.argv[1]}", "--n": "40", "--shard-size": "5", "--num-shards": "2"}
args = [a.split("=", 1)[0] + "=" + over[a.split("=", 1)[0]] if a.split("=", 1)[0] in over else a
        for a in c["args"]]
assert spec["completionMode"] == "Indexed" and f"--num-shards={spec['completions']}" in c["args"]
print("\n".join(c["command"] + args))
PYEOF
)
  mkdir -p "$WORK/gen" && chmod 0777 "$WORK/gen"
  for i in 0 1; do
    podman run --rm --network host --read-only -e JOB_COMPLETION_INDEX=$i -e HOME=/tmp \
      -v "$WORK/gen:/out" --entrypoint "${GEN_CMD[0]}" "$image" "${GEN_CMD[@]:1}" \
      > "$WORK/gen-$i.log" 2>&1 & pids+=($!)
  done
  for i in 0 1; do
    wait "${pids[$i]}" || { tail -20 "$WORK/gen-$i.log"; fail "generate Job index $i failed"; }
  done
  n_files=$(find "$WORK/gen" -name '*.npz' | wc -l)
  [ "$n_files" = 8 ] || { ls -R "$WORK/gen"; fail "generate Job wrote $n_files shards, expected 8"; }
  log "Indexed Job command (${GEN_CMD[*]:0:2} ...): JOB_COMPLETION_INDEX 0 and 1 wrote $n_files shards"
  rm -rf "$WORK/gen"
}

serve_and_check "vae-ct-serve-$TAG" "$SERVE_IMAGE" "$MODEL"

# --- 4. the trainer target ------------------------------------------------------------------------------
if [ "$TRAINER" = 1 ]; then
  log "buildah bud (target trainer, TORCH_SPEC=torch==2.13.0)"
  B0=$(date +%s)
  buildah bud --quiet --format docker --layers --isolation chroot --target trainer \
    --build-arg BASE_IMAGE="$BASE_TAG" "${BUILD_OPTS[@]}" -t "$TRAINER_IMAGE" -f Dockerfile . \
    > "$WORK/build-trainer.log" 2>&1 || { tail -40 "$WORK/build-trainer.log"; fail "trainer build failed"; }
  log "built $TRAINER_IMAGE in $(( $(date +%s) - B0 ))s: $(podman run --rm --network none --entrypoint python \
    "$TRAINER_IMAGE" -c "import torch, onnxruntime; print('torch', torch.__version__, 'onnxruntime', onnxruntime.__version__)")"
  # The training Job's own script (deploy/k8s/train/job.yaml: torchrun, then vae export), with a tiny
  # model on CPU: two ranks (gloo) instead of two GPUs.
  "$PY" -c "import yaml; c = yaml.safe_load(open('deploy/k8s/train/job.yaml'))['spec']['template']['spec']['containers'][0]; print(c['args'][0])" > "$WORK/train-job.sh"
  mkdir -p "$WORK/runs" "$WORK/models" && chmod 0777 "$WORK/runs" "$WORK/models"
  CONTAINERS+=("vae-ct-train-$TAG")
  podman run --name "vae-ct-train-$TAG" --read-only --network none -e OMP_NUM_THREADS=1 \
    -e NPROC=2 -e TRAIN_ARGS="${TINY_TRAIN[*]} --device cpu" -e TRAIN_DATA=digits -e MAX_MINUTES=5 \
    -e RUN_DIR=/runs/vae -e MODEL_OUT=/models/vae -e HOME=/tmp -e MPLCONFIGDIR=/tmp/matplotlib \
    -v "$WORK/runs:/runs" -v "$WORK/models:/models" \
    --entrypoint /bin/sh "$TRAINER_IMAGE" -ec "$(cat "$WORK/train-job.sh")" \
    > "$WORK/ctrain.log" 2>&1 || { tail -20 "$WORK/ctrain.log"; fail "the training Job's script failed in the trainer image"; }
  log "trainer image: the training Job's script (torchrun, 2 ranks; vae export --fp16) wrote" \
      "$(grep -c . "$WORK/runs/vae/metrics.jsonl") metrics lines and $(find "$WORK/models/vae" -type f -printf '%f ')"
  serve_and_check "vae-ct-serve2-$TAG" "$SERVE_IMAGE" "$WORK/models/vae"
fi

log "PASS: all container checks passed in $(( $(date +%s) - T0 ))s"
