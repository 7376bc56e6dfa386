"""The native reference Mask R-CNN R-50-FPN: its own model, ops (C++/CUDA), training loop and data."""
