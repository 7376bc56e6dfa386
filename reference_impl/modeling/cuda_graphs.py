"""CUDA graphs for the dense part of the network (ResNet + FPN), one pair of graphs per input shape.

A training step of R-50-FPN launches several hundred small kernels in the backbone's forward and
backward; at 2 images per GPU the launch queue, not the arithmetic, bounds them on a fast GPU. NVIDIA's
MLPerf Mask R-CNN replays the backbone as a CUDA graph for that reason. The rest of the model has
data-dependent shapes (proposals, sampled RoIs, positive masks) and stays eager.

A graph replays fixed shapes at fixed addresses, so one forward and one backward graph are captured
(``torch.cuda.make_graphed_callables``) the first time a padded batch shape is seen, up to
``max_shapes`` of them; further shapes, evaluation and no-grad calls run eagerly. With the synthetic
set, or COCO resized to one size, that is one capture; COCO's 800 x up-to-1333 multi-aspect batches
make a few dozen padded shapes (size_divisibility 32), so set ``max_shapes`` by the memory you have.
All captures share one memory pool: a training step runs one shape's forward and then its backward
before any other shape's forward, which is the condition for sharing it.

Two things ``make_graphed_callables`` does that a training run must not see: its warm-up and capture
run the module four times on the first batch of a shape (BatchNorm's running statistics move: they
are put back after the capture), and its backward returns parameter gradients in the graph's static
memory, which autograd keeps as ``.grad`` and a second replay overwrites under gradient accumulation
(each parameter gets a hook that hands autograd a copy instead, ~100 MB of copies a step).
"""

from __future__ import annotations

import copy
import warnings
from collections import Counter
from collections.abc import Callable

import torch
from torch import nn


class _Call(nn.Module):
    """A fresh module around ``inner`` per shape: make_graphed_callables replaces *its* forward."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


class GraphedByShape:
    """Calls ``module(x)`` (one tensor in, tensors out) through CUDA graphs captured per input shape.

    Not an ``nn.Module`` on purpose: the parameters stay where they are (state dicts, DDP and the
    optimizer see the same tensors), and a copy (``copy.deepcopy``, as the FLOP counter makes) runs
    eagerly, since graphs belong to the original's memory. ``capture`` defaults to
    ``torch.cuda.make_graphed_callables`` (tests substitute a stand-in with the same contract).
    ``stats`` counts captures, replays and eager calls.
    """

    def __init__(self, module: nn.Module, *, max_shapes: int, capture: Callable | None = None):
        self.module = module
        self.max_shapes = max_shapes
        self._capture = capture
        self._graphed: dict[tuple, Callable] = {}
        self._pool = None
        self._grad_hooks = []
        self._warned_full = False
        self.stats: Counter = Counter()

    def __deepcopy__(self, memo):
        return GraphedByShape(copy.deepcopy(self.module, memo), max_shapes=0)

    @staticmethod
    def key(x: torch.Tensor) -> tuple:
        """What a graph is specific to: shape, layout, dtype, device and the autocast state."""
        device = x.device.type
        autocast = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        return tuple(x.shape), x.stride(), x.dtype, str(x.device), autocast

    def __call__(self, x: torch.Tensor):
        if not (self.module.training and torch.is_grad_enabled()) or self.max_shapes <= 0:
            self.stats["eager"] += 1
            return self.module(x)
        if self._capture is None and x.device.type != "cuda":
            raise RuntimeError(f"CUDA graphs need the model on a CUDA device; the batch is on {x.device}")
        key = self.key(x)
        graphed = self._graphed.get(key)
        if graphed is None:
            if len(self._graphed) >= self.max_shapes:
                if not self._warned_full:
                    warnings.warn(
                        f"CUDA graphs: {self.max_shapes} input shapes captured "
                        "(reference.cuda_graph_shapes); "
                        f"further shapes run eagerly",
                        stacklevel=2,
                    )
                    self._warned_full = True
                self.stats["eager"] += 1
                return self.module(x)
            graphed = self._graphed[key] = self._capture_shape(x)
            self.stats["captured"] += 1
        self.stats["replayed"] += 1
        return graphed(x)

    def _capture_shape(self, x: torch.Tensor) -> Callable:
        capture = self._capture or torch.cuda.make_graphed_callables
        if self._pool is None and self._capture is None:
            self._pool = torch.cuda.graph_pool_handle()
        if not self._grad_hooks:
            # autograd keeps the graph's static gradient as .grad (it holds the only reference to that
            # tensor object): give it a copy, so that the next replay cannot rewrite an accumulated .grad
            self._grad_hooks = [
                p.register_hook(torch.clone) for p in self.module.parameters() if p.requires_grad
            ]
        saved = {name: b.clone() for name, b in self.module.named_buffers()}
        graphed = capture(_Call(self.module), (x.detach().clone(),), pool=self._pool)
        with torch.no_grad():  # the warm-up and capture ran the module on this batch: undo their BN updates
            for name, b in self.module.named_buffers():
                b.copy_(saved[name])
        return graphed
