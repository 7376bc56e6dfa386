"""Helpers shared by adapters (not an adapter itself: the registry skips this module)."""
from __future__ import annotations

import json


def num_classes(cfg, data) -> int:
    """Foreground classes: the config's, else the training set's categories, else COCO's 80."""
    if cfg.model.num_classes is not None:
        return cfg.model.num_classes
    if data is None:
        return 80
    return len(json.loads(data.train_json.read_text())["categories"])
