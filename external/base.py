"""The contract of an external system (``external/``): what the suite needs to put a system it cannot
run in-process into its tables."""

from __future__ import annotations

import abc
import shlex
from dataclasses import dataclass


@dataclass
class Translation:
    """The system's native configuration: files to write (name -> text), the command to run inside
    the system's container (with the files at ``/mrcnn-bench`` and the data at ``/data/coco``), and
    what the configuration cannot match of the canonical one."""

    files: dict[str, str]
    command: str  # a shell command line, run in the system's working folder
    mismatches: list[str]


class ExternalSystem(abc.ABC):
    """One system; each module makes its instance, ``SYSTEM``, with the system's identity."""

    def __init__(
        self,
        name: str,
        title: str,
        home: str,
        *,
        log_format: str,
        workdir: str = "/",
        image: str | None = None,
    ):
        self.name = name  # --impl NAME
        self.title = title  # as the tables name it
        self.home = home  # where the system lives
        self.log_format = log_format  # a key of harness.logs.FORMATS
        self.workdir = workdir  # where the command runs in the container
        self.image = image  # a public container image (with docker/<name>.Dockerfile) or None

    def images_per_iteration(self, cfg) -> int:
        """Images one iteration of the system consumes in all (what its log's iterations are worth)."""
        return cfg.solver.ims_per_batch

    @abc.abstractmethod
    def translate(self, cfg) -> Translation:
        """The native configuration of canonical config ``cfg`` (its ``benchmark.iters`` iterations on
        ``benchmark.gpus`` GPUs, ``solver.ims_per_batch`` images per iteration in all)."""

    def docker_command(
        self, image: str, run_dir: str, data_root: str | None, translation: Translation
    ) -> list[str]:
        """``docker run`` of the translation written to ``run_dir`` (mounted at /mrcnn-bench), the data at
        /data/coco; the training log goes to stdout and to /mrcnn-bench/train.log."""
        mounts = ["-v", f"{run_dir}:/mrcnn-bench"] + (
            ["-v", f"{data_root}:/data/coco:ro"] if data_root else []
        )
        inner = f"set -o pipefail; ({translation.command}) 2>&1 | tee /mrcnn-bench/train.log"
        return [
            "docker",
            "run",
            "--rm",
            "--gpus",
            "all",
            "--ipc=host",
            *mounts,
            "-w",
            self.workdir,
            image,
            "bash",
            "-c",
            inner,
        ]


def gpus_and_batch(cfg) -> tuple[int, int, int]:
    """(GPUs, global images per iteration, images per GPU) of the canonical config."""
    gpus = cfg.benchmark.gpus
    return gpus, cfg.solver.ims_per_batch, cfg.solver.ims_per_batch // gpus


def common_mismatches(cfg) -> list[str]:
    """What no external system here matches of the canonical config: the suite's shared initial
    weights and data order are its own."""
    notes = [
        "initial weights: the system's own initialisation or checkpoint, not the suite's shared one "
        "(model.init_weights)",
        "data order: the system's own sampler, not the suite's one order",
    ]
    if cfg.benchmark.dtype != "fp32":
        notes.append(
            f"benchmark.dtype={cfg.benchmark.dtype}: mixed precision as the system does it, where it can"
        )
    return notes


def shell(*args: str) -> str:
    return shlex.join(args)


# Run a training command and stop it once its log shows the run past N iterations (for systems whose
# loop runs whole epochs); shipped into the run folder as stop_after.py.
STOP_AFTER = '''"""Written by mrcnn-bench: run COMMAND, print its output, stop it after the log shows N
iterations.

    python stop_after.py N PATTERN -- COMMAND...

PATTERN is a regular expression whose first group is the completed-iteration count on a log line.
"""
import re
import subprocess
import sys

n, pattern = int(sys.argv[1]), re.compile(sys.argv[2])
command = sys.argv[sys.argv.index("--") + 1:]
child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
for line in child.stdout:
    sys.stdout.write(line)
    sys.stdout.flush()
    m = pattern.search(line)
    if m and int(m.group(1)) >= n:
        child.terminate()
        sys.stdout.write("stop_after: %d iterations reached, training stopped\\n" % n)
        sys.exit(0)
sys.exit(child.wait())
'''
