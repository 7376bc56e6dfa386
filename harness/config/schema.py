"""The canonical benchmark config: one flat YAML file per scenario, validated before anything starts.

Every implementation is built from this one object; adapters translate it to their framework's own
config and read the effective values back out (``effective_hparams``), so the parity table shows
what each framework really does, not what we asked for.

Loading errors are raised as :class:`ConfigError`, whose message names the file, the dotted key and
what was expected; the CLI turns it into exit code 2.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A config (or an override of it) that cannot be used; the message says where and why."""


class _Section(BaseModel):
    # strict: "2" is not an int, 1 is not a float list; extra keys are errors, not silently dropped;
    # inf and nan are no value of any key (a learning rate of .inf would fail 90 s into the run).
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class BackboneConfig(_Section):
    depth: Literal[50] = 50
    # Stages up to and including this one are frozen: 2 = stem + res2 (Detectron's FREEZE_AT).
    freeze_at: int = Field(2, ge=0, le=5)
    # FrozenBN is the canonical choice, with or without pretrained weights. Without ``model.weights``
    # the shared initialisation calibrates every norm layer's statistics on the run's own training images
    # (``calibration_images`` of them: each layer's per-channel input mean and variance in the seeded
    # network, harness/run/init_weights.py), so frozen statistics normalise as ImageNet's do and the canonical
    # structure trains. ``norm_without_weights`` / ``freeze_at_without_weights`` replace norm / freeze_at
    # when no weights are given; None (the default) keeps the canonical ones. Anything else (trainable BN
    # through every stage, as the benchmark did before the calibration) is named in the report.
    norm: Literal["FrozenBN", "BN", "SyncBN"] = "FrozenBN"
    norm_without_weights: Literal["FrozenBN", "BN", "SyncBN"] | None = None
    freeze_at_without_weights: int | None = Field(None, ge=0, le=5)
    calibration_images: int = Field(8, gt=0, le=1024)


class AnchorConfig(_Section):
    sizes: list[int] = [32, 64, 128, 256, 512]
    aspect_ratios: list[float] = [0.5, 1.0, 2.0]
    # Anchor corners rounded to whole pixels (torchvision's AnchorGenerator) or kept as computed
    # (detectron2's, mmdet's): a 32-px square anchor is 32x32 either way, its 0.5 and 2 ratios 22x45 or
    # 22.6x45.3. On objects near the smallest anchor's size, the rounding decides which anchors tie for a
    # box's best overlap, so how many become positive.
    round_to_pixels: bool = False

    @model_validator(mode="after")
    def _check(self):
        if len(self.sizes) != 5:
            raise ValueError("sizes must have 5 entries, one per FPN level P2-P6")
        if any(s <= 0 for s in self.sizes) or any(r <= 0 for r in self.aspect_ratios):
            raise ValueError("anchor sizes and aspect ratios must be > 0")
        return self


class RPNConfig(_Section):
    fg_iou_thresh: float = Field(0.7, gt=0, le=1)
    bg_iou_thresh: float = Field(0.3, ge=0, le=1)
    batch_size_per_image: int = Field(256, gt=0)
    positive_fraction: float = Field(0.5, gt=0, le=1)
    nms_thresh: float = Field(0.7, gt=0, le=1)
    pre_nms_topk_train: int = Field(2000, gt=0)  # per FPN level, per image
    post_nms_topk_train: int = Field(1000, gt=0)  # per image
    pre_nms_topk_test: int = Field(1000, gt=0)
    post_nms_topk_test: int = Field(1000, gt=0)
    # The anchor box regression loss: smooth L1 with this beta; 0 is the L1 loss (detectron2's and mmdet's
    # default).
    smooth_l1_beta: float = Field(0.0, ge=0)
    # Low-quality matches (Faster R-CNN's RPN rule): each ground-truth box also makes the anchors that
    # overlap it best positive, whatever their IoU below fg_iou_thresh, if that best IoU is at least
    # low_quality_min_iou (0: any; detectron2 and torchvision; mmdet's stock RPN uses 0.3).
    low_quality_matches: bool = True
    low_quality_min_iou: float = Field(0.0, ge=0, le=1)
    # Proposals are kept when both sides exceed this many pixels after clipping (detectron2's
    # MODEL.PROPOSAL_GENERATOR.MIN_SIZE, mmdet's min_bbox_size); torchvision keeps sides >= its min_size.
    min_proposal_size: float = Field(0.0, ge=0)


class ROIHeadsConfig(_Section):
    fg_iou_thresh: float = Field(0.5, gt=0, le=1)
    bg_iou_thresh: float = Field(0.5, gt=0, le=1)
    batch_size_per_image: int = Field(512, gt=0)
    positive_fraction: float = Field(0.25, gt=0, le=1)
    box_pooler_resolution: int = Field(7, gt=0)
    mask_pooler_resolution: int = Field(14, gt=0)
    # 0 = adaptive (ceil(roi_size / output_size)), as Detectron2; torchvision's default is 2.
    pooler_sampling_ratio: int = Field(0, ge=0)
    pooler_aligned: bool = True
    box_head_num_fc: int = Field(2, gt=0)
    box_head_fc_dim: int = Field(1024, gt=0)
    mask_head_num_conv: int = Field(4, gt=0)
    mask_head_conv_dim: int = Field(256, gt=0)
    score_thresh_test: float = Field(0.05, ge=0, le=1)
    nms_thresh_test: float = Field(0.5, gt=0, le=1)
    detections_per_image: int = Field(100, gt=0)
    # The box head's regression loss: smooth L1 with this beta; 0 is the L1 loss (detectron2's and mmdet's
    # default).
    smooth_l1_beta: float = Field(0.0, ge=0)
    # How a positive RoI's mask target is made: "polygon", the ground truth's polygons rasterised inside
    # the RoI at 2 x mask_pooler_resolution (Detectron, detectron2's default); "bitmask_binarized", the
    # full-image bitmask cropped with aligned RoIAlign and thresholded at 0.5 (mmdet's default,
    # detectron2's INPUT.MASK_FORMAT bitmask); "bitmask_soft", the bitmask cropped with legacy
    # (unaligned) RoIAlign and kept as fractions (torchvision's).
    mask_target: Literal["polygon", "bitmask_binarized", "bitmask_soft"] = "polygon"


class ModelConfig(_Section):
    num_classes: int | None = Field(None, gt=0)  # None: taken from the data set's categories
    # Path to a checkpoint to start from (torchvision-format backbone or full model). None = random init.
    weights: str | None = None
    # The whole model's initial weights in torchvision's layout, which every implementation converts
    # to its own names and loads. Set by ``mrcnn-bench run`` (benchmark.shared_init) to the run's one
    # seeded initialisation (with ``weights`` laid over it); None: each framework initialises its own.
    init_weights: str | None = None
    pixel_mean: list[float] = [123.675, 116.28, 103.53]  # RGB, 0-255
    pixel_std: list[float] = [58.395, 57.12, 57.375]
    backbone: BackboneConfig = BackboneConfig()
    fpn_out_channels: int = Field(256, gt=0)
    anchors: AnchorConfig = AnchorConfig()
    rpn: RPNConfig = RPNConfig()
    roi_heads: ROIHeadsConfig = ROIHeadsConfig()

    @model_validator(mode="after")
    def _check(self):
        if len(self.pixel_mean) != 3 or len(self.pixel_std) != 3:
            raise ValueError("pixel_mean and pixel_std must have 3 entries (RGB)")
        if any(s <= 0 for s in self.pixel_std):
            raise ValueError("pixel_std entries must be > 0")
        return self

    @property
    def effective_norm(self) -> str:
        b = self.backbone
        return b.norm if self.weights or b.norm_without_weights is None else b.norm_without_weights

    @property
    def effective_freeze_at(self) -> int:
        b = self.backbone
        return (
            b.freeze_at
            if self.weights or b.freeze_at_without_weights is None
            else b.freeze_at_without_weights
        )

    @property
    def calibrates_norm(self) -> bool:
        """Whether the shared initialisation sets the backbone's norm statistics from the run's data: with
        no ``weights`` to bring ImageNet's. (An ``init_weights`` file given by hand is loaded as it is.)"""
        return not self.weights

    def structure_differences(self) -> dict[str, tuple]:
        """The canonical keys of the backbone's structure this model runs otherwise ({key: (canonical,
        effective)}): what a report names when the scenario does not train the canonical model."""
        out = {}
        if self.effective_norm != self.backbone.norm:
            out["model.backbone.norm"] = (self.backbone.norm, self.effective_norm)
        if self.effective_freeze_at != self.backbone.freeze_at:
            out["model.backbone.freeze_at"] = (self.backbone.freeze_at, self.effective_freeze_at)
        return out


class InputConfig(_Section):
    min_size_train: list[int] = [800]  # one is drawn per image when several are given
    max_size_train: int = Field(1333, gt=0)
    min_size_test: int = Field(800, gt=0)
    max_size_test: int = Field(1333, gt=0)
    horizontal_flip_prob: float = Field(0.5, ge=0, le=1)
    # The resized image's sides from the scale (computed in float64): "round" to the nearest pixel
    # (detectron2's ResizeShortestEdge, mmcv's rescale_size) or "floor" (torchvision's interpolate).
    resize_rounding: Literal["round", "floor"] = "round"
    # Every implementation drops images with no annotation from training (Detectron's default).
    filter_empty_annotations: bool = True
    # Batches of images of one orientation (wider than tall, or not), as detectron2 and mmdet group
    # them; done once, in the run's data order (harness/data/order.py) that every implementation follows.
    aspect_ratio_grouping: bool = True

    @model_validator(mode="after")
    def _check(self):
        if not self.min_size_train or any(s <= 0 for s in self.min_size_train):
            raise ValueError("min_size_train must be a non-empty list of sizes > 0")
        if max(self.min_size_train) > self.max_size_train:
            raise ValueError("min_size_train must not exceed max_size_train")
        return self


class SolverConfig(_Section):
    ims_per_batch: int = Field(16, gt=0)  # global batch, over all processes
    base_lr: float = Field(0.02, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    weight_decay_norm: float = Field(0.0, ge=0)  # on normalization layers' parameters (Detectron2's default)
    warmup_method: Literal["linear"] = "linear"
    warmup_iters: int = Field(1000, ge=0)
    warmup_factor: float = Field(0.001, gt=0, le=1)
    steps: list[int] = [60000, 80000]
    gamma: float = Field(0.1, gt=0, le=1)
    max_iter: int = Field(90000, gt=0)  # the schedule's length; the benchmark stops at benchmark.iters


class BenchmarkConfig(_Section):
    iters: int = Field(500, gt=0)  # iterations run
    warmup: int = Field(100, ge=0)  # timed window is [warmup, window_end)
    window_end: int | None = Field(None, gt=0)  # None = iters
    gpus: int = Field(8, gt=0)  # processes in all (the world size: nodes x processes per node)
    device: Literal["cpu", "cuda"] = "cuda"
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"  # fp16/bf16 = automatic mixed precision
    channels_last: bool = False
    # "shipped": each implementation with its own defaults; "best": each also with every setting that keeps
    # its arithmetic and that its own users can turn on (harness/config/settings.py declares them; run --best)
    settings: Literal["shipped", "best"] = "shipped"
    # On CUDA, fp32 convolutions and matmuls in TF32 (Ampere and later), set for every implementation
    # alike by the harness rather than left to each framework's default.
    tf32: bool = True
    grad_accum: int = Field(1, gt=0)
    # How the batch was spread over the processes (harness/run/scaling.py): "strong" keeps the global batch,
    # "weak" keeps the images per process (--ims-per-gpu) and scales the learning rate with the batch.
    scaling: Literal["strong", "weak"] = "strong"
    # The most images one process takes through one forward/backward; a larger share is accumulated
    # over several steps (None: any share fits).
    max_ims_per_step: int | None = Field(None, gt=0)
    threads_per_rank: int | None = Field(None, gt=0)  # None: cores / processes
    num_workers: int = Field(2, ge=0)  # data-loader workers per process
    seed: int = 0
    # One seeded initialisation of the whole model (model.init_weights), the same for every implementation.
    shared_init: bool = True
    timeout_s: float = Field(3600.0, gt=0)  # per implementation, a hang past this is a failure
    # time each phase of the step inside the framework's loop (engine/phases.py): a run of its own, the
    # synchronizes it adds change the throughput
    phases: bool = False
    # What a run measures: "train", training throughput over the window; "infer", the latency of each
    # framework's own eval path per batch size (harness/engine/inference.py); "eval", training for ``iters``
    # then bbox and segm AP on the val split with pycocotools.
    task: str = "train"  # a task of harness/tasks (train, infer, eval, and any a plugin adds)
    batch_sizes: list[int] = [1, 2, 4, 8]  # infer: images per timed call, each size in turn
    infer_warmup: int = Field(3, ge=0)  # infer: untimed calls per batch size before the timed ones
    infer_batches: int = Field(20, gt=0)  # infer: timed calls per batch size
    # infer: iterations of a short training of torchvision's model from the shared initialisation (the
    # config's solver and data order), whose weights every implementation then loads: a trained model's
    # detections are what the images hold, not an accident of the initialisation (none skips the mask
    # head and the pasting; random logits can give the cap of 100 per image); 0: the weights as they are
    shared_training_iters: int = Field(0, ge=0)
    trace_steps: int = Field(2, gt=0)  # trace: iterations [warmup, warmup + trace_steps) under torch.profiler
    # step (parity --check-step): the first convolution's input moved by this many units in the last place,
    # each element up or down at random (seeded): the reference against itself, how far float rounding of
    # the input alone moves its step (the check's noise floor); 0: the input as the framework makes it
    step_input_ulps: int = Field(0, ge=0, le=1024)
    # Canonical keys an implementation may run differently from the config (``--allow-divergent KEY``):
    # the run goes on, run.json records each divergence and the report marks it. A key a framework
    # cannot express and that is not listed here stops the run with exit 2 before anything starts.
    allow_divergent: list[str] = []
    # What the machine did during the run (machine/telemetry.py), sampled by the launcher: seconds between
    # samples (10 ms to 10 s; outside, the run goes on without telemetry and run.json says so); the GPUs
    # through NVML: "auto" on CUDA runs, "on" always (a CPU run on a GPU machine), "off" never.
    telemetry_period_s: float = 0.5
    telemetry_gpu: Literal["auto", "on", "off"] = "auto"
    # USD per hour of the machine (or of its share the run holds): the report's cost per 1000 images
    # (run --price-per-hour); negative: no cost, and run.json says why
    price_per_hour: float | None = None

    @field_validator("telemetry_gpu", mode="before")
    @classmethod
    def _on_off(cls, v):
        return (
            {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v
        )  # YAML reads on/off as booleans

    @model_validator(mode="after")
    def _check(self):
        # which tasks exist is the task table's to say (harness/tasks, above this package): suite checks
        # the name against it before anything starts; here only its shape
        if not self.task.isidentifier():
            raise ValueError(f"task {self.task!r}: expected a task's name, e.g. train, eval, infer")
        if not self.batch_sizes or any(b <= 0 for b in self.batch_sizes):
            raise ValueError(
                f"batch_sizes {self.batch_sizes}: expected one or more sizes > 0, e.g. [1, 2, 4, 8]"
            )
        end = self.window_end if self.window_end is not None else self.iters
        if end <= self.warmup:
            raise ValueError(
                f"the timed window [warmup={self.warmup}, end={end}) is empty: end must exceed warmup"
            )
        if end > self.iters:
            raise ValueError(f"window_end={end} is past iters={self.iters}")
        return self

    @property
    def end(self) -> int:
        return self.window_end if self.window_end is not None else self.iters


class ReferenceOptions(_Section):
    """Speed switches of the reference implementation only (the others ignore them); none changes
    the model's arithmetic. ``benchmarks/levers.py`` measures each."""

    fused_pooler: bool = True  # RoIAlign over all FPN levels in one native call (False: one call per level)
    compile_heads: bool = False  # torch.compile the box and mask heads
    # NHWC (channels-last) activations and weights end to end, the reference only (benchmark.channels_last
    # puts all four in NHWC); on where measured faster: cpu_canonical (docs/results.md, "Levers")
    channels_last: bool = False
    fold_frozen_bn: bool = True  # each conv + FrozenBN of the backbone computed as one convolution
    keep_freed_memory: bool = (
        False  # glibc keeps freed host memory for reuse (reference_impl/engine/allocator.py)
    )
    batched_targets: bool = True  # proposals, matching, sampling, targets for the whole batch on the device
    cuda_graphs: bool = (
        False  # backbone + FPN trained through CUDA graphs, one pair per padded batch shape (CUDA only)
    )
    cuda_graph_shapes: int = Field(16, gt=0)  # at most this many batch shapes captured; others run eagerly
    # Not a speed switch: a planted slowdown, real extra work for measuring the regression gate's power
    # (docs/reliability.md, "The regression gate"). Extra backbone + FPN forward passes per training
    # iteration,
    # without grad, results discarded; a fraction runs on that share of the batch's rows. 0: off.
    recompute_backbone: float = Field(0.0, ge=0, le=8)


class DataConfig(_Section):
    # A COCO-style root (annotations/instances_{split}.json + {split}/ images). None: the embedded
    # synthetic set, generated on first use with the parameters below.
    root: str | None = None
    train_split: str = "train2017"
    val_split: str = "val2017"
    synth_images: int = Field(64, gt=0)
    synth_size: int = Field(256, ge=32)
    synth_seed: int = 0
    synth_categories: int = Field(80, ge=1, le=80)  # COCO's first N categories (80: the model is COCO's)


class Config(_Section):
    name: str
    description: str = ""
    model: ModelConfig = ModelConfig()
    input: InputConfig = InputConfig()
    solver: SolverConfig = SolverConfig()
    benchmark: BenchmarkConfig = BenchmarkConfig()
    data: DataConfig = DataConfig()
    reference: ReferenceOptions = ReferenceOptions()

    @model_validator(mode="after")
    def _check(self):
        world = self.benchmark.gpus
        if self.solver.ims_per_batch % (world * self.benchmark.grad_accum) != 0:
            raise ValueError(
                f"solver.ims_per_batch={self.solver.ims_per_batch} is not divisible by "
                f"benchmark.gpus ({world}) x benchmark.grad_accum ({self.benchmark.grad_accum})"
            )
        m = self.model
        if (
            m.calibrates_norm
            and not m.init_weights
            and not self.benchmark.shared_init
            and m.effective_norm != "BN"
        ):
            raise ValueError(
                f"model.backbone.norm {m.effective_norm} without model.weights needs benchmark.shared_init: "
                "true (its "
                "initialisation calibrates the frozen statistics on the run's images; each framework's own "
                "has none), or "
                "model.backbone.norm_without_weights: BN with freeze_at_without_weights: 0 (trainable BN, "
                "not the canonical model)"
            )
        return self

    @property
    def ims_per_process_step(self) -> int:
        """Images per process per forward/backward (the global batch over processes and accumulation)."""
        return self.solver.ims_per_batch // (self.benchmark.gpus * self.benchmark.grad_accum)

    def with_overrides(self, overrides: dict[str, Any], source: str = "<overrides>") -> Config:
        data = self.model_dump()
        for dotted, value in overrides.items():
            _set_dotted(data, dotted, value, source)
        return _validate(data, source)

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


def _set_dotted(data: dict, dotted: str, value: Any, source: str) -> None:
    node = data
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"{source}: unknown key '{'.'.join(parts[: i + 1])}'")
        if i == len(parts) - 1:
            node[part] = value
        else:
            node = node[part]


def _describe(err: dict) -> str:
    key = ".".join(str(p) for p in err["loc"]) or "<top level>"
    etype = err["type"]
    if etype == "extra_forbidden":
        return f"unknown key '{key}'"
    if etype == "missing":
        return f"missing required key '{key}'"
    got = err.get("input")
    got_s = f" (got {got!r} of type {type(got).__name__})" if not isinstance(got, dict) else ""
    if not err["loc"]:  # a rule across keys (a model validator): the keys its message names
        named = dict.fromkeys(
            re.findall(r"\b(?:model|input|solver|benchmark|data|reference)(?:\.\w+)+", err["msg"])
        )
        if named:
            return f"keys {', '.join(repr(k) for k in named)}: {err['msg']}"
    return f"key '{key}': {err['msg']}{got_s}"


def _validate(data: Any, source: str) -> Config:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        lines = [_describe(err) for err in e.errors()]
        raise ConfigError(f"{source}: invalid config:\n  " + "\n  ".join(lines)) from None


def load_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> Config:
    """Read and validate a YAML config; ``overrides`` maps dotted keys to values (already typed)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, expected a YAML config file")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{path}: cannot read config file: not UTF-8 text ({e.reason} at byte {e.start})"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    cfg = _validate(data, str(path))
    if overrides:
        cfg = cfg.with_overrides(overrides, source=f"{path} (with overrides)")
    return cfg


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=VALUE`` -> ("a.b", yaml-parsed VALUE), for ``--set`` on the command line."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. benchmark.iters=20")
    key, _, raw = text.partition("=")
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {text!r}: value is not valid YAML: {e}") from None


def builtin_config_dir() -> Path:
    """Where the canonical configs live (installed as package data mrcnn_bench.configs)."""
    from mrcnn_bench import configs

    return Path(configs.__path__[0])


def resolve_config_path(name_or_path: str) -> Path:
    """A path, or the name of a canonical config (``cpu_small`` -> configs/cpu_small.yaml)."""
    p = Path(name_or_path)
    if p.exists() or p.suffix in (".yaml", ".yml") or os.sep in name_or_path:
        return p
    return builtin_config_dir() / f"{name_or_path}.yaml"


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"a.b.c": value} for every leaf of a nested dict (a config, a record's section)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def with_defaults(config: dict) -> dict:
    """A recorded config with the keys it predates filled in with their defaults (a key added since is
    no difference when the older record ran with what is now its default); one this version cannot read
    is returned as written."""
    try:
        return Config.model_validate(config).model_dump(mode="json")
    except Exception:  # noqa: BLE001 - compared as written
        return config


def structure_differences_of(config: dict | None) -> dict[str, tuple]:
    """A recorded config's :meth:`ModelConfig.structure_differences` (nothing for one this version cannot
    read)."""
    try:
        return Config.model_validate(with_defaults(config or {})).model.structure_differences()
    except Exception:  # noqa: BLE001 - a record this version cannot read names nothing
        return {}
