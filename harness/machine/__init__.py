"""The machine a run runs on, read beside the run and never in its timed loop.

- ``doctor``: the machine's state before a run (``mrcnn-bench doctor``)
- ``telemetry``: what the machine did while a run ran (RunWatch), and the window's telemetry
- ``nvml``: NVML through nvidia-ml-py, for the two above
"""

__all__ = ["doctor", "nvml", "telemetry"]
