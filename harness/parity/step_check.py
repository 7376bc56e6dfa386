"""``mrcnn-bench parity --check-step``: one training step of every implementation from the shared initial
weights on the same batch, compared term by term with the reference's.

What makes the step the same in all four:

- **the batch**: the first batch of the run's data order, resized here once by the canonical rule
  (short side ``min_size_train[0]``, long side at most ``max_size_train``, sides rounded) and written as a
  COCO set of its own (PNG, annotations scaled alike), so every framework's own loader reads it and its
  own resize is the identity (scale 1): no framework's interpolation enters the comparison;
- **the sampling**: the RPN's 256 anchors per image are drawn by one fixed permutation in all four (the
  step task fixes ``torch.randperm``; the candidates are listed in the same order in all four), and the
  RoI heads take every candidate (``batch_size_per_image`` above any count, ``positive_fraction`` 1), so
  no draw decides which proposals are trained on;
- **the rest as configured**: the config's model, losses, optimizer (lr of iteration 0, warm-up
  included), flip off, one process, float32.

Each implementation's step runs through ``mrcnn-bench run --task step`` (its own interpreter, its own
loop); ``step.pt`` holds its loss terms, every trainable parameter's gradient and the lr, weight decay and
momentum its optimizer applied, in torchvision's names. Compared with the reference's: the five loss terms,
the gradients per module (stem, res2-res5, FPN, RPN head, box head, mask head), the optimizer's groups per
parameter, the frozen parameters, and the work of the step (RPN positives, proposals, RoIs, positive RoIs).
The declared divergences of an implementation (``benchmark.allow_divergent``) excuse the terms and modules
they reach and no others; with torchvision present, the reference runs a second time with torchvision's
values of those keys and must then equal torchvision too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

#: the distance that is float rounding at the least: of a loss term |difference| / |reference| (float32
#: sums in other orders: up to 1.1e-5 measured, on roi_box, the smallest term), of a module's gradients
#: ||difference|| / ||reference|| over all its parameters (the reference's FrozenBN folded into its
#: convolutions, reductions of 1e5-1e6 terms in other orders)
LOSS_RTOL = 5e-5
GRAD_RTOL = 1e-4
#: and at the most what rounding does to the reference itself: a randomly initialised ResNet-50 with frozen
#: statistics is chaotic (its gradients are "shattered": rounding the input or the folded weights otherwise
#: moves res3-res5's gradients by 0.2-2 % of their norm, the FPN's and the heads' by 0.01-0.06 %, single
#: elements by up to 20 %), so the check runs the reference a second time rounded otherwise (its input moved
#: by one unit in the last place, its FrozenBN folded into the convolutions or not, the other way from the
#: config), and each term and module may differ by up to FLOOR_FACTOR times what that moved
FLOOR_FACTOR = 3.0
#: the optimizer's update against SGD's first step, -lr (grad + weight_decay * value), beyond float32
#: rounding of the parameter: a framework adding anything (clipping, another decay) shows here
UPDATE_RTOL = 1e-3
#: the RoI heads take every candidate: more than proposals + ground truth of any image
EVERY_CANDIDATE = 1_000_000

MODULES = {  # torchvision's parameter-name prefixes of each module compared
    "stem": ("backbone.body.conv1.", "backbone.body.bn1."),
    "res2": ("backbone.body.layer1.",),
    "res3": ("backbone.body.layer2.",),
    "res4": ("backbone.body.layer3.",),
    "res5": ("backbone.body.layer4.",),
    "FPN": ("backbone.fpn.",),
    "RPN head": ("rpn.head.",),
    "box head": ("roi_heads.box_head.", "roi_heads.box_predictor."),
    "mask head": ("roi_heads.mask_head.", "roi_heads.mask_predictor."),
}
LOSSES = ("rpn_cls", "rpn_box", "roi_cls", "roi_box", "mask")
# what a declared divergence (a canonical key a framework runs otherwise) reaches: its loss terms; the
# modules follow (a head from its terms, the FPN and the backbone from any term)
REACHES = {
    "model.rpn.smooth_l1_beta": {"rpn_box"},
    "model.roi_heads.smooth_l1_beta": {"roi_box"},
    "model.roi_heads.pooler_aligned": {"roi_cls", "roi_box", "mask"},
    "model.roi_heads.pooler_sampling_ratio": {"roi_cls", "roi_box", "mask"},
    "model.roi_heads.mask_target": {"mask"},
    "model.rpn.min_proposal_size": {"roi_cls", "roi_box", "mask"},
}
HEAD_TERMS = {"RPN head": {"rpn_cls", "rpn_box"}, "box head": {"roi_cls", "roi_box"}, "mask head": {"mask"}}
WORK = ("rpn_positives", "proposals", "rois", "positives")


def step_overrides(data_root: Path) -> dict:
    """The config's changes for the check: one float32 step on one process, no flip, every RoI candidate
    taken, the check's own data set."""
    return {
        "benchmark.task": "step",
        "benchmark.iters": 1,
        "benchmark.warmup": 0,
        "benchmark.window_end": 1,
        "benchmark.gpus": 1,
        "benchmark.grad_accum": 1,
        "benchmark.dtype": "fp32",
        "benchmark.num_workers": 0,
        "input.horizontal_flip_prob": 0.0,
        "model.roi_heads.batch_size_per_image": EVERY_CANDIDATE,
        "model.roi_heads.positive_fraction": 1.0,
        "data.root": str(data_root),
        "data.train_split": "train2017",
    }


def write_step_batch(cfg, train_json: Path, image_dir: Path, out: Path) -> list[int]:
    """The first global batch of the run's data order as a COCO set under ``out`` (annotations/
    instances_train2017.json, train2017/*.png): each image resized as the canonical rule resizes it
    for training (bilinear, on 0-255 floats, rounded to 8 bits), its boxes, polygons, RLE masks and areas
    scaled alike. Returns the image ids, in the batch's order."""
    import torch.nn.functional as F
    from PIL import Image

    from .compare import first_batch

    ids, coco, pixels = first_batch(cfg, train_json, image_dir)
    images = {im["id"]: im for im in coco["images"]}
    (out / "train2017").mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    new_images, new_annotations = [], []
    for image_id, x in zip(ids, pixels):
        entry = images[image_id]
        h, w = x.shape[-2:]
        scale = min(cfg.input.min_size_train[0] / min(h, w), cfg.input.max_size_train / max(h, w))
        size = (int(h * scale + 0.5), int(w * scale + 0.5))
        x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0].round().clamp(0, 255)
        name = f"{image_id:012d}.png"
        Image.fromarray(x.byte().permute(1, 2, 0).numpy()).save(out / "train2017" / name)
        new_images.append(dict(entry, file_name=name, height=size[0], width=size[1]))
        sx, sy = size[1] / w, size[0] / h
        new_annotations += [
            _scaled(a, sx, sy, size) for a in coco["annotations"] if a["image_id"] == image_id
        ]
    text = json.dumps(
        {"images": new_images, "annotations": new_annotations, "categories": coco["categories"]}
    )
    (out / "annotations" / "instances_train2017.json").write_text(text)
    return ids


def _scaled(ann: dict, sx: float, sy: float, size: tuple[int, int]) -> dict:
    """An annotation of an image resized by (sx, sy) to ``size`` (h, w)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from pycocotools import mask as mask_utils

    x, y, w, h = ann["bbox"]
    out = dict(ann, bbox=[x * sx, y * sy, w * sx, h * sy], area=ann.get("area", w * h) * sx * sy)
    seg = ann.get("segmentation")
    if isinstance(seg, list):
        out["segmentation"] = [[v * (sx if i % 2 == 0 else sy) for i, v in enumerate(poly)] for poly in seg]
    elif isinstance(seg, dict):  # RLE (a crowd region): the mask resized as masks are (nearest)
        rle = mask_utils.frPyObjects(seg, *seg["size"]) if isinstance(seg["counts"], list) else seg
        m = torch.from_numpy(mask_utils.decode(rle).astype(np.float32))
        m = F.interpolate(m[None, None], size=size, mode="nearest")[0, 0].to(torch.uint8).numpy()
        encoded = mask_utils.encode(np.asfortranarray(m))
        out["segmentation"] = {"size": list(encoded["size"]), "counts": encoded["counts"].decode("ascii")}
    return out


def module_of(name: str) -> str | None:
    return next((m for m, prefixes in MODULES.items() if name.startswith(prefixes)), None)


def _relative(grads: dict, ref: dict, names: list[str]) -> float:
    """||grads - ref|| / ||ref|| over the parameters ``names`` (0 when both are 0)."""
    num = sum(float(((grads[n].double() - ref[n].double()) ** 2).sum()) for n in names)
    den = sum(float((ref[n].double() ** 2).sum()) for n in names)
    return (num / den) ** 0.5 if den else (0.0 if num == 0 else float("inf"))


def excused(declared: set[str]) -> tuple[set[str], set[str]]:
    """(loss terms, modules) that the declared divergent keys reach."""
    terms = set().union(*(REACHES.get(k, set(LOSSES)) for k in declared)) if declared else set()
    modules = {m for m, t in HEAD_TERMS.items() if t & terms}
    if terms:
        modules |= {"stem", "res2", "res3", "res4", "res5", "FPN"}
    return terms, modules


def floor_distances(step: dict, moved: dict) -> dict:
    """How far a step moved when its input moved by rounding: {loss term or module: distance}, as
    :func:`compare_steps` measures the implementations' distances."""
    out = {term: _loss_distance(moved["losses"].get(term), step["losses"].get(term)) for term in LOSSES}
    for module in MODULES:
        names = [n for n in step["grads"] if module_of(n) == module and n in moved["grads"]]
        out[module] = _relative(moved["grads"], step["grads"], names) if names else 0.0
    return out


def compare_steps(
    steps: dict[str, dict], work: dict[str, dict], base: str, declared: dict[str, set[str]], floor: dict
):
    """(losses table, gradients table, problems, notes) of every step against ``base``'s. ``steps``:
    name -> step.pt's record; ``work``: name -> iteration 0's counters; ``declared``: name -> the
    canonical keys it runs otherwise (excusing what they reach, nothing else); ``floor``: the base's
    noise floor (:func:`floor_distances`; each term's and module's tolerance: FLOOR_FACTOR x it)."""
    problems, notes = [], []
    others = {name: step for name, step in steps.items() if name != base}
    losses = _loss_rows(others, steps[base], base, declared, floor, problems)
    grads = _grad_rows(others, steps[base], base, declared, floor, problems)
    for name, step in others.items():
        problems += _optimizer_problems(name, step, steps[base], base)
        for key in WORK:
            theirs, ours = work.get(name, {}).get(key), work.get(base, {}).get(key)
            if theirs != ours:
                line = f"{name}: {key} {theirs} at the step, {base}'s {ours}"
                (notes if declared.get(name) else problems).append(
                    line + (" (its declared divergences reach it)" if declared.get(name) else "")
                )
    if steps[base]["update_error"] > UPDATE_RTOL:
        problems.append(f"{base}: its optimizer's update is {steps[base]['update_error']:.1e} from SGD's")
    return losses, grads, problems, notes


def _loss_rows(
    others: dict, ref: dict, base: str, declared: dict, floor: dict, problems: list
) -> pd.DataFrame:
    rows = []
    for term in LOSSES:
        want = ref["losses"].get(term)
        tol = max(LOSS_RTOL, FLOOR_FACTOR * floor[term])
        row = {"loss": term, base: _fmt(want), "floor": f"{floor[term]:.1e}"}
        for name, step in others.items():
            terms, _ = excused(declared.get(name, set()))
            got = step["losses"].get(term)
            if got is None or want is None:
                row[name] = "missing"
                problems.append(
                    f"{name}: no {term} loss (its loss dict: {', '.join(step.get('raw_losses', {}))})"
                )
                continue
            rel = _loss_distance(got, want)
            row[name] = f"{got:.6g} ({rel:.1e})" + _mark(rel, tol, term in terms)
            if rel > tol and term not in terms:
                problems.append(
                    f"{name}: {term} loss {got:.7g}, {base}'s {want:.7g} ({rel:.1e} apart, tolerance "
                    f"{tol:.1e})"
                )
        rows.append(row)
    return pd.DataFrame(rows)


def _grad_rows(
    others: dict, ref: dict, base: str, declared: dict, floor: dict, problems: list
) -> pd.DataFrame:
    rows = []
    for module in MODULES:
        names = sorted(n for n in ref["grads"] if module_of(n) == module)
        frozen = sum(1 for n in ref["frozen"] if module_of(n) == module)
        tol = max(GRAD_RTOL, FLOOR_FACTOR * floor[module])
        row = {
            "module": module,
            f"{base} ‖grad‖": _norm(ref["grads"], names) if names else f"frozen ({frozen})",
            "floor": f"{floor[module]:.1e}" if names else "-",
        }
        for name, step in others.items():
            _, modules = excused(declared.get(name, set()))
            theirs = sorted(n for n in step["grads"] if module_of(n) == module)
            if theirs != names:
                row[name] = f"other parameters ({len(theirs)} with a gradient, {base}: {len(names)})"
                problems.append(
                    f"{name}: {module}: {len(theirs)} parameters with a gradient, {base}'s {len(names)} "
                    f"(frozen or trainable otherwise: {sorted(set(theirs) ^ set(names))[:3]})"
                )
                continue
            if not names:
                row[name] = "frozen"
                continue
            rel = _relative(step["grads"], ref["grads"], names)
            row[name] = f"{rel:.1e}" + _mark(rel, tol, module in modules)
            if rel > tol and module not in modules:
                worst = max(names, key=lambda n: _relative(step["grads"], ref["grads"], [n]))
                problems.append(
                    f"{name}: {module} gradients {rel:.1e} of their norm from {base}'s (the most: {worst}; "
                    f"tolerance {tol:.1e})"
                )
        rows.append(row)
    return pd.DataFrame(rows)


def _optimizer_problems(name: str, step: dict, ref: dict, base: str) -> list[str]:
    """The parameters ``step``'s optimizer treats otherwise than ``ref``'s (lr, weight decay, momentum), and
    an update that is not SGD's."""
    problems = []
    differ = [
        n
        for n in ref["groups"]
        if n in step["groups"] and not _same_group(step["groups"][n], ref["groups"][n])
    ]
    if differ:
        n = differ[0]
        problems.append(
            f"{name}: the optimizer treats {len(differ)} parameter(s) otherwise, e.g. {n}: (lr, weight "
            "decay, "
            f"momentum) {step['groups'][n]}, {base}'s {ref['groups'][n]}"
        )
    if step["update_error"] > UPDATE_RTOL:
        problems.append(
            f"{name}: its optimizer's update is {step['update_error']:.1e} from SGD's -lr (grad + weight "
            "decay x value)"
        )
    return problems


def _loss_distance(got, want) -> float:
    if got is None or want is None:
        return 0.0
    return abs(got - want) / max(abs(want), 1e-12)


def work_table(work: dict[str, dict]) -> pd.DataFrame:
    return pd.DataFrame([{"implementation": name, **{k: w.get(k) for k in WORK}} for name, w in work.items()])


def _same_group(a, b) -> bool:
    return all(abs(x - y) <= 1e-9 * max(1.0, abs(x), abs(y)) for x, y in zip(a, b))


def _norm(grads: dict, names: list[str]) -> str:
    import torch

    return f"{float(torch.sqrt(sum((grads[n].double() ** 2).sum() for n in names))):.4g}"


def _fmt(v) -> str:
    return "missing" if v is None else f"{v:.6g}"


def _mark(rel: float, tol: float, declared: bool) -> str:
    if rel <= tol:
        return ""
    return " (declared)" if declared else " ✗"
