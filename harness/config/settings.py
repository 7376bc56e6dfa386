"""Each implementation as shipped and at its best (``benchmark.settings``; ``mrcnn-bench run --best``).

"shipped": every framework with its own defaults, as its users get it (the reference with the levers its
scenario config turns on). "best": each also with every setting that keeps its arithmetic (the same
operations on the same values; only the order of float additions may change, as between two GPU
kernels) and that its own users can turn on. They are declared here, per implementation, in one place:
the launcher puts a setting's environment on the worker's process, the worker applies its config keys
(``effective_config``), run.json records what was applied (``settings``) and ``mrcnn-bench parity``
prints the table. A setting left out says why in ``NOT_INCLUDED``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MODE_TITLES = {"shipped": "each as shipped", "best": "each at its best"}


@dataclass(frozen=True, eq=False)  # compared and hashed as the one declared object
class Setting:
    name: str
    what: str
    how: str  # how the framework's own users turn it on
    device: str = "any"  # "any", "cpu" or "cuda": where it acts
    tasks: tuple[str, ...] = ()  # the tasks it acts in (empty: all)
    overrides: dict = field(default_factory=dict)  # config keys the worker sets
    environment: dict = field(default_factory=dict)  # environment variables of the worker's process

    def acts(self, device: str, task: str) -> bool:
        return self.device in ("any", device) and (not self.tasks or task in self.tasks)


NHWC = Setting(
    "channels_last",
    "NHWC (channels-last) weights and activations: the same convolutions, laid out for the "
    "vector units (oneDNN on the CPU, Tensor Cores on the GPU)",
    "model.to(memory_format=torch.channels_last), as PyTorch's memory-format tutorial shows for torchvision "
    "models",
    overrides={"benchmark.channels_last": True},
)
KEPT_HOST_MEMORY = Setting(
    "kept_host_memory",
    "glibc keeps freed memory in the heap for reuse (no mmap/munmap, and no page faults, "
    "for every large tensor of every step); the process keeps its peak",
    "GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647 in the process's "
    "environment "
    "(glibc's tunables(7); glibc 2.36 here ignores the older MALLOC_MMAP_MAX_ / MALLOC_TRIM_THRESHOLD_)",
    device="cpu",
    environment={"GLIBC_TUNABLES": f"glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold={2**31 - 1}"},
)
EXPANDABLE_SEGMENTS = Setting(
    "expandable_segments",
    "PyTorch's CUDA caching allocator grows segments instead of allocating new ones "
    "for each new shape (fewer cudaMalloc calls and less fragmentation with images of varying sizes)",
    "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (PyTorch's CUDA memory-management notes)",
    device="cuda",
    environment={"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"},
)
FUSE_CONV_BN = Setting(
    "fuse_conv_bn",
    "each convolution and the BatchNorm after it computed as one convolution at inference "
    "(mmcv.cnn.fuse_conv_bn; the reference's own fold_frozen_bn is its lever, on in every scenario)",
    "mmdet's tools/analysis_tools/benchmark.py --fuse-conv-bn (mmcv.cnn.fuse_conv_bn(model))",
    tasks=("infer",),
)

# The reference's own speed switches (the config's ``reference`` section) are already its best per
# scenario, each measured by benchmarks/levers.py: NHWC among them where it was measured faster.
BEST: dict[str, tuple[Setting, ...]] = {
    "reference": (KEPT_HOST_MEMORY, EXPANDABLE_SEGMENTS),
    "torchvision": (NHWC, KEPT_HOST_MEMORY, EXPANDABLE_SEGMENTS),
    "detectron2": (NHWC, KEPT_HOST_MEMORY, EXPANDABLE_SEGMENTS),
    # not NHWC: mmcv 2.1's RoIAlign misreads channels-last maps (NOT_INCLUDED)
    "mmdet": (KEPT_HOST_MEMORY, EXPANDABLE_SEGMENTS, FUSE_CONV_BN),
}

NOT_INCLUDED = (
    ("AMP (bf16 / fp16)", "changes the arithmetic: a run of its own (benchmark.dtype), for all four alike"),
    (
        "torch.compile",
        "fuses and reorders operations across layers (other roundings than a kernel's); "
        "detectron2's and mmdet's training loops do not offer it; the reference's compile_heads lever is off",
    ),
    (
        "cudnn.benchmark (detectron2 CUDNN_BENCHMARK, mmdet env_cfg.cudnn_benchmark)",
        "detectron2's own documentation: with input sizes that vary, as detection's do, it adds a large "
        "overhead for about 10k iterations and usually hurts total time",
    ),
    (
        "NHWC for mmdet",
        "changes its arithmetic: mmcv 2.1's RoIAlign (roi_align.py) hands its kernel the feature maps "
        "without making them contiguous, so channels-last FPN maps are read as NCHW (other RoI features: "
        "at 800 px, inference found 71 detections per image against 44 in NCHW; tests/test_mmdet_adapter.py)",
    ),
    (
        "conv + FrozenBN folding in training (detectron2, torchvision)",
        "neither framework offers it; mmdet's fuse_conv_bn is for inference only",
    ),
)


def _applied(cfg, impl: str) -> tuple[Setting, ...]:
    b = cfg.benchmark
    if b.settings != "best":
        return ()
    return tuple(s for s in BEST.get(impl, ()) if s.acts(b.device, b.task))


def applies(cfg, impl: str, name: str) -> bool:
    """Whether the setting ``name`` is applied to ``impl`` in this run (an adapter asks for its own)."""
    return any(s.name == name for s in _applied(cfg, impl))


def effective_config(cfg, impl: str):
    """``cfg`` as ``impl``'s worker runs it: with its best settings' config keys where the run asks for
    them."""
    overrides = {k: v for s in _applied(cfg, impl) for k, v in s.overrides.items()}
    return cfg.with_overrides(overrides, source=f"benchmark.settings=best ({impl})") if overrides else cfg


def environment(cfg, impl: str) -> dict[str, str]:
    """The environment variables ``impl``'s worker process gets from its best settings (none when shipped)."""
    return {k: v for s in _applied(cfg, impl) for k, v in s.environment.items()}


_JOINED = {"GLIBC_TUNABLES": ":", "PYTORCH_CUDA_ALLOC_CONF": ","}  # lists a user may already have set


def with_environment(env: dict[str, str], cfg, impl: str) -> dict[str, str]:
    """``env`` with ``impl``'s best settings' variables: a list variable the user set keeps its entries."""
    out = dict(env)
    for key, value in environment(cfg, impl).items():
        out[key] = f"{out[key]}{_JOINED[key]}{value}" if out.get(key) and key in _JOINED else value
    return out


def record(cfg, impl: str) -> dict:
    """run.json's ``settings``: the mode and each setting applied to ``impl``, with how its users turn it
    on."""
    return {
        "mode": cfg.benchmark.settings,
        "applied": [
            {
                "name": s.name,
                "how": s.how,
                **({"config": s.overrides} if s.overrides else {}),
                **({"environment": s.environment} if s.environment else {}),
            }
            for s in _applied(cfg, impl)
        ],
    }


def table(device: str, task: str = "train") -> list[dict]:
    """Rows for ``parity``: each declared setting, the implementations it is applied to with --best on
    ``device`` for ``task`` (✓), and those it is not (-)."""
    rows = []
    for s in dict.fromkeys(s for group in BEST.values() for s in group):
        acts = s.acts(device, task)
        rows.append(
            {
                "Setting (--best)": s.name,
                **{i: "✓" if acts and s in group else "-" for i, group in BEST.items()},
                "What": s.what if acts else f"(not on {device} / {task}) {s.what}",
            }
        )
    return rows
