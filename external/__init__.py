"""Systems measured from their own logs: one module per system that cannot live beside the suite's
torch (old PyTorch with apex, TensorFlow 1, MXNet, Caffe2, Keras). Each writes the system's native
configuration from the canonical config, lists what it cannot match, gives the command for the
system's own container, and names the log format ``mrcnn-bench ingest`` reads (``harness/records/logs.py``).

Modules here are discovered by name (``base`` is the contract), as ``adapters/`` are.
"""

from __future__ import annotations

import importlib
import pkgutil

CONTRACT = "base"


def _module_name(system: str) -> str:
    return system.replace("-", "_")


def system_names() -> list[str]:
    names = []
    for m in pkgutil.iter_modules(__path__):
        if m.name != CONTRACT and not m.name.startswith("_"):
            names.append(importlib.import_module(f"{__name__}.{m.name}").SYSTEM.name)
    return sorted(names)


def get_system(name: str):
    if name not in system_names():
        raise KeyError(f"unknown external system '{name}'; known: {', '.join(system_names())}")
    return importlib.import_module(f"{__name__}.{_module_name(name)}").SYSTEM
