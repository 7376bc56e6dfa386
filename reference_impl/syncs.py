"""Counting the points where a training step makes the host wait for the device.

On a GPU, an op whose result *size* or *value* the host needs (``nonzero``, boolean-mask indexing,
``.item()``, NMS's kept count, a copy to the CPU) blocks the Python thread until the device has
finished everything queued before it, so the host cannot run ahead and the GPU idles while Python
launches the next kernels. ``HostSyncCounter`` is a ``TorchDispatchMode`` that sees every aten (and
``mrcnn_bench``) op a step dispatches and counts those that force such a wait, with the line of the
model that asked for it. The count is a property of the code, not of the device: it is the same on
the CPU, where it can be measured without a GPU, as the number of stalls the step would have on one.
"""

from __future__ import annotations

import collections
import traceback
from pathlib import Path

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakIdKeyDictionary

aten = torch.ops.aten

# ops whose output size or value is data-dependent, so the host reads the device to go on
_ALWAYS = {
    aten.nonzero.default,
    aten.masked_select.default,
    aten._local_scalar_dense.default,  # .item(), int(t), float(t), bool(t), .tolist()
    aten.unique_consecutive.default,
    aten._unique2.default,
    aten.unique_dim.default,
    aten.equal.default,
    aten.is_nonzero.default,
    aten.repeat_interleave.Tensor,  # without output_size
}
_CUSTOM = {"mrcnn_bench::nms", "mrcnn_bench::batched_nms", "torchvision::nms"}
_BOOL_INDEXED = {
    aten.index.Tensor,
    aten.index_put.default,
    aten.index_put_.default,
    aten._index_put_impl_.default,
}
_PACKAGE = str(Path(__file__).resolve().parent)


def _forces_sync(func, args, kwargs) -> bool:
    if func in _ALWAYS or func.name() in _CUSTOM:
        return True
    if func in _BOOL_INDEXED:  # x[mask] and x[mask] = v go through nonzero(mask)
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        return any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices)
    if func is aten._to_copy.default:  # a copy of device data to the host (``to_host``, ``.cpu()``)
        if kwargs.get("device") is None or torch.device(kwargs["device"]).type != "cpu":
            return False
        # on the CPU, a cast that names the device (autocast's backward does) is not a read: only a plain copy
        # is
        return args[0].device.type != "cpu" or kwargs.get("dtype", args[0].dtype) == args[0].dtype
    if func is aten.copy_.default:
        return args[0].device.type == "cpu" and args[1].device.type != "cpu"
    return False


def to_host(t: torch.Tensor) -> list:
    """``t.tolist()``, where the host waits for the device. Spelled as an explicit copy to the CPU so
    that ``HostSyncCounter`` sees it on a CPU run too (there ``tolist`` reads memory without an op)."""
    return t.to("cpu", copy=True).tolist()


def _call_site() -> str:
    """The innermost frame in the reference implementation's own code: 'rpn.py:172 _losses'."""
    for frame in reversed(traceback.extract_stack()[:-3]):
        if frame.filename.startswith(_PACKAGE) and not frame.filename.endswith("syncs.py"):
            return f"{Path(frame.filename).name}:{frame.lineno} {frame.name}"
    return "(outside the reference implementation)"


class HostSyncCounter(TorchDispatchMode):
    """``with HostSyncCounter(model, images, targets) as c: model(images, targets)...backward()``,
    then ``c.total`` and ``c.by_site`` (a Counter of 'file:line function (op)').

    Which tensors would live on the GPU is followed through the step, so that a CPU run counts what a
    GPU run would wait for: the tensors given (parameters, buffers, inputs) are device tensors, and so
    is every op's output that has a device tensor among its inputs; a tensor a factory makes from
    nothing (``torch.tensor(shape)``, a small random draw) counts as a host one until it meets a
    device tensor (on the CPU the dispatcher cannot tell ``device=x.device`` from no device at all, so
    a factory told the device is counted from its first use with device data, which is where reading
    it would wait). On a GPU, any tensor not on the CPU is a device tensor whatever its origin.
    """

    def __init__(self, *on_device, sites: bool = True):
        super().__init__()
        self.sites, self.total, self.by_site = sites, 0, collections.Counter()
        self._device = WeakIdKeyDictionary()
        self.mark(*on_device)

    def mark(self, *on_device) -> None:
        """These tensors (or modules' parameters and buffers, or containers of tensors) are device data."""
        for obj in on_device:
            for t in _tensors(obj):
                self._device[t] = True

    def _is_device(self, obj) -> bool:
        return any(t.device.type != "cpu" or t in self._device for t in _tensors(obj))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        from_device = self._is_device((args, kwargs))
        if from_device and _forces_sync(func, args, kwargs):
            self.total += 1
            if self.sites:
                self.by_site[f"{_call_site()} ({func.name().split('::')[-1]})"] += 1
        out = func(*args, **kwargs)
        if from_device:
            for t in _tensors(out):
                self._device[t] = True
        return out


def _tensors(obj):
    if isinstance(obj, torch.nn.Module):
        return [*obj.parameters(), *obj.buffers()]
    return [t for t in pytree.tree_leaves(obj) if isinstance(t, torch.Tensor)]


def count_step_syncs(model: torch.nn.Module, images, targets, sites: bool = True) -> HostSyncCounter:
    """One training step (forward, backward of the summed losses) under the counter."""
    with HostSyncCounter(model, images, targets, sites=sites) as counter:
        losses = model(images, targets)
        sum(losses.values()).backward()
    return counter


def count_trainer_step_syncs(trainer, sites: bool = True) -> HostSyncCounter:
    """One ``Trainer.step()`` (data, forward, backward, optimizer) under the counter, its batch
    marked as device data as it arrives."""
    counter = HostSyncCounter(trainer.model, sites=sites)
    fetch = trainer.next_batch

    def marked():
        batch = fetch()
        counter.mark(batch)
        return batch

    trainer.next_batch = marked
    try:
        with counter:
            trainer.step()
    finally:
        del trainer.next_batch
    return counter
