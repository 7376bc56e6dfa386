"""Questions asked of an implementation inside its own interpreter (it may live in another venv).

    python -m mrcnn_bench.harness.parity.probe available IMPL
    python -m mrcnn_bench.harness.parity.probe effective IMPL CONFIG_JSON_FILE [DATA_ROOT]
    python -m mrcnn_bench.harness.parity.probe forward IMPL CONFIG_JSON_FILE IMAGES_PT OUT_PT

Each prints one JSON line on stdout; ``forward`` saves the backbone/FPN and RPN head outputs on the
images (``Adapter.forward_features``) to OUT_PT.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2 or argv[0] not in ("available", "effective", "forward"):
        print(__doc__, file=sys.stderr)
        return 2
    from mrcnn_bench.adapters import get_adapter

    adapter = get_adapter(argv[1])
    if argv[0] == "available":
        ok, info = adapter.available()
        if not ok and adapter.install_hint:
            info = f"{info}; install: {adapter.install_hint}"
        print(json.dumps({"available": ok, "info": info}))
        return 0
    from mrcnn_bench.harness.config.schema import Config
    from mrcnn_bench.harness.data.datasets import DataPaths

    cfg = Config.model_validate(json.loads(Path(argv[2]).read_text()))
    if argv[0] == "forward":
        import torch

        torch.manual_seed(0)
        torch.set_num_threads(max(1, torch.get_num_threads()))
        with torch.no_grad():
            outputs = adapter.forward_features(cfg, torch.load(argv[3], weights_only=True))
        torch.save(outputs, argv[4])
        print(json.dumps({"forward": sorted(outputs)}))
        return 0
    data = DataPaths.from_root(argv[3], cfg.data.train_split, cfg.data.val_split) if len(argv) > 3 else None
    native = adapter.translate(cfg, data)
    print(json.dumps({"effective": adapter.effective_hparams(native)}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
