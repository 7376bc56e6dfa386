"""Where a training iteration's time goes, per phase, for the reference and torchvision, in one run.

    python benchmarks/phases.py [--config cpu_small] [--iters 12] [--warmup 3] [--threads N] [--profile N]
                                [--set KEY=VALUE ...]

Both models have the same parts (input transform, backbone+FPN, RPN, RoI heads); forward hooks time each
part's forward (after a device synchronize), and the loop times data loading, the backward pass and the
optimizer step; inside the RPN and the RoI heads, hooks on the network parts (RPN head, RoIAlign poolers,
box and mask heads) split them from the rest (matching, sampling, targets, losses). torch.profiler's
per-operator table (--profile N, over N further iterations) gives the detail inside a phase.
Output: milliseconds per iteration (median over the timed iterations) per phase and implementation.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict

import torch
from mrcnn_bench.adapters import get_adapter
from mrcnn_bench.harness.config.schema import load_config, parse_override, resolve_config_path
from mrcnn_bench.harness.data.datasets import resolve_data
from mrcnn_bench.harness.run.init_weights import with_shared_init

PARTS = {
    "reference": ["preprocess", "backbone", "rpn", "roi_heads"],
    "torchvision": ["transform", "backbone", "rpn", "roi_heads"],
}
PHASE_NAMES = [
    "data",
    "transform",
    "backbone fwd",
    "rpn fwd+loss",
    "roi heads fwd+loss",
    "backward",
    "optimizer",
]
# Inside the RPN and the RoI heads: the network parts (forward), timed by their own hooks; the rest of
# the phase (anchors, matching, sampling, targets, proposals, NMS, losses) is the phase less them.
INNER = {
    "reference": {
        "rpn head convs": ["rpn.head"],
        "RoIAlign (box + mask)": ["roi_heads.box_pooler", "roi_heads.mask_pooler"],
        "box + mask heads": ["roi_heads.box_head", "roi_heads.mask_head"],
    },
    "torchvision": {
        "rpn head convs": ["rpn.head"],
        "RoIAlign (box + mask)": ["roi_heads.box_roi_pool", "roi_heads.mask_roi_pool"],
        "box + mask heads": [
            "roi_heads.box_head",
            "roi_heads.box_predictor",
            "roi_heads.mask_head",
            "roi_heads.mask_predictor",
        ],
    },
}
INNER_NAMES = [
    "rpn head convs",
    "rpn: anchors, matching, sampling, proposals, loss",
    "RoIAlign (box + mask)",
    "box + mask heads",
    "roi heads: matching, sampling, targets, loss",
]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _next_batch(it, device):
    images, targets = next(it)
    return [im.to(device) for im in images], [
        {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets
    ]


def _attach(model, names: dict[str, str], device, acc):
    """Forward pre/post hooks adding the time of each module (dotted path -> phase name) in this
    iteration to ``acc[phase]`` (a sum: a phase may span several modules, or a module run twice)."""
    starts = {}

    def pre(part):
        def hook(module, args):  # returns None: the arguments pass through unchanged
            _sync(device)
            starts[part] = time.perf_counter()

        return hook

    def post(part):
        def hook(module, args, output):
            _sync(device)
            acc[names[part]] += time.perf_counter() - starts[part]

        return hook

    for part in names:
        module = model.get_submodule(part)
        module.register_forward_pre_hook(pre(part))
        module.register_forward_hook(post(part))


def build(impl: str, cfg, paths, device):
    """(model, loader) as a run builds them: the shared initial weights, the run's data order."""
    from mrcnn_bench.adapters.base import DistInfo

    adapter, dist = get_adapter(impl), DistInfo(device=str(device))
    if impl == "reference":
        _, trainer = adapter.build_trainer(cfg, paths, dist)
        return trainer.model, trainer.data_loader
    native = adapter.translate(cfg, paths)
    return adapter.build_model(native).to(device), adapter.build_loader(native, dist)


def run(impl, cfg, paths, device, iters, warmup):
    torch.manual_seed(0)
    model, loader = build(impl, cfg, paths, device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9)
    times, acc = defaultdict(list), defaultdict(float)
    names = dict(zip(PARTS[impl], PHASE_NAMES[1:5]))
    names.update({path: inner for inner, paths in INNER[impl].items() for path in paths})
    _attach(model, names, device, acc)
    it = iter(loader)
    totals = []
    for _ in range(iters):
        t0 = time.perf_counter()
        images, targets = _next_batch(it, device)
        t1 = time.perf_counter()
        loss = sum(model(images, targets).values())
        _sync(device)
        t2 = time.perf_counter()
        loss.backward()
        _sync(device)
        t3 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        t4 = time.perf_counter()
        for name, seconds in acc.items():
            times[name].append(seconds)
        acc.clear()
        times["rpn: anchors, matching, sampling, proposals, loss"].append(
            times["rpn fwd+loss"][-1] - times["rpn head convs"][-1]
        )
        times["roi heads: matching, sampling, targets, loss"].append(
            times["roi heads fwd+loss"][-1]
            - times["RoIAlign (box + mask)"][-1]
            - times["box + mask heads"][-1]
        )
        times["data"].append(t1 - t0)
        times["backward"].append(t3 - t2)
        times["optimizer"].append(t4 - t3)
        totals.append(t4 - t0)
    out = {name: 1e3 * statistics.median(v[warmup:]) for name, v in times.items()}
    out["total"] = 1e3 * statistics.median(totals[warmup:])
    return out


def profile(impl, cfg, paths, device, iters: int, rows: int = 20) -> str:
    """torch.profiler's per-operator table (self time) over ``iters`` training iterations after one
    untimed one; run apart from the timed phases, whose numbers the profiler's overhead would change."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.manual_seed(0)
    model, loader = build(impl, cfg, paths, device)
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    it = iter(loader)

    def step():
        images, targets = _next_batch(it, device)
        sum(model(images, targets).values()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(iters):
            step()
        _sync(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cpu_small")
    parser.add_argument("--iters", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--impl", default="reference,torchvision")
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="also print torch.profiler's operator table over N iterations per implementation",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = dict(parse_override(o) for o in args.overrides)
    overrides.setdefault("benchmark.gpus", 1)
    overrides.setdefault("benchmark.num_workers", 0)
    cfg = load_config(resolve_config_path(args.config), overrides)
    paths, _ = resolve_data(cfg.data)
    cfg, _ = with_shared_init(cfg, paths)  # every implementation from the same weights: the same work
    device = torch.device(args.device)
    results = {impl: run(impl, cfg, paths, device, args.iters, args.warmup) for impl in args.impl.split(",")}
    impls = list(results)
    print(
        f"ms per iteration (median of {args.iters - args.warmup}), {cfg.name}, {cfg.ims_per_process_step} "
        "images, "
        f"{torch.get_num_threads()} threads, {device}"
    )
    print("| phase | " + " | ".join(impls) + " |")
    print("|---|" + "---:|" * len(impls))
    for name in PHASE_NAMES + ["total"]:
        print(f"| {name} | " + " | ".join(f"{results[i].get(name, float('nan')):.1f}" for i in impls) + " |")
    print("\ninside the RPN and the RoI heads (forward):")
    print("| part | " + " | ".join(impls) + " |")
    print("|---|" + "---:|" * len(impls))
    for name in INNER_NAMES:
        print(f"| {name} | " + " | ".join(f"{results[i].get(name, float('nan')):.1f}" for i in impls) + " |")
    for impl in impls if args.profile else []:
        print(f"\ntorch.profiler, {impl}, {args.profile} iterations, operators by self time:")
        print(profile(impl, cfg, paths, device, args.profile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
