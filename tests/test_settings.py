"""Each implementation as shipped and at its best (config/settings.py, `run --best`, `--settings both`)."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT, run_cli
from mrcnn_bench.harness.config import settings
from mrcnn_bench.harness.config.schema import load_config
from mrcnn_bench.harness.report.tables import load_runs, render_markdown
from mrcnn_bench.harness.run.suite import RequestError, RunRequest
from test_report_regress import write_run

IMPLS = ("reference", "torchvision", "detectron2", "mmdet")


def _cfg(mode="best", device="cpu", task="train"):
    return load_config(
        ROOT / "configs" / "cpu_small.yaml",
        {"benchmark.settings": mode, "benchmark.device": device, "benchmark.task": task},
    )


def test_shipped_changes_nothing_and_best_what_is_declared():
    shipped = _cfg("shipped")
    for impl in IMPLS:
        assert settings.effective_config(shipped, impl) is shipped
        assert settings.environment(shipped, impl) == {}
        assert settings.record(shipped, impl) == {"mode": "shipped", "applied": []}
    best = _cfg("best")
    # torchvision and detectron2 in NHWC; the reference's layout is its own lever (reference.channels_last),
    # mmdet's stays NCHW (mmcv's RoIAlign misreads channels-last maps)
    for impl in ("torchvision", "detectron2"):
        assert settings.effective_config(best, impl).benchmark.channels_last is True
        assert best.benchmark.channels_last is False  # the run's config itself is not changed
    for impl in ("reference", "mmdet"):
        assert settings.effective_config(best, impl).benchmark.channels_last is False
    # on the CPU every implementation's process keeps freed host memory (glibc), none gets CUDA's allocator
    for impl in IMPLS:
        env = settings.environment(best, impl)
        assert env == {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647"}, (
            impl,
            env,
        )
    # a list the user has set keeps its entries
    mine = settings.with_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "A": "1"}, best, "mmdet")
    assert mine == {
        "GLIBC_TUNABLES": (
            "glibc.malloc.arena_max=2:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647"
        ),
        "A": "1",
    }
    cuda = _cfg("best", device="cuda")
    for impl in IMPLS:
        assert settings.environment(cuda, impl) == {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    # mmdet's conv + BN fusion at inference only, and only mmdet's
    assert not settings.applies(best, "mmdet", "fuse_conv_bn")
    infer = _cfg("best", task="infer")
    assert settings.applies(infer, "mmdet", "fuse_conv_bn")
    assert not any(
        settings.applies(infer, impl, "fuse_conv_bn") for impl in ("reference", "torchvision", "detectron2")
    )
    names = [a["name"] for a in settings.record(infer, "mmdet")["applied"]]
    assert names == ["kept_host_memory", "fuse_conv_bn"]  # not NHWC: mmcv's RoIAlign misreads it
    assert settings.effective_config(best, "mmdet").benchmark.channels_last is False
    assert any(name == "NHWC for mmdet" for name, _ in settings.NOT_INCLUDED)


def test_the_parity_table_marks_each_setting_per_implementation():
    rows = {r["Setting (--best)"]: r for r in settings.table("cpu", "train")}
    assert rows["channels_last"]["torchvision"] == "✓" and rows["channels_last"]["reference"] == "-"
    assert all(rows["kept_host_memory"][i] == "✓" for i in IMPLS)
    assert all(rows["expandable_segments"][i] == "-" for i in IMPLS)  # CUDA only
    assert rows["expandable_segments"]["What"].startswith("(not on cpu / train)")
    assert {name for name, _ in settings.NOT_INCLUDED} >= {"torch.compile", "AMP (bf16 / fp16)"}


def test_kept_host_memory_acts_on_a_process_through_its_environment():
    """The environment the launcher gives a worker does what the setting says: in a training step's pattern
    of allocations (three convolutions forward and backward on a 256x256 map), the steady steps fault no
    page in again; glibc's default returns the large buffers and faults thousands of pages in every step."""
    code = (
        "import resource, torch\n"
        "torch.manual_seed(0)\n"
        "net = torch.nn.Sequential(*[torch.nn.Conv2d(32, 32, 3, padding=1) for _ in range(3)])\n"
        "x = torch.randn(1, 32, 256, 256)\n"
        "for i in range(4):\n"
        "    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "    net(x).sum().backward()\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
    )

    def faults(env):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", **env},
            capture_output=True,
            text=True,
            check=True,
        )
        return int(out.stdout.split()[-1])

    kept = faults(settings.environment(_cfg("best"), "torchvision"))
    default = faults({})
    assert default > 1_000 and kept < 100, (default, kept)


@pytest.mark.e2e
def test_best_and_both_from_the_command_line():
    assert RunRequest(config_name="cpu_small", settings="best").config().benchmark.settings == "best"
    assert RunRequest(config_name="cpu_small").config().benchmark.settings == "shipped"
    assert RunRequest(settings="both").modes == ("shipped", "best")
    with pytest.raises(RequestError, match="--settings both goes with `run`"):
        RunRequest(config_name="cpu_small", settings="both").config()  # sweep, phases: one mode
    out = run_cli("run", "--config", "cpu_small", "--settings", "both", "--workers", "0,1", "--task", "data")
    assert out.returncode == 2 and "go without --repeats or --settings both" in out.stderr, out.stderr


def _mode_rounds(root, modes=("shipped", "best"), count=2):
    for k in range(1, count + 1):
        for mode in modes:
            for impl, cost in (("reference", 1.0), ("peer", 1.5 if mode == "shipped" else 1.2)):
                write_run(
                    root,
                    f"r{k}-{mode}",
                    impl,
                    [cost] * 20,
                    config={"name": "fixture", "benchmark": {"settings": mode}},
                )
    return root


def test_the_report_shows_both_modes_best_first(tmp_path):
    md = render_markdown(load_runs([_mode_rounds(tmp_path)]))
    section = md.split("### Repeated runs")[1].split("###")[0]
    fastest = [line for line in section.splitlines() if "fastest other (per run)" in line]
    assert len(fastest) == 2 and "each at its best" in fastest[0] and "each as shipped" in fastest[1], section
    assert "1.20× [1.20, 1.20]" in fastest[0] and "1.50× [1.50, 1.50]" in fastest[1]
    assert "| Settings" in md.split("###")[0]  # the summary says which row is which


@pytest.mark.e2e
def test_the_gate_refuses_a_candidate_of_the_other_mode(tmp_path):
    base = tmp_path / "base"
    for k in (1, 2):
        write_run(
            base,
            f"r{k}",
            "reference",
            [1.0] * 20,
            config={"name": "fixture", "benchmark": {"settings": "best"}},
        )
    cand = tmp_path / "cand"
    write_run(
        cand, "r1", "reference", [1.0] * 20, config={"name": "fixture", "benchmark": {"settings": "shipped"}}
    )
    out = run_cli("regress", "--baseline", base, "--candidate", cand)
    assert out.returncode == 2 and "settings: best vs shipped" in out.stderr, out.stderr
    same = tmp_path / "same"
    write_run(
        same, "r1", "reference", [1.0] * 20, config={"name": "fixture", "benchmark": {"settings": "best"}}
    )
    out = run_cli("regress", "--baseline", base, "--candidate", same)
    assert out.returncode == 0, out.stderr


@pytest.mark.e2e
@pytest.mark.long  # two rounds of both modes: 90 s here (test_best_and_both_from_the_command_line stays)
def test_both_modes_run_in_every_round_and_are_recorded(tmp_path):
    """`run --settings both`: each round runs both modes under r<k>-<mode>/; run.json says what was
    applied."""
    out = run_cli(
        "run",
        "--impl",
        "reference,torchvision",
        "--config",
        "cpu_small",
        "--settings",
        "both",
        "--set",
        "benchmark.iters=2",
        "--set",
        "benchmark.warmup=1",
        "--set",
        "benchmark.window_end=2",
        "--out",
        tmp_path,
        "--run-id",
        "modes",
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "modes").iterdir() if p.is_dir()) == ["r1-best", "r1-shipped"]
    tv = json.loads((tmp_path / "modes" / "r1-best" / "torchvision" / "run.json").read_text())
    assert (
        tv["config"]["benchmark"]["settings"] == "best"
        and tv["config"]["benchmark"]["channels_last"] is False
    )
    assert [a["name"] for a in tv["settings"]["applied"]] == ["channels_last", "kept_host_memory"]
    shipped = json.loads((tmp_path / "modes" / "r1-shipped" / "torchvision" / "run.json").read_text())
    assert shipped["settings"] == {"mode": "shipped", "applied": []}
    assert "at its best" in out.stdout and "as shipped" in out.stdout


# ------------------------------------------------------------------ the committed baselines (issue 40)
BASELINES = ROOT / "results" / "baselines"


def _rounds(folder, mode: str) -> list[dict[str, dict]]:
    """The committed rounds of one mode: {implementation: record} per round, in round order."""
    rounds = [{r["impl"]: r for r in load_runs([d])} for d in sorted(folder.glob(f"r*-{mode}"))]
    assert rounds, f"{folder}: no round of {mode}"
    return rounds


def _lead(records: dict[str, dict], key=lambda r: r["summary"]["images_per_s"]) -> float:
    others = [key(r) for impl, r in records.items() if impl != "reference"]
    return key(records["reference"]) / max(others)


@pytest.mark.parametrize("mode", ["best", "shipped"])
def test_committed_canonical_rounds_ran_the_same_work_in_both_modes(mode):
    """results/baselines/cpu_canonical (`make baseline`): three rounds of each mode, the four finished in
    each, the canonical model, each at its best applying its declared settings, and the same work per
    image (proposals, RoIs, padded pixels) in every implementation of a round."""
    rounds = _rounds(BASELINES / "cpu_canonical", mode)
    assert len(rounds) == 3
    for records in rounds:
        assert set(records) == set(IMPLS) and all(r["status"] == "ok" for r in records.values())
        for impl, r in records.items():
            bench = r["config"]["benchmark"]
            assert bench["settings"] == mode and r["config"]["model"]["backbone"]["norm"] == "FrozenBN"
            applied = {a["name"] for a in r["settings"]["applied"]}
            # as declared when recorded (commit 305264a): mmdet in NHWC too, since dropped (see below)
            assert applied == (
                {"channels_last", "kept_host_memory"} - ({"channels_last"} if impl == "reference" else set())
                if mode == "best"
                else set()
            ), (impl, applied)
        for counter in ("proposals_per_image", "rois_per_image", "pixels_per_image"):
            values = {impl: r["summary"][counter] for impl, r in records.items()}
            assert max(values.values()) == pytest.approx(min(values.values()), rel=1e-6), (counter, values)


def test_committed_canonical_reference_leads_each_peer_as_shipped_and_at_its_best():
    """The reference is the fastest in every committed round of both modes at 800 px: as shipped by 1.5×
    or more (1.56 to 1.65 recorded), with every peer at its best by 1.15× or more (1.19 to 1.24)."""
    shipped = [_lead(r) for r in _rounds(BASELINES / "cpu_canonical", "shipped")]
    best = [_lead(r) for r in _rounds(BASELINES / "cpu_canonical", "best")]
    assert min(shipped) >= 1.5 and min(best) >= 1.15, (shipped, best)


@pytest.mark.xfail(
    strict=True,
    reason="issue 40 asks 1.3x in every round with every peer at its best; recorded 1.19 "
    "to 1.24 (docs/results.md, 'At the canonical size'): 86% of the reference's step is "
    "oneDNN's convolutions, the kernels every peer calls",
)
def test_committed_canonical_lead_at_its_best_is_1_3x_in_every_round():
    best = [_lead(r) for r in _rounds(BASELINES / "cpu_canonical", "best")]
    assert min(best) >= 1.3, best


@pytest.mark.xfail(
    strict=True,
    reason="the committed at-best rounds (commit 305264a) ran mmdet in NHWC, which mmcv 2.1's RoIAlign "
    "misreads (config/settings.py NOT_INCLUDED); mmdet's at-best rows are to be re-recorded (make baseline)",
)
@pytest.mark.parametrize("scenario", ["cpu_canonical", "cpu_small"])
def test_committed_at_best_rounds_apply_the_current_declaration(scenario):
    for records in _rounds(BASELINES / scenario, "best"):
        for impl, r in records.items():
            declared = [a["name"] for a in settings.record(_cfg("best"), impl)["applied"]]
            assert [a["name"] for a in r["settings"]["applied"]] == declared, (scenario, impl)
