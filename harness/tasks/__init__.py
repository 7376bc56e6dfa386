"""The tasks of a run (``benchmark.task``, ``run --task``), as a table: each task is one module with a
``Task`` that says what it needs before anything starts (``check``), what the launcher announces
(``work``), what each worker rank does (``run``) and its part of the report (``section``, and the
``compact`` table that ``report --into`` puts in the README's ``readme_section``).

A new task is a module here and a line in ``_BUILTIN``; a plugin's tasks come from the modules named in
``MRCNN_BENCH_TASKS`` (comma-separated), each defining ``TASKS``, a list of Task instances. Importing
this package imports no framework and no torch.
"""

from __future__ import annotations

import importlib
import os

from .base import RankContext, Task, TaskError, one_process, val_split

__all__ = ["RankContext", "Task", "TaskError", "one_process", "task_of", "tasks", "val_split"]

_BUILTIN = {
    "train": "train:Train",
    "eval": "eval:Eval",
    "infer": "infer:Infer",
    "data": "data:Data",
    "trace": "trace:Trace",
    "step": "step:Step",
}
_loaded: dict[str, Task] | None = None


def tasks() -> dict[str, Task]:
    """Every task by name: the built-in ones, then those of the modules in MRCNN_BENCH_TASKS."""
    global _loaded
    if _loaded is None:
        found = {}
        for name, where in _BUILTIN.items():
            module, cls = where.split(":")
            found[name] = getattr(importlib.import_module(f"{__name__}.{module}"), cls)()
        for module in filter(None, os.environ.get("MRCNN_BENCH_TASKS", "").split(",")):
            for task in importlib.import_module(module.strip()).TASKS:
                found[task.name] = task
        _loaded = found
    return _loaded


def task_of(name: str) -> Task:
    try:
        return tasks()[name]
    except KeyError:
        raise TaskError(f"unknown task {name!r}; known: {', '.join(tasks())}") from None
