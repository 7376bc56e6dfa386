"""``--task step``: one training step of the framework's own loop, recorded whole for ``mrcnn-bench parity
--check-step`` (parity/step_check.py): every loss term, each trainable parameter's gradient and the lr,
weight decay and momentum its optimizer group applied, in torchvision's parameter names, in ``step.pt``
beside run.json.

Nothing of the framework is changed but one thing: ``torch.randperm`` without a generator (the samplers'
draw, in all four) becomes a fixed permutation of its length, so the frameworks, given the same
candidates in the same order (anchors are ordered alike in all four), take the same ones. The captures
are global hooks of torch (every module's forward, every optimizer's step), so the framework's own
objects are found wherever it builds them.
"""

from __future__ import annotations

from .base import RankContext, TaskError, one_process
from .rank import say
from .train import Train

STEP_FILE = "step.pt"
#: the seed of the permutation every sampler draws in a step check (any fixed value: the same for all)
PERMUTATION_SEED = 1234
#: loss term (the check's name) -> the names the four frameworks give it
LOSS_TERMS = {
    "rpn_cls": ("loss_objectness", "loss_rpn_cls"),
    "rpn_box": ("loss_rpn_box_reg", "loss_rpn_loc", "loss_rpn_bbox"),
    "roi_cls": ("loss_classifier", "loss_cls"),
    "roi_box": ("loss_box_reg", "loss_bbox"),
    "mask": ("loss_mask",),
}


class Step(Train):
    name = "step"
    help = (
        "step: one training step recorded whole (losses, gradients, optimizer groups) for parity --check-step"
    )
    trains = False  # not a throughput: the training tables leave it out
    section_title = "One training step (parity --check-step)"

    def check(self, cfg, data_summary: dict) -> None:
        one_process(cfg)
        if cfg.benchmark.iters != 1 or cfg.benchmark.grad_accum != 1:
            raise TaskError(
                f"--task step records one step: benchmark.iters must be 1 (got {cfg.benchmark.iters}) "
                f"and benchmark.grad_accum 1 (got {cfg.benchmark.grad_accum})"
            )
        if cfg.benchmark.dtype != "fp32":
            raise TaskError(f"--task step compares float32 steps (benchmark.dtype is {cfg.benchmark.dtype})")

    def work(self, bench) -> str:
        return "one training step, recorded whole"

    def train(self, rank: RankContext):
        capture = StepCapture(rank.cfg.benchmark.step_input_ulps)
        with capture:
            timer, partial = super().train(rank)
        self.capture = capture
        return timer, partial

    def after_training(self, rank: RankContext) -> dict:
        from mrcnn_bench.harness.records.results import atomic_save_torch

        record = self.capture.record(rank.adapter.trained_model, rank.adapter.torchvision_names)
        if rank.dist.rank == 0:
            atomic_save_torch(record, rank.run_dir / STEP_FILE)
        losses = ", ".join(f"{k} {v:.6g}" for k, v in record["losses"].items())
        say(
            f"{rank.impl}: one step: {losses}; {len(record['grads'])} parameters with a gradient, "
            f"optimizer's update within {record['update_error']:.1e} of SGD's"
        )
        return {
            "step": {
                "losses": record["losses"],
                "update_error": record["update_error"],
                "parameters_with_grad": len(record["grads"]),
            }
        }


def canonical_losses(losses: dict) -> dict[str, float]:
    """A framework's loss dict (tensors, or lists of them per level) as the check's five terms."""
    out = {}
    for term, names in LOSS_TERMS.items():
        for name in names:
            if name in losses:
                value = losses[name]
                out[term] = (
                    float(sum(float(v) for v in value)) if isinstance(value, (list, tuple)) else float(value)
                )
    return out


class StepCapture:
    """Inside ``with``: the samplers' ``torch.randperm`` fixed, the last loss dict a module returns (the
    outermost model's, which returns last), and each parameter of the optimizer's first step: its gradient
    and value before, its value after, and its group's lr, weight decay and momentum."""

    def __init__(self, input_ulps: int = 0):
        self.input_ulps = input_ulps
        self._perturbed = False
        self.losses: dict = {}
        self.before: dict[int, dict] = {}
        self.after: dict[int, object] = {}

    def __enter__(self):
        import torch
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        original = torch.randperm
        self._randperm = original

        def fixed_randperm(n, *args, generator=None, **kwargs):
            if generator is not None or args:  # a data order's own generator: left as it is
                return original(n, *args, generator=generator, **kwargs)
            device = kwargs.pop("device", None)
            g = torch.Generator().manual_seed(PERMUTATION_SEED)
            return (
                original(n, generator=g, **kwargs).to(device)
                if device is not None
                else original(n, generator=g, **kwargs)
            )

        torch.randperm = fixed_randperm
        self._handles = (
            [torch.nn.modules.module.register_module_forward_pre_hook(self._perturb)]
            if self.input_ulps
            else []
        )
        self._handles += [
            torch.nn.modules.module.register_module_forward_hook(self._forward),
            register_optimizer_step_pre_hook(self._before_step),
            register_optimizer_step_post_hook(self._after_step),
        ]
        return self

    def __exit__(self, *exc):
        import torch

        torch.randperm = self._randperm
        for h in self._handles:
            h.remove()
        return False

    def _perturb(self, module, args):
        """The batch's first way into the network (the first module called with a float [N, 3, H, W]:
        the backbone), each element moved by ``input_ulps`` units in its last place, up or down by a
        seeded draw; once, so the modules inside it see the same moved input."""
        import torch

        x = args[0] if args else None
        if self._perturbed or not (
            torch.is_tensor(x) and x.dim() == 4 and x.shape[1] == 3 and torch.is_floating_point(x)
        ):
            return None
        self._perturbed = True
        g = torch.Generator().manual_seed(PERMUTATION_SEED)
        sign = torch.randint(0, 2, x.shape, generator=g).to(x.device, x.dtype).mul_(2).sub_(1)
        ulp = torch.finfo(x.dtype).eps * torch.exp2(
            torch.floor(torch.log2(x.abs().clamp(min=torch.finfo(x.dtype).tiny)))
        )
        return (x + self.input_ulps * sign * ulp, *args[1:])

    def _forward(self, module, args, output):
        if isinstance(output, dict) and any(str(k).startswith("loss") for k in output):
            self.losses = {k: _detached(v) for k, v in output.items() if str(k).startswith("loss")}

    def _before_step(self, optimizer, args, kwargs):
        if self.before:  # the first step only (the check runs one)
            return
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self.before[id(p)] = {
                        "grad": p.grad.detach().clone(),
                        "value": p.detach().clone(),
                        "lr": float(group["lr"]),
                        "weight_decay": float(group.get("weight_decay", 0.0)),
                        "momentum": float(group.get("momentum", 0.0)),
                        "param": p,
                    }

    def _after_step(self, optimizer, args, kwargs):
        for key, entry in self.before.items():
            if key not in self.after:
                self.after[key] = entry["param"].detach().clone()

    def record(self, model, to_torchvision) -> dict:
        """What step.pt holds, in torchvision's names (``to_torchvision``: the adapter's state-dict
        conversion): losses, grads, and per parameter (lr, weight decay, momentum); the frozen parameters;
        and how far the optimizer's update was from SGD's first step, -lr (grad + weight_decay * value)."""
        import torch

        if not self.before:
            raise RuntimeError("no optimizer step was seen: the framework's loop did not step its optimizer")
        named = {id(p): name for name, p in model.named_parameters()}
        missing = [k for k in self.before if k not in named]
        if missing:
            raise RuntimeError(
                f"{len(missing)} stepped parameter(s) are not the trained model's (another model was "
                "stepped?)"
            )
        grads, groups, worst = {}, {}, 0.0
        for key, e in self.before.items():
            name = named[key]
            grads[name] = e["grad"]
            groups[name] = torch.tensor(
                [e["lr"], e["weight_decay"], e["momentum"]], dtype=torch.float64
            ).expand(*e["grad"].shape, 3)
            expected = e["value"].double() - e["lr"] * (
                e["grad"].double() + e["weight_decay"] * e["value"].double()
            )
            update = (
                (e["lr"] * (e["grad"].double() + e["weight_decay"] * e["value"].double())).abs().max().item()
            )
            err = (self.after[key].double() - expected).abs().max().item()
            # the float32 value rounds by up to an ulp of itself: a larger miss is another update
            ulp = 2.0**-23 * max(e["value"].abs().max().item(), 1e-30)
            worst = max(worst, max(err - ulp, 0.0) / max(update, 1e-30))
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        frozen = sorted(
            set(to_torchvision({n: p.detach() for n, p in model.named_parameters()}))
            - set(to_torchvision({n: p.detach() for n, p in model.named_parameters() if n in trainable}))
        )
        # (lr, weight decay, momentum) per parameter, laid out as the tensor so the conversion moves it alike
        # (the background slots it adds are zeros: the largest entry is the group's)
        tv_groups = {
            k: tuple(v.amax(dim=tuple(range(v.dim() - 1))).tolist())
            for k, v in to_torchvision(groups).items()
        }
        return {
            "losses": canonical_losses(self.losses),
            "raw_losses": dict(self.losses),
            "grads": to_torchvision(grads),
            "groups": tv_groups,
            "frozen": frozen,
            "update_error": worst,
        }


def _detached(v):
    if isinstance(v, (list, tuple)):
        return [x.detach().float().cpu() for x in v]
    return v.detach().float().cpu() if hasattr(v, "detach") else v
