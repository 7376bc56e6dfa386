"""The four eval paths with the same weights: does each framework's inference score them alike?

    python benchmarks/eval_paths.py [--config cpu_infer] [--out results/baselines/eval-paths/eval-paths.json]

The weights are those of the config's shared training (``benchmark.shared_training_iters``: torchvision's
model trained from the shared initialisation, cached; trained now if not); every installed implementation
loads them and its own eval path (``Adapter.predictor``) runs over the val split, which pycocotools scores.
With one set of weights the detections per image and AP50 must agree (docs/inference.md);
AP over IoU 0.50:0.95 is where RoIAlign's alignment shows (torchvision's is unaligned, the others' aligned).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="cpu_infer")
    ap.add_argument("--out", type=Path, default=Path("results/baselines/eval-paths/eval-paths.json"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch
    from mrcnn_bench.adapters import get_adapter
    from mrcnn_bench.adapters.base import DistInfo
    from mrcnn_bench.harness.config.schema import load_config, resolve_config_path
    from mrcnn_bench.harness.data.datasets import resolve_data
    from mrcnn_bench.harness.engine.inference import evaluate
    from mrcnn_bench.harness.records.results import atomic_write_json
    from mrcnn_bench.harness.run.init_weights import with_shared_init
    from mrcnn_bench.harness.run.shared_training import trained_weights
    from mrcnn_bench.harness.tasks.eval import AP_BAND, ap50_offsets

    torch.set_num_threads(args.threads)
    cfg = load_config(resolve_config_path(args.config))
    paths, _ = resolve_data(cfg.data)
    cfg, _ = with_shared_init(cfg, paths)
    weights = trained_weights(cfg, paths)
    cfg = cfg.with_overrides({"model.init_weights": str(weights)})
    results = {}
    for name in ("reference", "torchvision", "detectron2", "mmdet"):
        adapter = get_adapter(name)
        if not adapter.available()[0]:
            print(f"{name}: not installed, left out", file=sys.stderr)
            continue
        results[name] = evaluate(adapter.predictor(cfg, paths, DistInfo()), paths.val_json, paths.val_images)
    offsets = dict(zip(results, ap50_offsets(list(results.values()))))
    atomic_write_json(
        args.out,
        {
            "config": cfg.name,
            "weights": weights.name,
            "val_json": str(paths.val_json),
            "ap50_band": AP_BAND,
            "results": results,
            "ap50_offset": offsets,
        },
    )
    print("| implementation | bbox AP / AP50 | segm AP / AP50 | detections/img | AP50 off the median |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {100 * r['bbox']['AP']:.1f} / {100 * r['bbox']['AP50']:.1f} | "
            f"{100 * r['segm']['AP']:.1f} / "
            f"{100 * r['segm']['AP50']:.1f} | {r['detections_per_image']:.1f} | {offsets[name]:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
