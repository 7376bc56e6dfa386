"""What COCO-size data costs a run before its first iteration: time and peak memory per process.

    python benchmarks/data_startup.py --root /tmp/coco-size [--impl reference] [--out startup.json]

Makes (once, under --root) an annotation file of COCO train2017's size: 118,287 images and 860,001
instances (polygons of 6 to 30 points, boxes, areas; COCO's 80 category ids), every image a symbolic
link to one of a few real JPEGs of the size the json gives; then runs ``mrcnn-bench run --impl IMPL
--data ROOT`` for two iterations and, sampling the process tree every 0.2 s (psutil), reports the
seconds from the command's start to the first iteration's end, and each process's peak resident memory:
``mrcnn-bench``, ``torchrun`` and the worker. Run it at two commits to compare (README, "When things go
wrong").
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

IMAGES, INSTANCES = 118_287, 860_001
SIZES = [(640, 480), (640, 427), (480, 640), (640, 360)]  # COCO's commonest


def make_coco_size(root: Path, seed: int = 0) -> None:
    import numpy as np
    from PIL import Image

    from mrcnn_bench.harness.data import COCO_CATEGORIES

    if (root / "annotations" / "instances_train2017.json").is_file():
        return
    rng = np.random.default_rng(seed)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    images_dir, val_dir = root / "train2017", root / "val2017"
    images_dir.mkdir(exist_ok=True)
    val_dir.mkdir(exist_ok=True)
    sources = []
    for k, (w, h) in enumerate(SIZES):
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
            poly = np.stack([x + bw / 2 * (1 + np.cos(t)), y + bh / 2 * (1 + np.sin(t))], 1).round(2).reshape(-1).tolist()
            annotations.append({"id": ann_id, "image_id": i + 1, "category_id": cats[int(rng.integers(0, 80))],
                                "segmentation": [poly], "area": round(bw * bh * 0.7, 2), "bbox": [x, y, bw, bh], "iscrowd": 0})
    categories = [{"id": c, "name": n, "supercategory": "thing"} for c, n in COCO_CATEGORIES]
    (root / "annotations" / "instances_train2017.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    val = images[:8]
    for im in val:
        os.symlink(images_dir / im["file_name"], val_dir / im["file_name"])
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(
        {"images": val, "annotations": [a for a in annotations if a["image_id"] <= 8], "categories": categories}))


def _role(proc) -> str:
    cmd = " ".join(proc.cmdline())
    if "torch.distributed.run" in cmd:
        return "torchrun"
    if "mrcnn_bench.harness.worker" in cmd:
        return "worker"
    if "mrcnn_bench.harness.cli" in cmd or "mrcnn-bench" in cmd:
        return "mrcnn-bench"
    return "other (" + proc.name() + ")"


def measure(root: Path, impl: str, out_dir: Path) -> dict:
    """Run two iterations on --data root; seconds to the first iteration, peak RSS (GiB) per role."""
    import psutil

    cmd = [sys.executable, "-m", "mrcnn_bench.harness.cli", "run", "--impl", impl, "--data", str(root), "--config", "cpu_small",
           "--set", "benchmark.iters=2", "--set", "benchmark.warmup=1", "--set", "benchmark.window_end=2",
           "--out", str(out_dir), "--run-id", "startup", "--force"]
    import threading

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
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
    return {"impl": impl, "seconds_to_first_iteration": round(first[0], 1) if first else None,
            "peak_rss_gib": {k: round(v, 2) for k, v in sorted(peaks.items())}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True, help="where the COCO-size set is (made if absent)")
    ap.add_argument("--impl", default="reference")
    ap.add_argument("--out", type=Path, default=None, help="write the result here (JSON)")
    args = ap.parse_args(argv)
    t = time.perf_counter()
    make_coco_size(args.root)
    print(f"data: {args.root} ready in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    result = measure(args.root, args.impl, args.root / "runs")
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
