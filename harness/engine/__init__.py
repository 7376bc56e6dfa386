"""What the adapters hook into while a framework's own loop runs: timing, phases, FLOPs, inference.

- ``timing``: the IterationTimer every adapter stamps, and its listeners
- ``phases``: where a training step's time goes, timed the same way for all implementations
- ``flops``: the window's model FLOPs and the device's measured peak
- ``inference``: the inference benchmark's timed calls and the accuracy check's detections
"""

__all__ = ["flops", "inference", "phases", "timing"]
