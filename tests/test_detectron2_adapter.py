"""detectron2: translation to a CfgNode and back, a real 2-process CPU run, and parity with the others."""

import pytest
from conftest import run_cli, two_process_run
from mrcnn_bench.adapters import get_adapter
from mrcnn_bench.harness.config.schema import builtin_config_dir, load_config
from mrcnn_bench.harness.data.datasets import DataPaths
from mrcnn_bench.harness.parity.compare import canonical_values, parity_frame

ADAPTER = get_adapter("detectron2")
_ok, _why = ADAPTER.available()
pytestmark = pytest.mark.skipif(
    not _ok, reason=f"detectron2 is not installed ({_why}); run `make detectron2`"
)
CANONICAL = builtin_config_dir() / "mask_rcnn_R_50_FPN_noaug_1x.yaml"


def test_translation_round_trip(synth_root):
    cfg = load_config(CANONICAL)
    native = ADAPTER.translate(cfg, DataPaths.from_root(synth_root))
    assert native.MODEL.ROI_BOX_HEAD.POOLER_TYPE == "ROIAlignV2" and native.SOLVER.IMS_PER_BATCH == 16
    assert (
        native.MODEL.RESNETS.NORM == "FrozenBN" and native.MODEL.BACKBONE.FREEZE_AT == 2
    )  # no weights: canonical all the same
    bn = cfg.with_overrides(
        {"model.backbone.norm_without_weights": "BN", "model.backbone.freeze_at_without_weights": 0}
    )
    assert (
        ADAPTER.translate(bn).MODEL.RESNETS.NORM == "BN"
        and ADAPTER.translate(bn).MODEL.BACKBONE.FREEZE_AT == 0
    )
    eff = ADAPTER.effective_hparams(native)
    table, notes = parity_frame(canonical_values(cfg, 80), {"detectron2": eff})
    assert notes == [], notes  # every canonical key is expressed exactly
    assert (
        eff["model.num_classes"] == 80 and eff["solver.ims_per_batch_per_process"] == 2
    )  # COCO's, as the synthetic set has
    # values come from the CfgNode: change it, and they change
    native.defrost()
    native.MODEL.RPN.NMS_THRESH = 0.6
    native.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIAlign"
    eff2 = ADAPTER.effective_hparams(native)
    assert eff2["model.rpn.nms_thresh"] == 0.6 and eff2["model.roi_heads.pooler_aligned"] is False
    with_weights = cfg.with_overrides({"model.weights": "/w.pkl"})
    assert ADAPTER.translate(with_weights).MODEL.RESNETS.NORM == "FrozenBN"


def test_unsupported_settings_are_refused():
    from mrcnn_bench.adapters.base import UnsupportedConfig

    cfg = load_config(builtin_config_dir() / "cpu_small.yaml")
    with pytest.raises(UnsupportedConfig, match="fp16 only"):
        ADAPTER.translate(cfg.with_overrides({"benchmark.dtype": "bf16"}))
    # told by the worker that the task does not train (inference: the harness's autocast), it translates
    from mrcnn_bench.adapters.base import TaskTraits

    inferring = type(ADAPTER)()
    inferring.task = TaskTraits(trains=False)
    assert inferring.translate(cfg.with_overrides({"benchmark.dtype": "bf16"})).MODEL.META_ARCHITECTURE
    with pytest.raises(UnsupportedConfig, match="horizontal_flip_prob"):
        ADAPTER.translate(cfg.with_overrides({"input.horizontal_flip_prob": 0.3}))


@pytest.mark.e2e
@pytest.mark.long  # two processes and parity --run: 70 s here (torchvision's stays in make test)
def test_two_process_cpu_run_and_parity(synth_root, tmp_path):
    record, rows = two_process_run("detectron2", synth_root, tmp_path)
    assert "MODEL:" in record["native_config"] and "ROIAlignV2" in record["native_config"]
    assert record["summary"]["flops_per_image"] > 1e9

    parity = run_cli("parity", "--data", synth_root)
    assert parity.returncode == 0, parity.stdout + parity.stderr  # no unexplained divergence
    header = parity.stdout.splitlines()[0]
    assert "reference" in header and "torchvision" in header and "detectron2" in header
    assert "UNEXPLAINED" not in parity.stdout
    # the reference's levers are its settings, listed as such (cpu_small: NCHW), not divergences
    assert (
        "The reference's speed settings" in parity.stdout and "reference.channels_last=False" in parity.stdout
    )
    assert "reference.fold_frozen_bn=True" in parity.stdout and "channels_last ✗" not in parity.stdout
