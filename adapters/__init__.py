"""One module per implementation; adding an implementation is adding one file here.

Each module defines ``ADAPTER``, an instance of :class:`~mrcnn_bench.adapters.base.Adapter`.
Modules are discovered by name and imported only when asked for, so listing them imports no
framework.
"""
from __future__ import annotations

import importlib
import pkgutil

_NOT_ADAPTERS = {"base", "common"}
#: the order implementations run and are listed in
PREFERRED_ORDER = ["reference", "torchvision", "detectron2", "mmdet"]


def adapter_names() -> list[str]:
    names = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_") and m.name not in _NOT_ADAPTERS]
    return sorted(names, key=lambda n: (PREFERRED_ORDER.index(n) if n in PREFERRED_ORDER else len(PREFERRED_ORDER), n))


def get_adapter(name: str):
    names = adapter_names()
    if name not in names:
        raise KeyError(f"unknown implementation '{name}'; known: {', '.join(names)}")
    module = importlib.import_module(f"{__name__}.{name}")
    return module.ADAPTER
