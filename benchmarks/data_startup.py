"""What COCO-size data costs a run before its first iteration, against the framework's own load.

    python benchmarks/data_startup.py --root /tmp/coco-size [--impl reference] [--out startup.json]

Makes (once, under --root) an annotation file of COCO train2017's size: 118,287 images and 860,001
instances (polygons of 3 to 15 points, boxes, areas; COCO's 80 category ids), every image a symbolic
link to one of a few real JPEGs of the size the json gives. Then, each in a fresh process:

- ``small``: ``mrcnn-bench run --impl IMPL --config cpu_small`` for two iterations on the embedded
  32-image synthetic set;
- ``coco_first``: the same on --root, its data-check verdict removed first (the first command on it);
- ``coco_later``: the same again (the verdict kept: what every later command costs);
- ``loader``: the framework's own training-set load alone (the reference's COCOInstances,
  torchvision's CocoDetection, detectron2's load_coco_json, mmdet's CocoDataset), its seconds and
  the resident memory it adds.

A run's seconds run from the command's start to the end of its first iteration; its memory is each
process's peak resident set (psutil, sampled every 0.2 s): ``mrcnn-bench``, ``torchrun``, the worker.
``over_loader_s`` is what the harness adds at COCO's size beyond the small set and the loader
(coco - small - loader; the goal is under 5 s), ``worker_over_loader_gib`` the same for the worker's
memory (the goal is at most 0). Each measurement runs ``--repeats`` times (2), the four in turn, and
the fastest of each is kept (its memory with it; every time is listed under ``all_seconds``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

IMAGES, INSTANCES = 118_287, 860_001
SIZES = [(640, 480), (640, 427), (480, 640), (640, 360)]  # COCO's commonest


def make_coco_size(root: Path, seed: int = 0) -> None:
    import numpy as np
    from mrcnn_bench.harness.data.datasets import COCO_CATEGORIES
    from PIL import Image

    if (root / "annotations" / "instances_train2017.json").is_file():
        return
    rng = np.random.default_rng(seed)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    images_dir, val_dir = root / "train2017", root / "val2017"
    images_dir.mkdir(exist_ok=True)
    val_dir.mkdir(exist_ok=True)
    sources = []
    for w, h in SIZES:
        path = root / f"source-{w}x{h}.jpg"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path, quality=90)
        sources.append(path)
    kinds = rng.integers(0, len(SIZES), IMAGES)
    images = []
    for i in range(IMAGES):
        w, h = SIZES[kinds[i]]
        name = f"{i + 1:012d}.jpg"
        os.symlink(sources[kinds[i]], images_dir / name)
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
    per_image = rng.multinomial(INSTANCES - IMAGES, np.full(IMAGES, 1 / IMAGES)) + 1  # at least one each
    annotations, ann_id = [], 0
    cats = [c for c, _ in COCO_CATEGORIES]
    for i, n in enumerate(per_image):
        w, h = SIZES[kinds[i]]
        for _ in range(n):
            ann_id += 1
            bw, bh = float(rng.uniform(4, w / 2)), float(rng.uniform(4, h / 2))
            x, y = float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh))
            points = int(rng.integers(3, 16))
            t = np.sort(rng.uniform(0, 2 * np.pi, points))
            poly = (
                np.stack([x + bw / 2 * (1 + np.cos(t)), y + bh / 2 * (1 + np.sin(t))], 1)
                .round(2)
                .reshape(-1)
                .tolist()
            )
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": i + 1,
                    "category_id": cats[int(rng.integers(0, 80))],
                    "segmentation": [poly],
                    "area": round(bw * bh * 0.7, 2),
                    "bbox": [x, y, bw, bh],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": c, "name": n, "supercategory": "thing"} for c, n in COCO_CATEGORIES]
    (root / "annotations" / "instances_train2017.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    val = images[:8]
    for im in val:
        os.symlink(images_dir / im["file_name"], val_dir / im["file_name"])
    (root / "annotations" / "instances_val2017.json").write_text(
        json.dumps(
            {
                "images": val,
                "annotations": [a for a in annotations if a["image_id"] <= 8],
                "categories": categories,
            }
        )
    )


def _role(proc) -> str:
    cmd = " ".join(proc.cmdline())
    if "torch.distributed.run" in cmd:
        return "torchrun"
    if "mrcnn_bench.harness.run.worker" in cmd:
        return "worker"
    if "mrcnn_bench.harness.cli" in cmd or "mrcnn-bench" in cmd:
        return "mrcnn-bench"
    return "other (" + proc.name() + ")"


LOADERS = {
    "reference": "from mrcnn_bench.reference_impl.data.coco import COCOInstances; COCOInstances(J, I, "
    'mask_format="polygon")',
    "torchvision": "from torchvision.datasets import CocoDetection; CocoDetection(I, J)",
    "detectron2": "from detectron2.data.datasets import load_coco_json; load_coco_json(J, I)",
    "mmdet": "from mmdet.datasets import CocoDataset; CocoDataset(ann_file=J, data_prefix=dict(img=I), "
    "pipeline=[]).full_init()",
}
# what the adapters do before importing the framework (Pillow 10's missing Image.LINEAR for detectron2)
SHIM = "from mrcnn_bench.adapters._common import pillow_linear_alias; pillow_linear_alias()"


def measure_loader(root: Path, impl: str) -> dict:
    """The framework's own load of the training split, alone in a fresh process (its imports done
    before the clock starts): seconds, and the resident memory it adds."""
    code = (
        f"import time, psutil; {SHIM}; {LOADERS[impl].split(';')[0]}\n"
        f"J, I = {str(root / 'annotations' / 'instances_train2017.json')!r}, {str(root / 'train2017')!r}\n"
        "p = psutil.Process(); r0 = p.memory_info().rss; t = time.perf_counter()\n"
        f"dataset = {LOADERS[impl].split(';', 1)[1].strip()}\n"
        "print(time.perf_counter() - t, (p.memory_info().rss - r0) / 2**30)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{impl}'s own load failed:\n{out.stderr[-3000:]}")
    seconds, gib = map(float, out.stdout.split()[-2:])
    return {"seconds": round(seconds, 1), "rss_added_gib": round(gib, 2)}


def forget_verdict(root: Path) -> None:
    """Remove the data check's kept verdict on --root's training split: the next command checks it."""
    import shutil

    from mrcnn_bench.harness.data.check import _stamp
    from mrcnn_bench.harness.data.datasets import default_cache_dir

    stamp = _stamp(root / "annotations" / "instances_train2017.json", root / "train2017", True)
    shutil.rmtree(default_cache_dir().parent / "checked" / stamp, ignore_errors=True)


def measure(root: Path | None, impl: str, out_dir: Path) -> dict:
    """Run two iterations (on --data root, or the embedded synthetic set); seconds to the first
    iteration, peak RSS (GiB) per role."""
    import psutil

    cmd = [
        sys.executable,
        "-m",
        "mrcnn_bench.harness.cli",
        "run",
        "--impl",
        impl,
        "--config",
        "cpu_small",
        *(["--data", str(root)] if root else []),
        "--set",
        "benchmark.iters=2",
        "--set",
        "benchmark.warmup=1",
        "--set",
        "benchmark.window_end=2",
        "--out",
        str(out_dir),
        "--run-id",
        "startup",
        "--force",
    ]
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    lines: list[str] = []
    first: list[float] = []

    def read():
        for line in proc.stderr:
            lines.append(line)
            if not first and re.search(r"iter 1/2 ", line):
                first.append(time.perf_counter() - start)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    peaks: dict[str, float] = {}
    top = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            for p in [top, *top.children(recursive=True)]:
                try:
                    role = _role(p)
                    peaks[role] = max(peaks.get(role, 0.0), p.memory_info().rss / 2**30)
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        time.sleep(0.2)
    reader.join(timeout=10)
    text = "".join(lines)
    if proc.returncode != 0:
        raise SystemExit(f"the run failed (exit {proc.returncode}):\n{text[-3000:]}")
    return {
        "seconds_to_first_iteration": round(first[0], 1) if first else None,
        "peak_rss_gib": {k: round(v, 2) for k, v in sorted(peaks.items())},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True, help="where the COCO-size set is (made if absent)")
    ap.add_argument("--impl", default="reference", choices=sorted(LOADERS))
    ap.add_argument("--out", type=Path, default=None, help="write the result here (JSON)")
    ap.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="each measurement this many times, in turn; the fastest is kept",
    )
    args = ap.parse_args(argv)
    t = time.perf_counter()
    make_coco_size(args.root)
    print(f"data: {args.root} ready in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    result = {"impl": args.impl, "load_average_before": [round(x, 2) for x in os.getloadavg()]}
    runs: dict[str, list[dict]] = {"loader": [], "small": [], "coco_first": [], "coco_later": []}
    for k in range(args.repeats):  # in turn, so that a drift of the machine's speed falls on each alike
        runs["loader"].append(measure_loader(args.root, args.impl))
        runs["small"].append(measure(None, args.impl, args.root / "runs-small"))
        forget_verdict(args.root)
        runs["coco_first"].append(measure(args.root, args.impl, args.root / "runs"))
        runs["coco_later"].append(measure(args.root, args.impl, args.root / "runs"))
        print(
            f"round {k + 1}/{args.repeats}: " + json.dumps({name: r[-1] for name, r in runs.items()}),
            file=sys.stderr,
        )
    for name, rs in runs.items():
        key = "seconds" if name == "loader" else "seconds_to_first_iteration"
        result[name] = dict(min(rs, key=lambda r: r[key]), all_seconds=[r[key] for r in rs])
    small, loader = result["small"], result["loader"]
    for run in ("coco_first", "coco_later"):
        r = result[run]
        r["over_loader_s"] = round(
            r["seconds_to_first_iteration"] - small["seconds_to_first_iteration"] - loader["seconds"], 1
        )
        r["worker_over_loader_gib"] = round(
            r["peak_rss_gib"]["worker"] - small["peak_rss_gib"]["worker"] - loader["rss_added_gib"], 2
        )
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
