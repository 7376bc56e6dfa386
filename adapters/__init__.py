"""One module per implementation; adding an implementation is adding one file here.

Every adapter module, here or elsewhere, defines ``ADAPTERS``: a list of instances of
:class:`~mrcnn_bench.adapters.base.Adapter` (one for each built-in). The modules here are discovered
by name and imported only when asked for, so listing them imports no framework; ``base`` (the contract)
and private modules (``_common``, the helpers the adapters share, and the frameworks' hook classes) are
not adapters. Implementations outside this package are added without editing it: name their modules in
``MRCNN_BENCH_EXTRA_ADAPTERS`` (comma-separated import paths).
"""

from __future__ import annotations

import importlib
import os
import pkgutil

CONTRACT = "base"  # the one public module here that is not an adapter
#: the order implementations run and are listed in
PREFERRED_ORDER = ["reference", "torchvision", "detectron2", "mmdet"]


def _extra_adapters() -> dict:
    extra = {}
    for module_name in filter(
        None, (m.strip() for m in os.environ.get("MRCNN_BENCH_EXTRA_ADAPTERS", "").split(","))
    ):
        for adapter in importlib.import_module(module_name).ADAPTERS:
            extra[adapter.name] = adapter
    return extra


def adapter_names() -> list[str]:
    names = [
        m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_") and m.name != CONTRACT
    ]
    names += [n for n in _extra_adapters() if n not in names]
    return sorted(
        names, key=lambda n: (PREFERRED_ORDER.index(n) if n in PREFERRED_ORDER else len(PREFERRED_ORDER), n)
    )


def get_adapter(name: str):
    extra = _extra_adapters()
    if name in extra:
        return extra[name]
    names = adapter_names()
    if name not in names:
        raise KeyError(f"unknown implementation '{name}'; known: {', '.join(names)}")
    module = importlib.import_module(f"{__name__}.{name}")
    return next(a for a in module.ADAPTERS if a.name == name)
