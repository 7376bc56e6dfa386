"""The adapter contract: what every implementation fills in, and nothing more.

An adapter translates the canonical config to its framework's own config, reads the effective
hyperparameters back out of that native config, and runs the framework's own training loop with the
harness timer attached. Adapters never import one another, and importing an adapter module never
imports its framework: that happens in ``available()`` and later.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any


class AdapterUnavailable(RuntimeError):
    """The implementation is not installed (the message says how to install it)."""


class UnsupportedConfig(ValueError):
    """The canonical config asks for something this framework cannot express."""


@dataclass(frozen=True)
class TaskTraits:
    """What the worker tells an adapter of the task it runs (harness/tasks), so that no adapter reads the
    task table: whether the task trains (else its path is an inference one, under the harness's
    autocast, not the framework's AMP trainer), and whether the phases are profiler ranges (a trace)
    rather than timed."""

    trains: bool = True
    phase_ranges: bool = False


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the process group the launcher started."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"  # "cpu" or "cuda:<local_rank>"
    backend: str | None = None  # None: no process group (a single process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None and self.world_size > 1


# What every adapter's ``effective_hparams`` reports, read back from the framework's own objects: the
# canonical keys it can be compared on (``model.backbone.norm`` and ``freeze_at`` as the run uses them,
# ``solver.ims_per_batch_per_process`` where the canonical config has the global batch), and ``info.*``
# facts beyond the canonical config (how targets and matches are made). ``mrcnn-bench parity`` tabulates
# them; ``tests/test_work_parity.py`` checks that each built-in adapter reports exactly these.
CANONICAL_HPARAM_KEYS: tuple[str, ...] = (
    "input.aspect_ratio_grouping",
    "input.filter_empty_annotations",
    "input.horizontal_flip_prob",
    "input.max_size_test",
    "input.max_size_train",
    "input.min_size_test",
    "input.min_size_train",
    "input.resize_rounding",
    "model.anchors.aspect_ratios",
    "model.anchors.round_to_pixels",
    "model.anchors.sizes",
    "model.backbone.depth",
    "model.backbone.freeze_at",
    "model.backbone.norm",
    "model.fpn_out_channels",
    "model.num_classes",
    "model.pixel_mean",
    "model.pixel_std",
    "model.roi_heads.batch_size_per_image",
    "model.roi_heads.bg_iou_thresh",
    "model.roi_heads.box_head_fc_dim",
    "model.roi_heads.box_head_num_fc",
    "model.roi_heads.box_pooler_resolution",
    "model.roi_heads.detections_per_image",
    "model.roi_heads.fg_iou_thresh",
    "model.roi_heads.mask_head_conv_dim",
    "model.roi_heads.mask_head_num_conv",
    "model.roi_heads.mask_pooler_resolution",
    "model.roi_heads.mask_target",
    "model.roi_heads.nms_thresh_test",
    "model.roi_heads.pooler_aligned",
    "model.roi_heads.pooler_sampling_ratio",
    "model.roi_heads.positive_fraction",
    "model.roi_heads.score_thresh_test",
    "model.roi_heads.smooth_l1_beta",
    "model.rpn.batch_size_per_image",
    "model.rpn.bg_iou_thresh",
    "model.rpn.fg_iou_thresh",
    "model.rpn.low_quality_matches",
    "model.rpn.low_quality_min_iou",
    "model.rpn.min_proposal_size",
    "model.rpn.nms_thresh",
    "model.rpn.positive_fraction",
    "model.rpn.post_nms_topk_scope",
    "model.rpn.post_nms_topk_test",
    "model.rpn.post_nms_topk_train",
    "model.rpn.pre_nms_topk_test",
    "model.rpn.pre_nms_topk_train",
    "model.rpn.smooth_l1_beta",
    "solver.base_lr",
    "solver.gamma",
    "solver.ims_per_batch_per_process",
    "solver.momentum",
    "solver.steps",
    "solver.warmup_factor",
    "solver.warmup_iters",
    "solver.warmup_method",
    "solver.weight_decay",
    "solver.weight_decay_norm",
)
INFO_HPARAM_KEYS: tuple[str, ...] = (
    "info.backbone_style",
    "info.resize_interpolation",
    "info.roi_gt_as_proposals",
    "info.roi_low_quality_matches",
)
EFFECTIVE_HPARAM_KEYS: frozenset[str] = frozenset(CANONICAL_HPARAM_KEYS + INFO_HPARAM_KEYS)


class Adapter(abc.ABC):
    #: the name used on the command line (``--impl``) and in results
    name: str = ""
    #: shown when the implementation is not installed
    install_hint: str = ""
    #: the framework's model after ``train`` (what ``--task eval`` scores); None before
    trained_model = None
    #: the task being run, as the worker tells it before ``translate`` (a training run otherwise)
    task: TaskTraits = TaskTraits()

    @abc.abstractmethod
    def available(self) -> tuple[bool, str]:
        """(True, version) when the framework imports; (False, why + how to install) otherwise."""

    @abc.abstractmethod
    def translate(self, cfg, data=None) -> Any:
        """The canonical config (and data paths) as the framework's own config object."""

    @abc.abstractmethod
    def effective_hparams(self, native) -> dict[str, Any]:
        """``EFFECTIVE_HPARAM_KEYS`` -> values read back out of ``native`` (not out of the canonical
        config). A ``_notes`` entry may map keys to a sentence on why the framework differs."""

    @abc.abstractmethod
    def train(self, cfg, data, timer, dist: DistInfo, native=None) -> dict:
        """Run the framework's own training loop for ``cfg.benchmark.iters`` iterations, calling
        ``timer.before_train()`` once and ``timer.after_step(...)`` after every optimizer step.
        ``native``: ``translate(cfg, data)`` as the worker made it (translated once per run; None: translate
        here). Returns extra facts for run.json (e.g. the native config as text)."""

    def input_pipeline(self, cfg, data, dist: DistInfo, native=None):
        """The training input pipeline alone, for ``--task data``: (an iterator of the batches the
        framework's own training loop consumes, in the run's data order, from its own dataset, mapper,
        sampler and collate; ``to_device(batch) -> images``, the copy to the device its loop makes,
        returning how many images the batch holds)."""
        raise NotImplementedError(f"{self.name}: no input pipeline for --task data yet")

    def loader_stages(self, native):
        """The calls of the training loader that hold each stage of ``--task data``'s split (read, decode,
        transform, collate): a ``harness.data_stages.LoaderStages``."""
        raise NotImplementedError(f"{self.name}: its loader's stages are not named (Adapter.loader_stages)")

    def translated(self, cfg, data, native=None):
        """``native`` where the caller has translated ``cfg`` already, else ``translate(cfg, data)``."""
        return native if native is not None else self.translate(cfg, data)

    def divergences(self, cfg) -> dict[str, str]:
        """The canonical keys whose value in ``cfg`` this framework cannot run as asked -> what it does
        instead (or what it supports). Pure Python, no framework import: the harness asks it before
        anything starts, and stops the run (exit 2) on a key not in ``benchmark.allow_divergent``."""
        return {}

    def lr_trajectory(self, native, n: int) -> list[float]:
        """The learning rate of optimizer steps 0..n-1 as the framework's own scheduler, built from
        ``native`` the way its trainer builds it, sets it (probed on a stand-in parameter). The parity
        table reads warm-up and steps from this, not from the config's keys."""
        raise NotImplementedError(f"{self.name}: no learning-rate probe")

    def forward_features(self, cfg, images) -> dict:
        """The framework's own backbone + FPN and RPN head, built from ``cfg`` with ``model.init_weights``
        loaded, in training mode, on ``images`` (normalised and padded, [N, 3, H, W]): the outputs per
        level, as ``common.forward_outputs`` names them. ``mrcnn-bench parity --check-forward`` compares
        them between implementations: with shared weights they compute the same function."""
        raise NotImplementedError(f"{self.name}: no forward check")

    def torchvision_names(self, state: dict) -> dict:
        """A state dict of the framework's model (or any dict of tensors shaped as its parameters, such as
        their gradients) in torchvision's Mask R-CNN names and layout: how ``parity --check-step`` compares
        gradients between frameworks."""
        raise NotImplementedError(f"{self.name}: no conversion to torchvision's layout")

    def predictor(self, cfg, data, dist: DistInfo, model=None, native=None):
        """The framework's own eval path as a callable, for ``--task infer`` and ``--task eval``
        (harness/engine/inference.py): a list of decoded RGB images (uint8 tensors [3, H, W] on the host) ->
        per image a dict of ``boxes`` [N, 4] (x1, y1, x2, y2 at the image's size), ``scores`` [N],
        ``labels`` [N] (1..K, the K-th category by id) and ``masks`` [N, H, W] pasted at the image's size
        (probabilities, or 0/1). The framework does its own copy to the device, resizing to
        ``input.min_size_test``/``max_size_test``, normalising and pasting, with the test settings of
        ``model.roi_heads`` (score and NMS thresholds, detections per image). ``model``: the framework's
        model as ``train`` left it (``self.trained_model``); None: built from ``cfg`` (``native``, its
        translation where the caller has made it) with ``model.init_weights`` loaded."""
        raise NotImplementedError(f"{self.name}: no inference path")

    def require(self) -> str:
        ok, info = self.available()
        if not ok:
            raise AdapterUnavailable(f"implementation '{self.name}' is not available: {info}")
        return info


def python_version_of(module_name: str) -> tuple[bool, str]:
    """(True, version) if the module imports, else (False, the import error)."""
    import importlib

    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # an installed but broken framework is "unavailable" with its reason
        return False, f"import {module_name} failed: {type(e).__name__}: {e}"
    return True, str(getattr(module, "__version__", "unknown"))
