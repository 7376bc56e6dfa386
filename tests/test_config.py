import pytest
import yaml
from mrcnn_bench.harness.config.schema import (
    ConfigError,
    builtin_config_dir,
    flatten,
    load_config,
    parse_override,
)

CANONICAL = builtin_config_dir() / "mask_rcnn_R_50_FPN_noaug_1x.yaml"
SMALL = builtin_config_dir() / "cpu_small.yaml"


def test_canonical_config_has_the_detectron_baseline():
    cfg = load_config(CANONICAL)
    assert cfg.solver.ims_per_batch == 16 and cfg.benchmark.gpus == 8 and cfg.ims_per_process_step == 2
    assert cfg.solver.base_lr == 0.02 and cfg.solver.momentum == 0.9 and cfg.solver.weight_decay == 1e-4
    assert cfg.input.min_size_train == [800] and cfg.input.max_size_train == 1333
    assert cfg.model.anchors.sizes == [32, 64, 128, 256, 512] and cfg.model.anchors.aspect_ratios == [
        0.5,
        1.0,
        2.0,
    ]
    r = cfg.model.rpn
    assert (r.batch_size_per_image, r.positive_fraction, r.nms_thresh) == (256, 0.5, 0.7)
    assert (r.pre_nms_topk_train, r.post_nms_topk_train) == (2000, 1000)
    h = cfg.model.roi_heads
    assert (h.batch_size_per_image, h.positive_fraction) == (512, 0.25)
    assert (h.box_pooler_resolution, h.mask_pooler_resolution, h.box_head_fc_dim, h.mask_head_num_conv) == (
        7,
        14,
        1024,
        4,
    )
    assert cfg.model.backbone.norm == "FrozenBN" and cfg.model.backbone.freeze_at == 2
    assert (cfg.benchmark.warmup, cfg.benchmark.end) == (100, 500)


def test_cpu_scenario_changes_only_size_batch_iterations_window():
    canonical = flatten(yaml.safe_load(CANONICAL.read_text()))
    small = flatten(yaml.safe_load(SMALL.read_text()))
    changed = {k for k in canonical if canonical[k] != small[k]}
    allowed = {
        "name",
        "description",
        "input.min_size_train",
        "input.max_size_train",
        "input.min_size_test",
        "input.max_size_test",
        "solver.ims_per_batch",
        "solver.base_lr",
        "benchmark.iters",
        "benchmark.warmup",
        "benchmark.window_end",
        "benchmark.gpus",
        "benchmark.device",
        "benchmark.num_workers",
        "benchmark.timeout_s",
        "data.synth_images",
        "data.synth_size",
    }
    assert changed <= allowed, changed - allowed
    assert set(canonical) == set(small)
    # the learning rate follows the batch by the linear scaling rule, nothing else
    assert small["solver.base_lr"] == pytest.approx(
        canonical["solver.base_lr"] * small["solver.ims_per_batch"] / canonical["solver.ims_per_batch"]
    )
    load_config(SMALL)


def _write(tmp_path, mutate):
    data = yaml.safe_load(SMALL.read_text())
    mutate(data)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: d["model"]["rpn"].update(nms_tresh=0.7), r"unknown key 'model\.rpn\.nms_tresh'"),
        (lambda d: d.update(extra=1), r"unknown key 'extra'"),
        (
            lambda d: d["solver"].update(ims_per_batch="2"),
            r"key 'solver\.ims_per_batch'.*valid integer.*got '2' of type str",
        ),
        (lambda d: d["solver"].update(base_lr=-1.0), r"key 'solver\.base_lr'.*greater than 0"),
        (lambda d: d["benchmark"].update(window_end=5, warmup=10), r"window \[warmup=10, end=5\) is empty"),
        (lambda d: d["benchmark"].update(device="tpu"), r"key 'benchmark\.device'.*'cpu' or 'cuda'"),
        (
            lambda d: (
                d["solver"].update(
                    ims_per_batch=3,
                )
                or d["benchmark"].update(gpus=2)
            ),
            r"ims_per_batch=3 is not divisible",
        ),
        (lambda d: d.pop("name"), r"missing required key 'name'"),
        (lambda d: d["model"]["anchors"].update(sizes=[32, 64]), r"key 'model\.anchors'.*5 entries"),
    ],
)
def test_bad_configs_name_file_key_and_expectation(tmp_path, mutate, expected):
    path = _write(tmp_path, mutate)
    with pytest.raises(ConfigError, match=expected) as e:
        load_config(path)
    assert str(path) in str(e.value)


def test_missing_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(bad)


def test_overrides_are_validated_like_the_file():
    cfg = load_config(SMALL, {"benchmark.iters": 12, "benchmark.window_end": 12})
    assert cfg.benchmark.iters == 12
    with pytest.raises(ConfigError, match=r"unknown key 'benchmark\.iterz'"):
        load_config(SMALL, {"benchmark.iterz": 7})
    with pytest.raises(ConfigError, match=r"window_end=30 is past iters=5"):
        load_config(SMALL, {"benchmark.iters": 5})
    assert parse_override("input.min_size_train=[128, 160]") == ("input.min_size_train", [128, 160])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("benchmark.iters")


def test_weightless_runs_train_the_canonical_structure():
    """Without weights the canonical FrozenBN with stem + res2 frozen (the shared initialisation calibrates
    the
    statistics); trainable BN only as an explicit setting, which the report names; no calibration, no
    FrozenBN."""
    from mrcnn_bench.harness.config.schema import structure_differences_of

    cfg = load_config(CANONICAL)
    assert cfg.model.weights is None and cfg.model.calibrates_norm
    assert cfg.model.effective_norm == "FrozenBN" and cfg.model.effective_freeze_at == 2
    assert cfg.model.structure_differences() == {}
    with_weights = cfg.with_overrides({"model.weights": "/x.pth"}).model
    assert (
        with_weights.effective_norm == "FrozenBN"
        and with_weights.effective_freeze_at == 2
        and not with_weights.calibrates_norm
    )
    bn = cfg.with_overrides(
        {"model.backbone.norm_without_weights": "BN", "model.backbone.freeze_at_without_weights": 0}
    )
    assert bn.model.effective_norm == "BN" and bn.model.effective_freeze_at == 0
    expected = {"model.backbone.norm": ("FrozenBN", "BN"), "model.backbone.freeze_at": (2, 0)}
    assert bn.model.structure_differences() == expected
    assert structure_differences_of(bn.to_dict()) == expected
    # the explicit setting is ignored once weights are given: they bring the canonical statistics
    assert bn.with_overrides({"model.weights": "/x.pth"}).model.structure_differences() == {}
    with pytest.raises(ConfigError, match="FrozenBN without model.weights needs benchmark.shared_init: true"):
        cfg.with_overrides({"benchmark.shared_init": False})
    cfg.with_overrides(
        {"benchmark.shared_init": False, "model.init_weights": "/init.pth"}
    )  # a file brings its statistics
    bn.with_overrides({"benchmark.shared_init": False})  # trainable BN needs no calibration


@pytest.mark.e2e
def test_cli_config_error_exits_2(tmp_path):
    from conftest import run_cli

    path = _write(tmp_path, lambda d: d["model"].update(colour="red"))
    out = run_cli("run", "--impl", "torchvision", "--config", path)
    assert out.returncode == 2
    assert "unknown key 'model.colour'" in out.stderr and str(path) in out.stderr
    assert "Traceback" not in out.stderr


def test_a_task_the_table_does_not_know_is_refused_naming_the_config_and_its_key():
    """The config checks a task's name is a name; which tasks exist is the task table's to say (harness/tasks,
    above the config package), checked by the request before anything starts."""
    from mrcnn_bench.harness.run.suite import RequestError, RunRequest

    with pytest.raises(RequestError, match=r"cpu_small: benchmark.task: unknown task 'nope'; known: train, "):
        RunRequest(config_name="cpu_small", overrides=("benchmark.task=nope",)).config()
    with pytest.raises(ConfigError, match="task 'no pe': expected a task's name"):
        load_config(SMALL, {"benchmark.task": "no pe"})
