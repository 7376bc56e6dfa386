"""A stand-in for nvidia-ml-py's ``pynvml`` on machines without a GPU: the bindings' names (those the
harness calls), answering from ``$FAKE_NVML``, a JSON file:

    {"driver": "580.65", "cuda": 13000, "t0": <seconds since the epoch>,
     "gpus": [{"power_w": 300, "util": 90, "memory_util": 40, "sm_mhz": 1980, "memory_mhz": 2619,
               "temperature_c": 60, "throttle": 64, "memory_used": 2e9, "pids": [999999],
               "persistence": 0, "ecc": [1, 1], "mig": [0, 0], "app_clock": 1755, "default_app_clock": 1755}]}

The energy counter grows at the GPU's constant ``power_w`` from ``t0`` (mJ = mW x s): a window of S seconds
holds power_w x S joules, what a test can compute without the sampler's arithmetic.
"""

import json
import os
import time
from types import SimpleNamespace

NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0


class NVMLError(Exception):
    pass


_spec = {}


def nvmlInit():
    with open(os.environ["FAKE_NVML"]) as f:
        _spec.update(json.load(f))


def nvmlShutdown():
    pass


def nvmlSystemGetDriverVersion():
    return _spec["driver"]


def nvmlSystemGetCudaDriverVersion():
    return _spec["cuda"]


def nvmlDeviceGetCount():
    return len(_spec["gpus"])


def nvmlDeviceGetHandleByIndex(i):
    return _spec["gpus"][i]


def nvmlDeviceGetTotalEnergyConsumption(g):
    return int(g["power_w"] * 1e3 * (time.time() - _spec["t0"]))


def nvmlDeviceGetUtilizationRates(g):
    return SimpleNamespace(gpu=g["util"], memory=g["memory_util"])


def nvmlDeviceGetClockInfo(g, kind):
    return g["sm_mhz" if kind == NVML_CLOCK_SM else "memory_mhz"]


def nvmlDeviceGetPowerUsage(g):
    return int(g["power_w"] * 1e3)


def nvmlDeviceGetTemperature(g, sensor):
    return g["temperature_c"]


def nvmlDeviceGetCurrentClocksEventReasons(g):
    return g["throttle"]


def nvmlDeviceGetMemoryInfo(g):
    return SimpleNamespace(used=g["memory_used"], total=80e9, free=80e9 - g["memory_used"])


def nvmlDeviceGetComputeRunningProcesses(g):
    return [SimpleNamespace(pid=p, usedGpuMemory=1e9) for p in g["pids"]]


def nvmlDeviceGetPersistenceMode(g):
    return g["persistence"]


def nvmlDeviceGetEccMode(g):
    return tuple(g["ecc"])


def nvmlDeviceGetMigMode(g):
    return tuple(g["mig"])


def nvmlDeviceGetApplicationsClock(g, kind):
    return g["app_clock"]


def nvmlDeviceGetDefaultApplicationsClock(g, kind):
    return g["default_app_clock"]
