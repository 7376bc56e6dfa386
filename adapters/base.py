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


class Adapter(abc.ABC):
    #: the name used on the command line (``--impl``) and in results
    name: str = ""
    #: shown when the implementation is not installed
    install_hint: str = ""

    @abc.abstractmethod
    def available(self) -> tuple[bool, str]:
        """(True, version) when the framework imports; (False, why + how to install) otherwise."""

    @abc.abstractmethod
    def translate(self, cfg, data=None) -> Any:
        """The canonical config (and data paths) as the framework's own config object."""

    @abc.abstractmethod
    def effective_hparams(self, native) -> dict[str, Any]:
        """Canonical dotted keys -> values read back out of ``native`` (not out of the canonical
        config). A ``_notes`` entry may map keys to a sentence on why the framework differs."""

    @abc.abstractmethod
    def train(self, cfg, data, timer, dist: DistInfo) -> dict:
        """Run the framework's own training loop for ``cfg.benchmark.iters`` iterations, calling
        ``timer.before_train()`` once and ``timer.after_step(...)`` after every optimizer step.
        Returns extra facts for run.json (e.g. the native config as text)."""

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

    def infer(self, cfg, data, timer, dist: DistInfo) -> dict:
        """The inference benchmark; optional."""
        raise NotImplementedError(f"{self.name}: no inference benchmark")

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
