"""Helpers shared by adapters (not an adapter itself: the registry skips this module)."""

from __future__ import annotations

# info.* parity values several adapters report: one spelling, so the table compares them equal
PYTORCH_STYLE = "pytorch (stride in the 3x3 conv)"
CAFFE_STYLE = "caffe (stride in the 1x1 conv)"


# info.resize_interpolation: how the resized pixels are computed. The same sizes, but not the same pixels:
# on upscaled images the RoI positives of iteration 0 differ (docs/methodology.md, "Same work")
FLOAT_BILINEAR = "bilinear on float pixels (torch interpolate)"


def rule_value(cfg, key: str):
    """The canonical config's value at a dotted key (``model.rpn.low_quality_min_iou``)."""
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def unsupported(cfg, rules: dict) -> dict[str, str]:
    """``rules``: canonical key -> (does the framework support this value?, what it does instead). The
    keys whose value in ``cfg`` it does not support -> that sentence (``Adapter.divergences``)."""
    return {key: why for key, (supports, why) in rules.items() if not supports(rule_value(cfg, key))}


def rule_notes(rules: dict) -> dict[str, str]:
    """The parity table's notes for the keys of ``rules``: shown where the effective value differs."""
    return {key: why for key, (_, why) in rules.items()}


def pillow_linear_alias() -> bool:
    """Pillow >= 10 removed ``Image.LINEAR``, a default argument in detectron2 v0.6's transforms: alias
    BILINEAR (the same filter). Needed by detectron2, and by mmdet when detectron2 is installed beside it
    (mmdet's d2_wrapper imports detectron2). True when the alias was added."""
    from PIL import Image

    if hasattr(Image, "LINEAR"):
        return False
    Image.LINEAR = Image.BILINEAR
    return True


def num_classes(cfg, data) -> int:
    """Foreground classes: the config's, else the training set's categories, else COCO's 80."""
    from mrcnn_bench.harness.data.datasets import num_classes as of_run

    return of_run(cfg, data)


def data_spec(cfg, data) -> dict:
    """How an implementation's own loader reads the training set (for loops written here)."""
    return dict(
        train_json=str(data.train_json) if data else None,
        train_images=str(data.train_images) if data else None,
        horizontal_flip_prob=cfg.input.horizontal_flip_prob,
        filter_empty=cfg.input.filter_empty_annotations,
        batch_size_per_process=cfg.ims_per_process_step,
        num_workers=cfg.benchmark.num_workers,
        # the run's one data order (harness.data_order), less the process's place in it
        order=dict(
            per_process=cfg.ims_per_process_step,
            seed=cfg.benchmark.seed,
            group_by_aspect=cfg.input.aspect_ratio_grouping,
        ),
    )


def ordered_batches(data: dict, dist, image_ids: list[int], source: str, flat: bool = False):
    """A batch sampler (or, ``flat``, a sampler) over a dataset whose items are ``image_ids``, following
    this process's share of the run's data order (``data`` as :func:`data_spec` makes it)."""
    from mrcnn_bench.harness.data.order import OrderedBatchSampler, indices_for

    order = dict(data["order"], train_json=data["train_json"], rank=dist.rank, world_size=dist.world_size)
    return OrderedBatchSampler(order, indices_for(image_ids, source), source, flat=flat)


def train_spec(cfg) -> dict:
    """The benchmark's switches a training loop written here honours."""
    b = cfg.benchmark
    return dict(
        dtype=b.dtype, channels_last=b.channels_last, grad_accum=b.grad_accum, iters=b.iters, seed=b.seed
    )


def count_work(timer, module, counter: str, count) -> None:
    """Count ``counter`` (proposals, rois or positives) for the harness timer from what ``module``
    returns in training: ``count(output)``, read from shapes only, so no device synchronisation."""

    def hook(mod, args, output):
        if mod.training:
            timer.count(**{counter: count(output)})

    module.register_forward_hook(hook)


def count_result(timer, owner, attr: str, counter: str, count) -> None:
    """Count ``counter`` for the harness timer from what ``owner.attr(...)`` returns: ``count(result)``.
    The callable (a method, or an object such as torchvision's sampler) is replaced on this instance only,
    by one that calls it and counts; for steps that run in training only (samplers, target builders)."""
    inner = getattr(owner, attr)

    def counted(*args, **kwargs):
        result = inner(*args, **kwargs)
        timer.count(**{counter: count(result)})
        return result

    setattr(owner, attr, counted)


def rows(output) -> int:
    """RoIs a pooler returned: its output is [RoIs, C, S, S]."""
    return int(output.shape[0])


def proposals_of(output) -> int:
    """Proposals an RPN returned as (per-image proposals, losses)."""
    return sum(len(p) for p in output[0])


def pixels(batch) -> int:
    """Padded input pixels of a batch tensor [N, C, H, W]: N x H x W."""
    n, _, h, w = batch.shape
    return int(n * h * w)


def count_pixels(timer, backbone) -> None:
    """Count the padded pixels ``backbone`` is given (its first argument) in training."""

    def hook(mod, args):
        if mod.training:
            timer.count(pixels=pixels(args[0]))

    backbone.register_forward_pre_hook(hook)


def attach_work_counters(timer, *, backbone, rpn, box_pooler, mask_pooler) -> None:
    """The work counters on the usual modules: the padded pixels into the backbone, the RPN's
    proposals, the RoIs the box pooler crops (sampled, ground truth included) and the positives the
    mask pooler crops. ``backbone`` None: the caller counts the pixels its own way."""
    if backbone is not None:
        count_pixels(timer, backbone)
    if rpn is not None:
        count_work(timer, rpn, "proposals", proposals_of)
    count_work(timer, box_pooler, "rois", rows)
    count_work(timer, mask_pooler, "positives", rows)


def phase_probe(cfg, timer, device, model, ranges: bool, lacks: dict | None = None, **parts):
    """With ``benchmark.phases`` (or a task that traces): a PhaseProbe (engine/phases.py) on ``model``,
    timing each of ``parts``
    (a keyword of phases.PARTS, e.g. ``rpn_head=[...]``: modules or (object, method) pairs), ``lacks`` the
    phases this framework has no part for (phase -> why); ``ranges``: the adapter's ``task.phase_ranges``
    (a trace: the parts as profiler ranges, not timed). None otherwise."""
    if not (cfg.benchmark.phases or ranges):
        return None
    from mrcnn_bench.harness.engine.phases import PARTS, PhaseProbe

    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise TypeError(f"phase_probe: unknown part(s) {', '.join(unknown)}; known: {', '.join(PARTS)}")
    probe = PhaseProbe(
        device, count_syncs_at=0 if cfg.benchmark.warmup > 0 and not ranges else None, ranges=ranges
    )
    for name, members in parts.items():
        probe.time(PARTS[name], *members)
    for phase, why in (lacks or {}).items():
        probe.lacks(phase, why)
    return probe.attach(timer, model)


def schedule_length(solver) -> int:
    """Iterations that show a whole warm-up + multi-step schedule: past its last change."""
    return min(solver["max_iter"], max([solver["warmup_iters"], *solver["steps"]]) + 1)


def step_scheduler(optimizer, step, n: int) -> list[float]:
    """The first parameter group's learning rate at iterations 0..n-1, calling ``step()`` after each."""
    import warnings

    lrs = []
    with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": no optimizer step here
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(n):
            lrs.append(optimizer.param_groups[0]["lr"])
            step()
    return lrs


def stand_in_optimizer(lr: float):
    """SGD over one stand-in parameter: what a framework's scheduler builder is given to probe it."""
    import torch

    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def schedule_facts(lrs: list[float], base_lr: float) -> dict:
    """Warm-up and steps as a learning-rate trajectory shows them (the parity table's solver rows):
    warm-up ends at the first iteration run at ``base_lr``; a step is an iteration after it whose lr
    is lower than the one before."""

    def close(a, b):
        return abs(a - b) <= 1e-6 * max(abs(a), abs(b))

    warm = next((i for i, lr in enumerate(lrs) if close(lr, base_lr)), None)
    steps = (
        []
        if warm is None
        else [i for i in range(warm + 1, len(lrs)) if lrs[i] < lrs[i - 1] and not close(lrs[i], lrs[i - 1])]
    )
    return {
        "solver.warmup_iters": warm,
        "solver.warmup_factor": round(lrs[0] / base_lr, 12) if lrs else None,
        "solver.steps": steps,
        "solver.gamma": round(lrs[steps[0]] / lrs[steps[0] - 1], 12) if steps else None,
    }


def sampling_hparams(section: str, fg_iou: float, bg_iou: float, batch: int, fraction: float) -> dict:
    """A matcher's and its sampler's rows of the parity table (``section``: "rpn" or "roi_heads")."""
    return {
        f"model.{section}.fg_iou_thresh": fg_iou,
        f"model.{section}.bg_iou_thresh": bg_iou,
        f"model.{section}.batch_size_per_image": batch,
        f"model.{section}.positive_fraction": fraction,
    }


def proposal_hparams(nms: float, pre_train: int, post_train: int, pre_test: int, post_test: int) -> dict:
    """The RPN's NMS threshold and its top-k before and after NMS, training and test (kept per image)."""
    return {
        "model.rpn.nms_thresh": nms,
        "model.rpn.pre_nms_topk_train": pre_train,
        "model.rpn.post_nms_topk_train": post_train,
        "model.rpn.pre_nms_topk_test": pre_test,
        "model.rpn.post_nms_topk_test": post_test,
        "model.rpn.post_nms_topk_scope": "per image",
    }


def solver_hparams(
    *,
    ims_per_process: int,
    base_lr: float,
    momentum: float,
    weight_decay: float,
    weight_decay_norm: float,
    warmup_method: str,
    lrs: list[float],
) -> dict:
    """The parity table's solver rows: the optimizer's values as the framework holds them, and warm-up
    and steps from ``lrs``, the learning rates its own scheduler gives (``schedule_facts``)."""
    return {
        "solver.ims_per_batch_per_process": ims_per_process,
        "solver.base_lr": base_lr,
        "solver.momentum": momentum,
        "solver.weight_decay": weight_decay,
        "solver.weight_decay_norm": weight_decay_norm,
        "solver.warmup_method": warmup_method,
        **schedule_facts(lrs, base_lr),
    }


# ------------------------------------------------------------------------- shared initial weights
class WeightsMismatch(ValueError):
    """A state dict whose names or shapes do not match the model it is loaded into."""


def shifted(template: str, shift: int):
    """A regex replacement that writes ``template`` with the number in group 1 moved by ``shift`` and the
    other groups as they are (torchvision's layer1 is detectron2's res2; its fc6 is mmdet's shared_fcs.0)."""
    return lambda m: template.format(int(m.group(1)) + shift, *m.groups()[1:])


def rename(state: dict, renames: list[tuple[str, str]], source: str) -> dict:
    """``state`` with each key rewritten by the first of ``renames`` (regex, replacement) that
    matches it; a key that none matches is an error naming it (no parameter is dropped silently)."""
    import re

    out = {}
    for key, value in state.items():
        for pattern, repl in renames:
            if re.match(pattern, key):
                out[re.sub(pattern, repl, key)] = value
                break
        else:
            raise WeightsMismatch(f"{source}: parameter '{key}' has no counterpart in the conversion")
    return out


def load_exact(model, state: dict, source: str) -> None:
    """Load ``state`` into ``model``: every parameter and buffer by name and shape, or an error naming
    the first that does not match. Only BatchNorm's ``num_batches_tracked`` counters may be absent
    (torchvision's FrozenBatchNorm2d has none); the model keeps its own."""
    expected = model.state_dict()
    for key, value in state.items():
        if key not in expected:
            raise WeightsMismatch(
                f"{source}: '{key}' is not a parameter of the model ({type(model).__name__})"
            )
        if tuple(expected[key].shape) != tuple(value.shape):
            raise WeightsMismatch(
                f"{source}: '{key}' has shape {tuple(value.shape)}, the model's is "
                f"{tuple(expected[key].shape)}"
            )
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise WeightsMismatch(f"{source}: no value for the model's '{missing[0]}' ({len(missing)} missing)")
    model.load_state_dict(state, strict=False)


def _background_last(x, num_classes: int):
    """Class rows [background, 1..K] (torchvision) -> [1..K, background] (detectron2, mmdet)."""
    import torch

    if x.shape[0] != num_classes + 1:
        raise WeightsMismatch(f"expected {num_classes + 1} class rows, got {x.shape[0]}")
    return torch.cat([x[1:], x[:1]])


def _background_first(x):
    """[1..K, background] -> [background, 1..K]."""
    import torch

    return torch.cat([x[-1:], x[:-1]])


def _with_background(x, per_class: int = 1):
    """[1..K] x per_class -> [background (zeros: never trained nor read), 1..K] x per_class."""
    import torch

    return torch.cat([x.new_zeros((per_class, *x.shape[1:])), x])


def _without_counters(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def from_torchvision_layout(state: dict, renames: list, heads: tuple[str, str, str], source: str) -> dict:
    """A torchvision-layout Mask R-CNN state dict in a framework's names (``renames``) and its class
    layout, for frameworks (detectron2, mmdet) whose ``heads`` — classifier, box regressor and mask
    predictor prefixes — keep background last in the classifier and have no background slot in the
    class-specific box regressor and mask predictor. BatchNorm's step counters are left out."""
    k = num_classes_of(state)
    out = rename(_without_counters(state), renames, source)
    cls, reg, mask = heads
    for p in ("weight", "bias"):
        out[cls + p] = _background_last(out[cls + p], k)
        out[reg + p] = out[reg + p][4:]
        out[mask + p] = out[mask + p][1:]
    return out


def to_torchvision_layout(state: dict, renames: list, heads: tuple[str, str, str], source: str) -> dict:
    """The inverse of :func:`from_torchvision_layout` (``renames`` the other way); the background slots
    torchvision has and the framework lacks are zeros."""
    own = _without_counters(state)
    cls, reg, mask = heads
    for p in ("weight", "bias"):
        own[cls + p] = _background_first(own[cls + p])
        own[reg + p] = _with_background(own[reg + p], 4)
        own[mask + p] = _with_background(own[mask + p])
    return rename(own, renames, source)


class LayoutConversion:
    """A framework's Mask R-CNN state dicts to and from torchvision's layout: its renames each way and
    its ``heads`` (classifier, box regressor and mask predictor prefixes; background last, no
    background slot), for :func:`from_torchvision_layout` and :func:`to_torchvision_layout`."""

    def __init__(self, framework: str, from_renames: list, to_renames: list, heads: tuple[str, str, str]):
        self.framework, self.from_renames, self.to_renames, self.heads = (
            framework,
            from_renames,
            to_renames,
            heads,
        )

    def from_torchvision(self, state: dict) -> dict:
        """A torchvision-layout state dict in the framework's names and layouts."""
        return from_torchvision_layout(
            state, self.from_renames, self.heads, f"torchvision -> {self.framework}"
        )

    def to_torchvision(self, state: dict) -> dict:
        """The framework's state dict in torchvision's layout (background slots zero)."""
        return to_torchvision_layout(state, self.to_renames, self.heads, f"{self.framework} -> torchvision")


def load_initial_weights(path: str) -> dict:
    """The run's shared initial weights: a state dict in torchvision's Mask R-CNN layout."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("model", state)


def num_classes_of(tv_state: dict) -> int:
    """Foreground classes of a torchvision-layout state dict (its box classifier counts background)."""
    return tv_state["roi_heads.box_predictor.cls_score.weight"].shape[0] - 1


# ------------------------------------------------------------------------------- the same function
def forward_outputs(features: list, objectness: list, deltas: list) -> dict:
    """What ``Adapter.forward_features`` returns: FPN levels P2-P6 and the RPN head's outputs per level,
    [N, C, H, W], [N, A, H, W] and [N, 4A, H, W], detached, under level names."""
    names = [f"p{i + 2}" for i in range(len(features))]
    out = {n: f.detach() for n, f in zip(names, features)}
    out.update({f"objectness.{n}": o.detach() for n, o in zip(names, objectness)})
    out.update({f"deltas.{n}": d.detach() for n, d in zip(names, deltas)})
    return out


# ------------------------------------------------------------------------------------- inference
def float_images(images: list, device, unit: bool = True) -> list:
    """Decoded uint8 images [3, H, W] as float on ``device``: in [0, 1] (``unit``) or on the 0-255 scale."""
    out = []
    for image in images:
        image = image.to(device, non_blocking=True).float()
        out.append(image.div_(255.0) if unit else image)
    return out


def detections(boxes, scores, labels, masks) -> dict:
    """One image's detections as ``Adapter.predictor`` returns them (``labels`` 1..K, ``masks`` [N, H, W])."""
    return {"boxes": boxes, "scores": scores, "labels": labels, "masks": masks}
