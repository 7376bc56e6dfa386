#!/usr/bin/env bash
# Every GPU result of mrcnn-bench in one command on a GPU machine of the device tool (one H100 or H200,
# 16 cores, Python 3.12 with torch 2.11 and torchvision 0.26, nvcc, ninja, no network), in at most
# 9 minutes, everything written under $OUT.
#
#   scripts/device_check.sh                 # on the GPU machine, .device-wheels carried (scripts/device_wheels.sh)
#   scripts/device_check.sh --rehearse      # here, on the CPU: the same steps at tiny sizes, in .venv
#   scripts/device_check.sh --rehearse --install --python .venvs/device-py312/bin/python
#                                           # ... and step 1 too, into an interpreter like the device's
#
# The steps, in priority order. Each writes its results before the next begins, and none starts when
# the time left cannot hold it, so a timeout keeps what finished:
#   1 install     the wheels (into $SITE), then mrcnn-bench and its extension, built against the machine's
#                 torch with CUDA kernels for its GPU; mmcv's CUDA ops start building in the background
#                 (on cores of their own) unless a built mmcv wheel was carried
#   2 cuda-tests  the tests marked cuda: each op against torchvision.ops on CUDA, gradcheck, opcheck,
#                 determinism, real CUDA graphs
#   3 fp32, amp   reference, torchvision and detectron2 on the canonical config on one GPU (800/1333,
#                 2 images per GPU), fp32 with TF32, then AMP (fp16), timed over iterations [WARMUP, ITERS)
#   4 report      the tables and plots of both runs
#   5 mmdet       mmdet in the same two runs, if mmcv's CUDA ops were built in time
#   6 levers      benchmarks/levers.py --device cuda: CUDA graphs, the other layout (NCHW or NHWC), AMP, ...
#   7 phases      mrcnn-bench phases (reference, torchvision, detectron2): each phase of the step, host-device
#                 waits; then benchmarks/phases.py --profile: torch.profiler's top CUDA kernels (two of them)
#   8 data        run --task data at 800/1333: each framework's training loader alone, 0, 2, 4 and 8 workers
#   9 trace       mrcnn-bench trace at 800/1333: 3 steps per implementation under torch.profiler (traces,
#                 top kernels, diff, GPU idle)
#  10 infer       run --task infer --config cpu_infer at 800/1333: latency per batch size 1, 2, 4, 8
#
# What comes back under $OUT (the device tool returns at most 8 files): device_check.log (everything
# printed), steps.jsonl (one line per step: status, seconds, what it left), summary.md, results.tar.gz
# (the run folders, the report, the levers and phases tables, test reports, build logs), traces.tar (the
# traces, as many as fit 15 MiB).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

REHEARSE=0
INSTALL=
PYTHON=${PYTHON:-}
BUDGET=${DEVICE_CHECK_BUDGET:-540}
while [ $# -gt 0 ]; do
  case "$1" in
    --rehearse) REHEARSE=1; shift ;;
    --install) INSTALL=1; shift ;;
    --python) PYTHON=$2; shift 2 ;;
    --budget) BUDGET=$2; shift 2 ;;
    -h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0"; exit 0 ;;
    *) echo "device_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

if [ "$REHEARSE" = 1 ]; then
  PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
  INSTALL=${INSTALL:-0}
  OUT=${OUT:-$(mktemp -d /tmp/device-check-out.XXXXXX)}
  DEVICE=cpu AMP=bf16 CONFIG=cpu_small ITERS=3 WARMUP=1 TIMEOUT=300
  SIZE=(--set input.min_size_train=[128] --set input.max_size_train=128 --set input.min_size_test=128
        --set input.max_size_test=128 --set benchmark.num_workers=0)
  BENCH_CPUS=
  THREADS=()
  STRETCH=4  # each step may take 4x its GPU limit: a CPU (shared, 2 cores) is slower at every part
  LEVERS=(--rounds 1 --iters 1 --warmup 1 --only amp,layout)
  PHASES=(--iters 3 --warmup 1)
  PHASE_ITERS=3 PHASE_WARMUP=1
  DATA_WORKERS=0,1 DATA_ITERS=4 DATA_WARMUP=1
  TRACE_ITERS=3 TRACE_WARMUP=2 TRACE_STEPS=1
else
  PYTHON=${PYTHON:-python3}
  INSTALL=${INSTALL:-1}
  if [ -z "${OUT:-}" ]; then echo "device_check.sh: \$OUT is not set (the device tool sets it; or --rehearse)" >&2; exit 2; fi
  # fp32 (TF32) and AMP fp16, as NVIDIA's and detectron2's tables; 2 images on one GPU.
  DEVICE=cuda AMP=fp16 CONFIG=mask_rcnn_R_50_FPN_noaug_1x ITERS=${ITERS:-120} WARMUP=${WARMUP:-40} TIMEOUT=240
  SIZE=(--set benchmark.num_workers=4)
  THREADS=(--threads 6)  # of the 10 benchmark cores: 6 for the step, 4 for the data-loader workers
  BENCH_CPUS=0-9  # the background mmcv build keeps to cores 10-15
  STRETCH=1
  # compile_heads is left out: torch.compile's first compile would take most of the step's two minutes
  LEVERS=(--rounds 3 --iters 5 --warmup 5 --only amp,layout,cuda_graphs)
  PHASES=(--iters 12 --warmup 4 --profile 3)
  PHASE_ITERS=24 PHASE_WARMUP=8
  DATA_WORKERS=0,2,4,8 DATA_ITERS=60 DATA_WARMUP=10  # loader workers on the 10 benchmark cores
  TRACE_ITERS=13 TRACE_WARMUP=10 TRACE_STEPS=3
fi
case "$PYTHON" in  # absolute (the steps change folders), without resolving a venv's symlink
  */*) PYTHON=$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON") ;;
esac
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/device-check.XXXXXX)
RESULTS=$WORK/results
mkdir -p "$RESULTS"
SITE=$WORK/site
LOG=$OUT/device_check.log
STEPS=$OUT/steps.jsonl
: >"$STEPS"
exec > >(tee -a "$LOG") 2>&1
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }

# The results so far, packed atomically: what a timeout leaves is always a whole archive.
pack() {  # the traces travel apart (pack_traces): a results archive over the tool's 16 MiB a file would not come back
  tar -czf "$OUT/results.tar.gz.part" --exclude='trace-*.json.gz' -C "$WORK" results \
    && mv "$OUT/results.tar.gz.part" "$OUT/results.tar.gz"
}

# traces.tar: the trace files, smallest first, while they fit 15 MiB (the rest named in results/traces-left.txt)
pack_traces() {
  "$PYTHON" - "$RESULTS" "$OUT/traces.tar" <<'EOF_TRACES'
import sys, tarfile
from pathlib import Path
results, out = Path(sys.argv[1]), Path(sys.argv[2])
left, total = [], 0
with tarfile.open(str(out) + ".part", "w") as tar:
    for path in sorted(results.rglob("trace-*.json.gz"), key=lambda p: p.stat().st_size):
        if total + path.stat().st_size > 15 * 2**20:
            left.append(f"{path.relative_to(results)} ({path.stat().st_size / 2**20:.1f} MiB)")
            continue
        total += path.stat().st_size
        tar.add(path, arcname=str(path.relative_to(results.parent)))
Path(str(out) + ".part").rename(out)
(results / "traces-left.txt").write_text("".join(f"{line}\n" for line in left))
print(f"traces.tar: {total / 2**20:.1f} MiB; left out: {', '.join(left) or 'none'}")
EOF_TRACES
}

# step NAME MAX_SECONDS MIN_SECONDS COMMAND...: run COMMAND with at most MAX_SECONDS (less if the budget
# is nearly spent); skip it when fewer than MIN_SECONDS are left. One line per step in steps.jsonl.
step() {
  local name=$1 max=$2 min=$3
  shift 3
  local left=$(( BUDGET - $(elapsed) ))
  if [ "$left" -lt "$min" ]; then
    skip "$name" "$left s left of the $BUDGET s budget, needs $min s"
    return 1
  fi
  max=$(( max * STRETCH ))
  local limit=$(( max < left ? max : left ))
  echo "== $name (at $(elapsed) s, at most ${limit} s): $*"
  local t0 rc status
  t0=$(date +%s)
  # in a child bash, so that the functions below (exported) run under timeout like commands
  timeout --kill-after=10 "$limit" bash -c '"$@"' "$name" "$@"
  rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status=timeout ;;
    *) status=failed ;;
  esac
  printf '{"step": "%s", "status": "%s", "rc": %d, "seconds": %d, "at": %d}\n' "$name" "$status" "$rc" "$(( $(date +%s) - t0 ))" "$(elapsed)" >>"$STEPS"
  echo "== $name: $status (rc $rc) in $(( $(date +%s) - t0 )) s"
  pack
  return $rc
}

skip() {  # skip NAME WHY
  echo "== $1: skipped, $2"
  printf '{"step": "%s", "status": "skipped", "seconds": 0, "note": "%s"}\n' "$1" "$2" >>"$STEPS"
}

have_runs() { compgen -G "$RESULTS/*/*/run.json" >/dev/null; }

on_cpus() {  # the benchmarks keep off the cores of the background build
  if [ -n "$BENCH_CPUS" ] && [ "$(nproc)" -ge 16 ] && command -v taskset >/dev/null; then taskset -c "$BENCH_CPUS" "$@"; else "$@"; fi
}

export -f elapsed on_cpus
export START BUDGET BENCH_CPUS

# ------------------------------------------------------------------------------ 0: the machine
{
  echo "date: $(date -u +%FT%TZ)  rehearse: $REHEARSE  budget: ${BUDGET} s  git: $(git rev-parse --short HEAD 2>/dev/null || echo none)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$PYTHON" -c "import sys, torch, torchvision; print('python', sys.version.split()[0], 'torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)"
  command -v nvcc >/dev/null && nvcc --version | tail -2
  nproc
} >"$RESULTS/machine.txt" 2>&1
cat "$RESULTS/machine.txt"

# ------------------------------------------------------------------------------ 1: install
WHEELS=$ROOT/.device-wheels
MMCV_DIR=$WORK/mmcv
if [ "$INSTALL" = 1 ]; then
  # the environment of every later step: the wheels' folder first on the path, the toolkit of nvcc
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH} PATH=$SITE/bin:$PATH
  # the toolkit's own folder, with bin/nvcc and lib64/libcudart.so (what torch's CUDAExtension links):
  # $CUDA_HOME, /usr/local/cuda, or where nvcc really lives (a /usr/local/bin/nvcc wrapper or link would
  # make it /usr/local, which has no libcudart)
  for home in "${CUDA_HOME:-}" /usr/local/cuda "$(dirname "$(dirname "$(readlink -f "$(command -v nvcc || echo /x/x/x)")")")"; do
    if [ -n "$home" ] && [ -x "$home/bin/nvcc" ] && compgen -G "$home/lib*/libcudart.so" >/dev/null; then
      CUDA_HOME=$home; break
    fi
  done
  export CUDA_HOME
  echo "CUDA_HOME=${CUDA_HOME:-none found (the extension gets CPU kernels only)}"
  if [ "$DEVICE" = cuda ]; then  # kernels for this GPU only: the quickest build
    TORCH_CUDA_ARCH_LIST=$("$PYTHON" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
    export TORCH_CUDA_ARCH_LIST
  fi
fi
export PYTHON SITE WHEELS MMCV_DIR RESULTS ROOT DEVICE

install_all() {
  set -e
  if [ ! -d "$WHEELS" ]; then
    echo "no $WHEELS: run scripts/device_wheels.sh here and carry .device-wheels"; return 1
  fi
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEELS"/*.whl
  # mmcv's CUDA ops: a carried wheel built for this Python, else built from the sdist in the background
  local carried
  carried=$(ls "$WHEELS"/mmcv-*-cp"$("$PYTHON" -c 'import sys; print("%d%d" % sys.version_info[:2])')"-*.whl 2>/dev/null | head -1)
  mkdir -p "$MMCV_DIR"
  if [ -n "$carried" ]; then
    echo "mmcv: the carried wheel $(basename "$carried") (installed with the others)"
    echo ok >"$MMCV_DIR/status"
  elif [ "$DEVICE" = cuda ] && [ -f "$WHEELS/mmcv-2.1.0.tar.gz" ]; then
    echo "mmcv: building its CUDA ops in the background on cores 10-15 (log: results/mmcv-build.log)"
    local pin=()
    command -v taskset >/dev/null && [ "$(nproc)" -ge 16 ] && pin=(taskset -c 10-15)
    ( if nice -n 10 "${pin[@]}" "$PYTHON" "$ROOT/scripts/install_mmdet.py" --sdist "$WHEELS/mmcv-2.1.0.tar.gz" \
           --wheel-dir "$MMCV_DIR/wheel" --cuda on --jobs 6 >"$RESULTS/mmcv-build.log" 2>&1 \
         && "$PYTHON" -m pip install -q --no-index --no-deps --target "$SITE" "$MMCV_DIR"/wheel/mmcv-*.whl; then
        echo ok >"$MMCV_DIR/status"
      else
        echo failed >"$MMCV_DIR/status"
      fi ) </dev/null >/dev/null 2>&1 &
  else
    echo "mmcv: no carried wheel and no sdist to build (mmdet will not run)"
    echo "none" >"$MMCV_DIR/status"
  fi
  # mrcnn-bench against the machine's torch: CPU kernels, and CUDA kernels for this GPU when nvcc is here.
  # Should the CUDA build fail, a CPU-only build still lets torchvision, detectron2 and mmdet be measured
  # (the reference then refuses to run on CUDA, and says why).
  if ! MAX_JOBS=${MAX_JOBS:-10} "$PYTHON" -m pip install --no-index --no-deps --no-build-isolation --target "$SITE" "$ROOT" \
       >"$RESULTS/build.log" 2>&1; then
    tail -30 "$RESULTS/build.log"
    echo "THE CUDA BUILD FAILED (results/build.log); building the CPU kernels only"
    env -u CUDA_HOME MAX_JOBS=${MAX_JOBS:-10} "$PYTHON" -m pip install --no-index --no-deps --no-build-isolation --target "$SITE" \
      --upgrade "$ROOT" >"$RESULTS/build-cpu.log" 2>&1 || { tail -30 "$RESULTS/build-cpu.log"; return 1; }
  fi
  grep -E "mrcnn-bench: building" "$RESULTS/build.log" || true
  cd /tmp
  "$PYTHON" -c "from mrcnn_bench.reference_impl import ops; print('mrcnn-bench ops:', ops.backend())"
}
export -f install_all
if [ "$INSTALL" = 1 ]; then
  if ! step install 300 60 bash -c install_all; then echo "== install failed: nothing else can run"; exit 1; fi
else
  echo "== install: not run (--rehearse without --install: $PYTHON as it is)"
  printf '{"step": "install", "status": "not run", "seconds": 0, "note": "rehearsal: %s as it is"}\n' "$PYTHON" >>"$STEPS"
  mkdir -p "$MMCV_DIR" && echo ok >"$MMCV_DIR/status"
fi
BENCH=("$PYTHON" -m mrcnn_bench.harness.cli)

# ------------------------------------------------------------------------------ 2: CUDA tests
step cuda-tests 150 30 "$PYTHON" -m pytest -q -p no:cacheprovider -m cuda -o addopts="" -rs \
  --junitxml="$RESULTS/cuda-tests.xml" tests/test_ops.py tests/test_cuda_graphs.py tests/test_reference_model.py

# ------------------------------------------------------------------------------ 3: fp32 and AMP
RUN=(run --config "$CONFIG" --device "$DEVICE" --gpus 1 --out "$RESULTS" --timeout "$TIMEOUT" "${THREADS[@]}"
     --ims-per-gpu 2 --set benchmark.iters="$ITERS" --set benchmark.warmup="$WARMUP"
     --set benchmark.window_end="$ITERS" "${SIZE[@]}")
step fp32 200 60 on_cpus "${BENCH[@]}" "${RUN[@]}" --impl reference,torchvision,detectron2 --run-id fp32 --set benchmark.dtype=fp32
step amp 200 60 on_cpus "${BENCH[@]}" "${RUN[@]}" --impl reference,torchvision,detectron2 --run-id amp --set benchmark.dtype="$AMP"

# ------------------------------------------------------------------------------ 4: report
mmdet_ready() {  # the background build's status file, or the time left, whichever comes first
  while [ ! -s "$MMCV_DIR/status" ] && [ $(( BUDGET - $(elapsed) )) -gt 130 ]; do sleep 5; done
  echo "mmcv build: $(cat "$MMCV_DIR/status" 2>/dev/null || echo 'not finished in time')"
  tail -3 "$RESULTS/mmcv-build.log" 2>/dev/null
  "$PYTHON" -c "import mmcv.ops, mmdet; print('mmdet', mmdet.__version__, 'mmcv', mmcv.__version__, mmcv.ops.get_compiling_cuda_version())"
}
report() {
  local runs=() card
  for r in fp32 amp; do [ -d "$RESULTS/$r" ] && runs+=("$RESULTS/$r"); done
  card=$(grep -o 'NVIDIA [^,]*' "$RESULTS/machine.txt" | head -1)
  "$PYTHON" -m mrcnn_bench.harness.cli report "${runs[@]}" --plots "$RESULTS/plots" --out "$RESULTS/report.md" \
    --title "mrcnn-bench device check: ${card:-$DEVICE}, iterations [$WARMUP, $ITERS), 2 images on 1 process"
}
export -f report mmdet_ready
export WARMUP ITERS
if have_runs; then step report 60 10 report; else skip report "no run to report"; fi

# ------------------------------------------------------------------------------ 5: mmdet
if step mmdet-wait 400 130 mmdet_ready; then
  step mmdet-fp32 120 60 on_cpus "${BENCH[@]}" "${RUN[@]}" --impl mmdet --run-id fp32 --set benchmark.dtype=fp32
  step mmdet-amp 120 60 on_cpus "${BENCH[@]}" "${RUN[@]}" --impl mmdet --run-id amp --set benchmark.dtype="$AMP"
  if have_runs; then step report-mmdet 60 10 report; else skip report-mmdet "no run to report"; fi
fi

# ------------------------------------------------------------------------------ 6, 7: levers, phases
LEVERS_CFG=(--config "$CONFIG" --device "$DEVICE" --set solver.ims_per_batch=2 "${SIZE[@]}" "${THREADS[@]}")
step levers 120 40 on_cpus sh -c '"$@" >"'"$RESULTS"'/levers.md"' _ "$PYTHON" benchmarks/levers.py "${LEVERS_CFG[@]}" "${LEVERS[@]}"
step phases 150 40 on_cpus sh -c '"$@" >"'"$RESULTS"'/phases.md"' _ "${BENCH[@]}" phases --impl reference,torchvision,detectron2 \
  --config "$CONFIG" --device "$DEVICE" --out "$RESULTS" --run-id phases --ims-per-gpu 2 "${THREADS[@]}" "${SIZE[@]}" \
  --set benchmark.iters="$PHASE_ITERS" --set benchmark.warmup="$PHASE_WARMUP" --set benchmark.window_end="$PHASE_ITERS"
step kernels 120 40 on_cpus sh -c '"$@" >"'"$RESULTS"'/kernels.md"' _ "$PYTHON" benchmarks/phases.py "${LEVERS_CFG[@]}" "${PHASES[@]}" \
  --impl reference,torchvision  # torch.profiler's top operators/kernels, for the two it builds

# ------------------------------------------------------------------------------ 8: the input pipeline
# Each framework's own training loader without the model (run --task data) at the canonical size, a worker
# sweep over the benchmark cores: batches/s, latency, start-up, memory, and the stage split at 0 workers.
data_step() {  # data_step SIZE/THREADS arguments...
  local impls=reference,torchvision,detectron2 bench=("$PYTHON" -m mrcnn_bench.harness.cli)
  [ "$(cat "$MMCV_DIR/status" 2>/dev/null)" = ok ] && impls=$impls,mmdet
  "${bench[@]}" run --task data --config "$CONFIG" --device "$DEVICE" --out "$RESULTS" --run-id data --impl "$impls" \
    --workers "$DATA_WORKERS" --timeout "$TIMEOUT" --set benchmark.iters="$DATA_ITERS" --set benchmark.warmup="$DATA_WARMUP" \
    --set benchmark.window_end="$DATA_ITERS" "$@" \
    && "${bench[@]}" report "$RESULTS/data" --plots "$RESULTS/plots-data" --out "$RESULTS/data.md"
}
export -f data_step
export CONFIG TIMEOUT DATA_WORKERS DATA_ITERS DATA_WARMUP
step data 120 50 on_cpus bash -c 'data_step "$@"' data "${SIZE[@]}" "${THREADS[@]}"

# ------------------------------------------------------------------------------ 9: traces
# The same steps of reference, torchvision and detectron2 (mmdet when its ops are built) under torch.profiler
# at 800/1333: the top kernels, the diff against the reference, the GPU's idle time (Holistic Trace Analysis).
trace_step() {  # trace_step SIZE/THREADS arguments...
  local impls=reference,torchvision,detectron2 bench=("$PYTHON" -m mrcnn_bench.harness.cli)
  [ "$(cat "$MMCV_DIR/status" 2>/dev/null)" = ok ] && impls=$impls,mmdet
  "${bench[@]}" trace --config "$CONFIG" --device "$DEVICE" --gpus 1 --ims-per-gpu 2 --out "$RESULTS" --run-id trace \
    --impl "$impls" --timeout "$TIMEOUT" --set benchmark.iters="$TRACE_ITERS" --set benchmark.warmup="$TRACE_WARMUP" \
    --set benchmark.window_end="$TRACE_ITERS" --set benchmark.trace_steps="$TRACE_STEPS" "$@" \
    && "${bench[@]}" report "$RESULTS/trace" --out "$RESULTS/trace.md"
}
export -f trace_step
export TRACE_ITERS TRACE_WARMUP TRACE_STEPS
step trace 150 60 on_cpus bash -c 'trace_step "$@"' trace "${SIZE[@]}" "${THREADS[@]}"
compgen -G "$RESULTS/trace/*/trace-*.json.gz" >/dev/null && pack_traces && pack

# ------------------------------------------------------------------------------ 10: inference
# Each framework's eval path per batch size at the canonical test size (800/1333), with the weights of
# cpu_infer's shared training (torchvision, 250 iterations at that size on the synthetic set) for all.
if [ "$REHEARSE" = 1 ]; then
  skip infer "rehearsal: the shared training takes minutes on a CPU (tests/test_inference.py runs the path)"
else
  step infer 150 60 on_cpus "${BENCH[@]}" run --task infer --config cpu_infer --device "$DEVICE" --gpus 1 --out "$RESULTS" \
    --run-id infer --impl reference,torchvision,detectron2 --batch-sizes 1,2,4,8 --timeout "$TIMEOUT" "${THREADS[@]}" \
    --set input.min_size_train=[800] --set input.max_size_train=1333 --set input.min_size_test=800 \
    --set input.max_size_test=1333 --set benchmark.infer_batches=20 "${SIZE[@]}"
  [ -d "$RESULTS/infer" ] && "${BENCH[@]}" report "$RESULTS/infer" --plots "$RESULTS/plots-infer" --out "$RESULTS/infer.md" && pack
fi

# ------------------------------------------------------------------------------ summary
"$PYTHON" - "$STEPS" "$RESULTS" "$OUT/summary.md" <<'EOF'
import json, sys
from pathlib import Path
steps, results, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
lines = ["| step | status | seconds |", "|---|---|---:|"]
for row in map(json.loads, steps.read_text().splitlines()):
    lines.append(f"| {row['step']} | {row['status']}{' (' + row['note'] + ')' if row.get('note') else ''} | {row['seconds']} |")
lines += ["", "| run | impl | status | img/s | MFU | J/img | GPU W | GPU util | noisy | why not ok |",
          "|---|---|---|---:|---:|---:|---:|---:|---|---|"]
for rec in sorted(results.glob("*/*/run.json")):
    r = json.loads(rec.read_text())
    s = r.get("summary") or {}
    t = s.get("telemetry") or {}
    ips, mfu, jpi, watts, util = s.get("images_per_s"), s.get("mfu"), t.get("j_per_image"), t.get("gpu_power_w_mean"), t.get("gpu_util_mean")
    lines.append(f"| {rec.parent.parent.name} | {r.get('impl')} | {r.get('status')} | {f'{ips:.3g}' if ips else '—'} | "
                 f"{f'{100 * mfu:.1f}%' if mfu else '—'} | {f'{jpi:.2f}' if jpi else '—'} | {f'{watts:.0f}' if watts else '—'} | "
                 f"{f'{util:.0f}%' if util is not None else '—'} | {'; '.join(r.get('noisy') or []) or '—'} | "
                 f"{(r.get('reason') or '')[:160]} |")
out.write_text("\n".join(lines) + "\n")
print(out.read_text())
EOF
pack
echo "== done in $(elapsed) s; results: $OUT"
