#!/usr/bin/env bash
# Build each implementation's image and run the suite in them, one run id for all, results on the host.
#   docker/run-suite.sh [--gpus N] [--data /path/to/coco] [--config NAME] [--run-id ID]
# Each image runs the implementations it holds (see IMAGES); every result lands in
# ./results/runs/<run-id>/<impl>/, and the report is made over all of them at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

GPUS=8 DATA="" CONFIG=mask_rcnn_R_50_FPN_noaug_1x RUN_ID="docker-$(date +%Y%m%d-%H%M%S)"
while [ $# -gt 0 ]; do
  case "$1" in
    --gpus) GPUS="$2"; shift 2 ;;
    --data) DATA="$2"; shift 2 ;;
    --config) CONFIG="$2"; shift 2 ;;
    --run-id) RUN_ID="$2"; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

# image name -> implementations run in it
declare -A IMAGES=( [reference]="reference,torchvision" )
for df in docker/*.Dockerfile; do
  name=$(basename "$df" .Dockerfile)
  [ -n "${IMAGES[$name]:-}" ] || IMAGES[$name]="$name"
done

mkdir -p results/runs
mounts=(-v "$PWD/results:/workspace/mrcnn-bench/results")
data_args=()
if [ -n "$DATA" ]; then
  mounts+=(-v "$(realpath "$DATA"):/data/coco:ro")
  data_args=(--data /data/coco)
fi

status=0
for name in "${!IMAGES[@]}"; do
  echo "== building mrcnn-bench/$name"
  docker build -f "docker/$name.Dockerfile" -t "mrcnn-bench/$name" .
  echo "== running ${IMAGES[$name]} in mrcnn-bench/$name"
  docker run --rm --gpus all --ipc=host "${mounts[@]}" "mrcnn-bench/$name" \
    run --impl "${IMAGES[$name]}" --config "$CONFIG" --gpus "$GPUS" --device cuda --run-id "$RUN_ID" "${data_args[@]}" || status=1
done
docker run --rm "${mounts[@]}" mrcnn-bench/reference report "results/runs/$RUN_ID" --plots "results/runs/$RUN_ID/plots"
exit $status
