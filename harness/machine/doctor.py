"""``mrcnn-bench doctor``: the machine's state before a run, each finding ok / warning / bad with the reason.
The launcher records the same findings in every run.json (``machine_state``), taken just before the run
starts, so a number can be read with the state it was measured in.

The CPU part reads Linux's sysfs (the frequency governor and turbo, as ``pyperf system show`` reads them)
and psutil (load against cores, free memory); the GPU part reads NVML (nvidia-ml-py): driver and CUDA
versions, and per GPU the processes already on it, persistence mode, ECC, MIG, application clocks
against their defaults, and the current clock-event (throttle) reasons.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from .nvml import THROTTLE_BITS, _try, nvml_or_reason, throttle_reasons

CPU = Path("/sys/devices/system/cpu")
LEVELS = ("ok", "warning", "bad")


@dataclass(frozen=True)
class Finding:
    check: str
    value: str
    level: str  # ok, warning, bad
    why: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cpu_findings(cpu_root: Path = CPU) -> list[Finding]:
    import psutil

    found = []
    governors = {
        g for g in (_read(p) for p in sorted(cpu_root.glob("cpu[0-9]*/cpufreq/scaling_governor"))) if g
    }
    if not governors:
        found.append(
            Finding(
                "CPU governor",
                "not exposed",
                "warning",
                "no cpufreq in sysfs (a container or VM): the frequency policy is unknown",
            )
        )
    elif governors == {"performance"}:
        found.append(Finding("CPU governor", "performance", "ok"))
    else:
        found.append(
            Finding(
                "CPU governor",
                ", ".join(sorted(governors)),
                "warning",
                "the clock follows the load: timings vary (performance holds it; pyperf system tune sets it)",
            )
        )
    no_turbo, boost = _read(cpu_root / "intel_pstate" / "no_turbo"), _read(cpu_root / "cpufreq" / "boost")
    if no_turbo is None and boost is None:
        found.append(
            Finding("CPU turbo", "not exposed", "ok", "no intel_pstate or cpufreq boost switch to read")
        )
    elif no_turbo == "1" or boost == "0":
        found.append(Finding("CPU turbo", "off", "ok"))
    else:
        found.append(
            Finding(
                "CPU turbo", "on", "warning", "the clock depends on temperature and on the other cores' load"
            )
        )
    cores = psutil.cpu_count() or 1
    load = os.getloadavg()[0]
    level = "bad" if load > cores else "warning" if load > cores / 2 else "ok"
    found.append(
        Finding(
            "load average (1 min)",
            f"{load:.2f} on {cores} cores",
            level,
            {
                "bad": "more runnable work than cores: the run will share them",
                "warning": "other work holds more than half the cores",
                "ok": "",
            }[level],
        )
    )
    memory = psutil.virtual_memory()
    share = memory.available / memory.total
    level = "bad" if share < 0.10 else "warning" if share < 0.25 else "ok"
    found.append(
        Finding(
            "free memory",
            f"{memory.available / 2**30:.1f} of {memory.total / 2**30:.1f} GiB",
            level,
            "" if level == "ok" else "little memory left: swapping or the OOM killer may stop the run",
        )
    )
    return found


def gpu_findings(required: bool) -> list[Finding]:
    """The GPUs' state through NVML; without NVML, one finding: bad where the run needs a GPU."""
    nvml, why = nvml_or_reason()
    if nvml is None:
        return [
            Finding(
                "NVML",
                "absent",
                "bad" if required else "ok",
                f"{why}: the GPUs' state is not checked" if required else f"{why} (not needed on the CPU)",
            )
        ]
    found = [Finding("NVIDIA driver", str(_try(nvml.nvmlSystemGetDriverVersion)), "ok")]
    cuda = _try(nvml.nvmlSystemGetCudaDriverVersion)
    if cuda:
        found.append(Finding("CUDA (driver)", f"{cuda // 1000}.{cuda % 1000 // 10}", "ok"))
    for i in range(nvml.nvmlDeviceGetCount()):
        h = nvml.nvmlDeviceGetHandleByIndex(i)
        name = f"GPU {i}"
        procs = _try(nvml.nvmlDeviceGetComputeRunningProcesses, h, default=[]) or []
        found.append(
            Finding(
                f"{name} processes",
                ", ".join(str(p.pid) for p in procs) or "none",
                "bad" if procs else "ok",
                "another process computes on it: the run shares the GPU" if procs else "",
            )
        )
        persistence = _try(nvml.nvmlDeviceGetPersistenceMode, h)
        found.append(
            Finding(
                f"{name} persistence mode",
                {1: "on", 0: "off"}.get(persistence, "unknown"),
                "ok" if persistence == 1 else "warning",
                ""
                if persistence == 1
                else "the driver may unload between runs: the first CUDA call is slower",
            )
        )
        ecc = _try(nvml.nvmlDeviceGetEccMode, h)
        found.append(
            Finding(
                f"{name} ECC",
                "on" if ecc and ecc[0] else "off" if ecc else "not supported",
                "ok",
                "ECC costs some memory bandwidth: compare runs with the same setting" if ecc else "",
            )
        )
        mig = _try(nvml.nvmlDeviceGetMigMode, h)
        on = bool(mig and mig[0])
        found.append(
            Finding(
                f"{name} MIG",
                "on" if on else "off" if mig else "not supported",
                "warning" if on else "ok",
                "a MIG slice has a fraction of the GPU's engines and memory" if on else "",
            )
        )
        app = _try(nvml.nvmlDeviceGetApplicationsClock, h, nvml.NVML_CLOCK_SM)
        default = _try(nvml.nvmlDeviceGetDefaultApplicationsClock, h, nvml.NVML_CLOCK_SM)
        if app is not None and default is not None:
            found.append(
                Finding(
                    f"{name} application clock (SM)",
                    f"{app} MHz (default {default})",
                    "ok" if app == default else "warning",
                    ""
                    if app == default
                    else "set away from the default (nvidia-smi -ac): another card's "
                    "numbers are not comparable",
                )
            )
        bits = throttle_reasons(nvml, h) or 0
        reasons = [n for n, b in THROTTLE_BITS.items() if bits & b]
        found.append(
            Finding(
                f"{name} throttle",
                ", ".join(reasons) or "none",
                "bad" if reasons else "ok",
                "slowed by heat or power before the run starts" if reasons else "",
            )
        )
    _try(nvml.nvmlShutdown)
    return found


def findings(device: str = "cpu") -> list[Finding]:
    return cpu_findings() + gpu_findings(required=device.startswith("cuda"))


def machine_state(device: str) -> dict:
    """run.json's ``machine_state``: the findings and the load average they were taken at."""
    return {"load_average": list(os.getloadavg()), "findings": [f.to_dict() for f in findings(device)]}


def render(state: dict, fmt: str = "md") -> str:
    """``doctor``'s output: the findings as a Markdown table, or the whole state as JSON."""
    import json

    import pandas as pd

    if fmt == "json":
        return json.dumps(state, indent=2)
    return pd.DataFrame(state["findings"]).to_markdown(index=False, disable_numparse=True)
