"""NVML through nvidia-ml-py's ``pynvml``, as the telemetry (machine/telemetry.py) and the machine's state
(machine/doctor.py) read it: initialised or the reason it is not, one reading that may be unsupported, and
the clock-event (throttle) reasons."""

from __future__ import annotations

# clock-event reasons that mean the GPU was slowed by heat or power (NVML's bit values)
THROTTLE_BITS = {
    "sw_power_cap": 0x4,
    "hw_slowdown": 0x8,
    "sw_thermal": 0x20,
    "hw_thermal": 0x40,
    "hw_power_brake": 0x80,
}


def nvml_or_reason():
    """(the pynvml module, initialised, None) or (None, why not)."""
    try:
        import pynvml
    except ImportError:
        return None, "NVML: nvidia-ml-py is not installed (pip install nvidia-ml-py)"
    try:
        pynvml.nvmlInit()
    except Exception as e:  # pynvml.NVMLError: no driver, no library
        return None, f"NVML: nvmlInit failed ({e})"
    return pynvml, None


def _try(fn, *args, default=None):
    try:
        return fn(*args)
    except Exception:  # NVMLError_NotSupported and the like: that field is not measured on this device
        return default


def throttle_reasons(nvml, handle):
    getter = (
        getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
        or nvml.nvmlDeviceGetCurrentClocksThrottleReasons
    )
    return _try(getter, handle)
