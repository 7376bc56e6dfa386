"""Where each implementation spends its training step, timed the same way for all of them inside
their own training loops (``mrcnn-bench phases``, or ``benchmark.phases: true``).

Each adapter names its framework's parts (``PhaseProbe.time``: modules, or methods where the framework's
part is not a module); a forward pre-hook and a forward hook (or a wrapper) time each call, after a
device synchronize, and add it to the iteration's phase. The backward pass is the time from the end of
the model's forward to the optimizer's step (or the next forward, with gradient accumulation), the
optimizer the step itself (global optimizer step hooks, so the framework's own optimizer is seen), data
the loader wait the timer already records, and "other" what the iteration's time leaves. A part's
"rest" (the RPN's anchors, matching, sampling, proposals and loss; the RoI heads' matching, sampling,
targets and loss) is its whole less its network parts. A phase a framework does not have as a part gets
"—" and the reason, never 0.

The same probe counts the host-device waits of one step (``reference_impl/syncs.py``'s HostSyncCounter,
entered at the model's forward of iteration ``count_syncs_at`` and left when the step is stamped): the
count is a property of the code, the same on the CPU as the stalls a GPU would see.

The synchronizes and hooks cost time, so a phases run is a run of its own, not a throughput run.

With ``ranges`` (``mrcnn-bench trace``: harness/tasks/trace.py) the same parts open and close profiler
ranges instead (``torch.profiler.record_function``, named ``RANGE_PREFIX`` + the phase), with no
synchronize and no clock: the phases appear on the trace's timeline under the same names in all four.
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict

from .timing import TimerListener

# The phases, by name; PHASES gives the table's order.
DATA, PREPROCESS, BACKBONE, FPN = "data", "preprocess", "backbone", "fpn"
RPN_HEAD, RPN_REST = "rpn head", "rpn: anchors, matching, sampling, proposals, loss"
ROI_POOLING, BOX_HEAD, MASK_HEAD = "roi pooling", "box head", "mask head"
ROI_REST = "roi heads: matching, sampling, targets, loss"
BACKWARD, OPTIMIZER, OTHER = "backward", "optimizer", "other"
PHASES = [
    DATA,
    PREPROCESS,
    BACKBONE,
    FPN,
    RPN_HEAD,
    RPN_REST,
    ROI_POOLING,
    BOX_HEAD,
    MASK_HEAD,
    ROI_REST,
    BACKWARD,
    OPTIMIZER,
    OTHER,
]
# Wholes an adapter may time instead of (or besides) their parts: phase = whole less the parts timed.
RPN, ROI_HEADS, BACKBONE_FPN = "rpn", "roi heads", "backbone+fpn"
DERIVED = {
    FPN: (BACKBONE_FPN, (BACKBONE,)),
    RPN_REST: (RPN, (RPN_HEAD,)),
    ROI_REST: (ROI_HEADS, (ROI_POOLING, BOX_HEAD, MASK_HEAD)),
}
RANGE_PREFIX = "mrcnn-bench: "  # the profiler ranges of the phases (and of each iteration) in a trace
# The framework parts an adapter names (adapters/_common.phase_probe's keywords) and the phase or whole each
# times.
PARTS = {
    "preprocess": PREPROCESS,
    "backbone": BACKBONE,
    "fpn": FPN,
    "rpn_head": RPN_HEAD,
    "roi_pooling": ROI_POOLING,
    "box_head": BOX_HEAD,
    "mask_head": MASK_HEAD,
    "rpn": RPN,
    "roi_heads": ROI_HEADS,
    "backbone_fpn": BACKBONE_FPN,
}


class _Rebound:
    """A method replaced on an instance by its timed wrapper; ``remove`` puts back what was there."""

    def __init__(self, obj, name: str):
        self.obj, self.name = obj, name
        self.own = obj.__dict__.get(name)  # an instance attribute already there (else the class's method)

    def remove(self) -> None:
        if self.own is None:
            self.obj.__dict__.pop(self.name, None)
        else:
            setattr(self.obj, self.name, self.own)


class PhaseProbe(TimerListener):
    """Times the phases of each iteration and puts them on its record (a listener that completes it)."""

    completes_record = True

    def __init__(self, device: str, count_syncs_at: int | None = 0, ranges: bool = False):
        import torch

        self.ranges = ranges
        self._sync = (
            torch.cuda.synchronize if str(device).startswith("cuda") and not ranges else (lambda: None)
        )
        self._clock = time.perf_counter
        self.acc: dict[str, float] = defaultdict(float)
        self.missing: dict[str, str] = {}  # phase -> why this framework has no such part
        self.notes: list[str] = []
        self._starts: dict[str, list[float]] = defaultdict(list)
        self._forward_end: float | None = None
        self._handles: list = []
        self._count_syncs_at = count_syncs_at
        self._counter = None
        self._iteration = 0
        self.host_syncs: int | None = None

    # ------------------------------------------------------------------------- what is timed
    def _begin(self, key: str) -> None:
        if self.ranges:
            import torch

            self._starts[key].append(torch.profiler.record_function(RANGE_PREFIX + key).__enter__())
            return
        self._sync()
        self._starts[key].append(self._clock())

    def _end(self, key: str) -> None:
        if self.ranges:
            self._starts[key].pop().__exit__(None, None, None)
            return
        self._sync()
        self.acc[key] += self._clock() - self._starts[key].pop()

    def time(self, key: str, *parts) -> None:
        """Time every call of each part (a module, or an (object, method name) pair) into ``key``:
        a phase of PHASES, or a whole of DERIVED that a phase is derived from."""
        if key not in PARTS.values():
            raise ValueError(f"phase {key!r}: expected one of {', '.join(PARTS.values())}")
        for part in parts:
            if isinstance(part, tuple):
                obj, name = part
                method = getattr(obj, name)

                @functools.wraps(method)
                def timed(*args, _method=method, _key=key, **kwargs):
                    self._begin(_key)
                    try:
                        return _method(*args, **kwargs)
                    finally:
                        self._end(_key)

                self._handles.append(_Rebound(obj, name))
                setattr(obj, name, timed)
            else:
                self._handles.append(part.register_forward_pre_hook(lambda m, a, _k=key: self._begin(_k)))
                self._handles.append(part.register_forward_hook(lambda m, a, o, _k=key: self._end(_k)))

    def lacks(self, phase: str, reason: str) -> None:
        self.missing[phase] = reason

    # ------------------------------------------------------------------------- the whole step
    def attach(self, timer, model) -> PhaseProbe:
        """Hooks on the model's forward (the backward's start, the sync counter) and on every optimizer's
        step; the timer gives it each iteration's record and, at the end, has it remove them."""
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        def before_forward(module, args, kwargs):
            self._backward_until_now()
            if self._iteration == self._count_syncs_at and self._counter is None:
                from mrcnn_bench.reference_impl.syncs import HostSyncCounter

                self._counter = HostSyncCounter(model, args, kwargs, sites=False)
                self._counter.__enter__()

        def after_forward(module, args, kwargs, output):
            self._sync()
            self._forward_end = self._clock()
            if self.ranges:
                self._begin(BACKWARD)

        def before_step(optimizer, args, kwargs):
            self._backward_until_now()
            self._begin(OPTIMIZER)

        def after_step(optimizer, args, kwargs):
            self._end(OPTIMIZER)

        self._handles += [
            model.register_forward_pre_hook(before_forward, with_kwargs=True),
            model.register_forward_hook(after_forward, with_kwargs=True),
            register_optimizer_step_pre_hook(before_step),
            register_optimizer_step_post_hook(after_step),
        ]
        timer.listen(self)
        return self

    def _backward_until_now(self) -> None:
        if self._forward_end is not None:
            if self.ranges:
                self._end(BACKWARD)
            self._sync()
            self.acc[BACKWARD] += self._clock() - self._forward_end
            self._forward_end = None

    def after_step(self, record) -> None:
        """The iteration's phases (seconds) onto its record; resets for the next iteration."""
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self.host_syncs, self._counter = self._counter.total, None
            record.host_syncs = self.host_syncs
        self._backward_until_now()
        if self.ranges:  # the trace holds the phases; nothing is timed here
            self.acc.clear()
            self._iteration += 1
            return
        acc, phases = dict(self.acc), {}
        if record.data_time is not None:
            phases[DATA] = record.data_time
        for phase in PHASES:
            if phase in acc:
                phases[phase] = acc[phase]
        for phase, (whole, parts) in DERIVED.items():
            if whole in acc and any(p in acc for p in parts):
                phases[phase] = acc[whole] - sum(acc.get(p, 0.0) for p in parts)
        phases[OTHER] = record.duration - sum(v for k, v in phases.items() if k != OTHER)
        record.phases = phases
        self.acc.clear()
        self._iteration += 1

    def after_train(self) -> None:
        """Remove the hooks (the optimizer hooks are global: they would time every later optimizer)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()


def window_phases(rows: list[dict], warmup: int, end: int) -> dict[str, float] | None:
    """Milliseconds per iteration of each phase, the mean over the window (means add up to the mean
    iteration; medians would not)."""
    window = [r["phases"] for r in rows if warmup <= r["iter"] < end and r.get("phases")]
    if not window:
        return None
    keys = [p for p in PHASES if all(p in w for w in window)]
    return {p: 1e3 * sum(w[p] for w in window) / len(window) for p in keys}
