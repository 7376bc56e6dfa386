"""External systems: their native configs, and their own training logs read into run records.

The log samples are written here from each format's documented shape (the code that prints them:
maskrcnn-benchmark's MetricLogger, Detectron's log_json_stats, tensorpack's epoch line and tqdm bar,
MXNet's/SimpleDet's Speedometer, Keras' Progbar), with iteration times chosen so that the window's
throughput is known exactly.
"""

import ast
import datetime
import json

import pytest
import yaml
from conftest import run_cli
from mrcnn_bench.external import get_system, system_names
from mrcnn_bench.harness.config.schema import load_config, resolve_config_path
from mrcnn_bench.harness.records.frames import load_runs
from mrcnn_bench.harness.records.ingest import ingest
from mrcnn_bench.harness.records.logs import LogError, humanized_seconds, parse
from mrcnn_bench.harness.report.tables import render_markdown

CFG = load_config(
    resolve_config_path("mask_rcnn_R_50_FPN_noaug_1x")
)  # 16 images/iteration on 8 GPUs, [100, 500)


def seconds_of(i: int) -> float:
    """Iteration i (from 0) takes 0.9 s before the window and 0.5 s from iteration 100 on."""
    return 0.9 if i < 100 else 0.5


EXPECTED = 16 / 0.5  # img/s over [100, 500)


def cumulative(k: int) -> float:
    return sum(seconds_of(i) for i in range(k))


def maskrcnn_benchmark_log(last=520, prefix=lambda k: "", times=seconds_of) -> str:
    lines = ["2026-11-26 10:00:00,000 maskrcnn_benchmark.trainer INFO: Start training"]
    for k in list(range(20, last + 1, 20)):
        avg = sum(times(i) for i in range(k)) / k
        eta = datetime.timedelta(seconds=int(avg * (last - k)))
        lines.append(
            f"{prefix(k)}2026-11-26 10:00:00,000 maskrcnn_benchmark.trainer INFO: eta: {eta}  iter: {k}  "
            f"loss: 1.8236 (2.7274)  loss_classifier: 0.4 (0.5)  time: {times(k - 1):.4f} ({avg:.4f})  "
            f"data: 0.0099 (0.1242)  lr: 0.014347  max mem: 3508"
        )
    return "\n".join(lines) + "\n"


def detectron_log(last_iter=500) -> str:
    lines = ["INFO train_net.py: 120: Building model"]
    for it in range(0, last_iter + 1, 20):
        done = it + 1  # iterations 0..it completed
        if it <= 20:
            avg = cumulative(done) / done
        else:  # the timer was reset after iteration 20
            avg = (cumulative(done) - cumulative(21)) / (it - 20)
        stats = {
            "accuracy_cls": 0.9,
            "eta": "0:01:00",
            "iter": it,
            "loss": 1.2,
            "lr": 0.02,
            "mb_qsize": 64,
            "mem": 6400,
            "time": f"{avg:.6f}",
        }
        lines.append(f"json_stats: {json.dumps(stats, sort_keys=True)}")
    return "\n".join(lines) + "\n"


def epoch_seconds(epochs: int, steps: int):
    """(epoch, its seconds) of a run of ``epochs`` epochs of ``steps`` iterations, on the sample clock."""
    for e in range(1, epochs + 1):
        yield e, cumulative(e * steps) - cumulative((e - 1) * steps)


def tensorpack_log(epochs=5, steps=100) -> str:
    lines = []
    for e, spent in epoch_seconds(epochs, steps):
        lines.append(
            f"  0%|          |0/{steps}[00:00<?,?it/s]\r 45%|####5     |45/{steps}[00:27<00:33,1.65it/s]\r"
            f"100%|##########|{steps}/{steps}[01:00<00:00,1.66it/s]"
        )
        whole = (
            f"{int(spent // 60)} minute{'s' if spent >= 120 else ''} {spent % 60:.3g} seconds"
            if spent >= 60
            else f"{spent:.3g} seconds"
        )
        lines.append(
            f"[1126 10:0{e}:00 @base.py:282] Epoch {e} (global_step {e * steps}) finished, time:{whole}."
        )
        lines.append(f"[1126 10:0{e}:00 @monitor.py:474] throughput: {steps / spent:.4f}")
    return "\n".join(lines) + "\n"


def speedometer_log(with_iter=True, frequent=20, last=520) -> str:
    lines = []
    for k in range(frequent, last + 1, frequent):
        speed = frequent * 16 / (cumulative(k) - cumulative(k - frequent))
        it = f"\tIter: {k}/90000\tLr: 0.02000" if with_iter else ""
        lines.append(
            f"INFO:root:Epoch[0] Batch [{k}]{it}\tSpeed: {speed:.2f} "
            "samples/sec\tTrain-RpnAcc=0.9,\tRpnL1=0.1,"
        )
    return "\n".join(lines) + "\n"


def keras_log(epochs=5, steps=100) -> str:
    out = []
    for e, spent in epoch_seconds(epochs, steps):
        out.append(f"Epoch {e}/{epochs}\n")
        out.append(
            "".join(
                f"\r {i:3d}/{steps} [{'=' * (i // 10)}>{'.' * (10 - i // 10)}] - ETA: 1:05 - loss: 2.3"
                for i in (1, 50)
            )
        )
        out.append(
            f"\r{steps}/{steps} [==============================] - {int(spent)}s "
            f"{1000 * spent / steps:.0f}ms/step - "
            f"loss: 2.1 - rpn_class_loss: 0.1 - val_loss: 2.0\n"
        )
    return "".join(out)


SAMPLES = {
    "maskrcnn-benchmark": maskrcnn_benchmark_log,
    "detectron": detectron_log,
    "tensorpack": tensorpack_log,
    "simpledet": speedometer_log,
    "matterport": keras_log,
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_ingest_gives_the_window_throughput_of_each_format(tmp_path, name):
    system = get_system(name)
    log = tmp_path / "train.log"
    log.write_text(SAMPLES[name]())
    cfg = (
        CFG.with_overrides({"benchmark.gpus": 16}) if name == "tensorpack" else CFG
    )  # one image per GPU there
    record = ingest(system, [log], cfg, tmp_path / "run" / name, "r")
    s = record["summary"]
    images = 16
    if name == "detectron":  # lines after iterations 100 and 500 (from 0): iterations [101, 501)
        assert (s["warmup"], s["end"]) == (101, 501)
        assert any("not [100, 500)" in n for n in record["from_log"]["notes"])
    else:
        assert (s["warmup"], s["end"]) == (100, 500)
    assert s["images_per_s"] == pytest.approx(images / 0.5, rel=2e-3), record["from_log"]
    assert record["measured_by"] == "log" and record["parity_unverified"]
    assert any("work counters" in r for r in record["parity_unverified"])
    rows = [
        json.loads(line) for line in (tmp_path / "run" / name / "iterations.jsonl").read_text().splitlines()
    ]
    assert len(rows) == 400 and all(r["derived"] for r in rows)
    assert sum(r["duration"] for r in rows) == pytest.approx(s["seconds"])
    # the record reads back as any run (schema v3), and the report shows it apart
    md = render_markdown(load_runs([tmp_path / "run"]))
    assert "### From the systems' own logs" in md or md.startswith("### From the systems' own logs")
    assert f"| {name} " in md and "unverified" in md


def test_mxnet_speedometer_without_iteration_numbers_counts_batches(tmp_path):
    log = tmp_path / "mx.log"
    log.write_text(speedometer_log(with_iter=False))
    trace = parse("speedometer", log, 16)
    a, b, seconds = trace.window_seconds(100, 500)
    assert (a, b) == (100, 500) and 16 * 400 / seconds == pytest.approx(EXPECTED, rel=2e-3)


@pytest.mark.e2e
def test_truncated_log_is_refused_naming_the_file(tmp_path):
    log = tmp_path / "cut.log"
    log.write_text(
        maskrcnn_benchmark_log(last=300) + "2026-11-26 10:00:00,000 maskrcnn_benchmark.trainer INFO: eta: 0:0"
    )
    with pytest.raises(
        LogError,
        match=r"cut\.log: the log's timed iterations \(20\.\.300, the run got to 300\) do not cover "
        r"the window \[100, 500\); truncated\?",
    ):
        ingest(get_system("maskrcnn-benchmark"), [log], CFG, tmp_path / "out", "r")
    out = run_cli("ingest", "--impl", "maskrcnn-benchmark", log, "--out", tmp_path / "runs")
    assert out.returncode == 2 and "cut.log" in out.stderr and "truncated?" in out.stderr
    assert not (tmp_path / "runs").exists()


def test_interleaved_ranks_keep_rank_zero(tmp_path):
    """`srun --label` output of two ranks: rank 1 slower; only rank 0's lines count. The same lines
    without labels printed twice (two ranks both logging): the first of each kept, and said."""
    slow = lambda i: 2 * seconds_of(i)  # noqa: E731
    rank0 = maskrcnn_benchmark_log(prefix=lambda k: "0: ").splitlines()
    rank1 = maskrcnn_benchmark_log(prefix=lambda k: "1: ", times=slow).splitlines()
    log = tmp_path / "labelled.log"
    log.write_text("\n".join(line for pair in zip(rank1, rank0) for line in pair) + "\n")
    trace = parse("maskrcnn-benchmark", log, 16)
    a, b, seconds = trace.window_seconds(100, 500)
    assert 16 * 400 / seconds == pytest.approx(EXPECTED, rel=2e-3)
    assert any("26 line(s) of other ranks dropped" in n for n in trace.notes), trace.notes
    doubled = tmp_path / "doubled.log"
    plain = maskrcnn_benchmark_log().splitlines()
    doubled.write_text("\n".join(line for pair in zip(plain, plain) for line in pair) + "\n")
    trace = parse("maskrcnn-benchmark", doubled, 16)
    assert 16 * 400 / trace.window_seconds(100, 500)[2] == pytest.approx(EXPECTED, rel=2e-3)
    assert any("26 repeated iteration line(s) dropped" in n for n in trace.notes), trace.notes


@pytest.mark.parametrize(
    "fmt,text,said",
    [
        (
            "detectron",
            'json_stats: {"iter": 40, "time": "0.5"}\njson_stats: {"iter": 60, "ti',
            ":2: json_stats line is not JSON",
        ),
        (
            "maskrcnn-benchmark",
            "eta: 0:01:00  iter: 20  loss: 1.0 (1.0)  lr: 0.02\n",
            ":1: an iteration line without 'time:",
        ),
        (
            "tensorpack",
            "[1126 10:00:00 @base.py:282] Epoch 1 (global_step 100) finished, time:soon.\n",
            ":1: not a tensorpack duration",
        ),
        (
            "speedometer",
            "Epoch[0] Batch [20]\tSpeed: fast samples/sec\n",
            ":1: a Speedometer line without 'Speed:",
        ),
        (
            "keras",
            "100/100 [==============================] - 51s 512ms/step - loss: 2.1\n",
            ":1: an epoch's end before any 'Epoch N/M'",
        ),
    ],
)
def test_corrupt_lines_name_the_file_and_line(tmp_path, fmt, text, said):
    log = tmp_path / "bad.log"
    log.write_text(text)
    with pytest.raises(LogError) as e:
        parse(fmt, log, 16)
    assert str(e.value).startswith(f"{log}{said}"), str(e.value)


def test_humanized_durations_read_back():
    assert humanized_seconds("1 hour 2 minutes 3 seconds") == 3723
    assert humanized_seconds("52.3 seconds") == pytest.approx(52.3)
    assert humanized_seconds("1 minute 1 second") == 61
    with pytest.raises(ValueError):
        humanized_seconds("1 fortnight")


# ------------------------------------------------------------------------------ translations
def test_every_system_translates_the_canonical_config():
    assert system_names() == [
        "detectron",
        "maskrcnn-benchmark",
        "matterport",
        "nvidia",
        "simpledet",
        "tensorpack",
    ]
    for name in system_names():
        t = get_system(name).translate(CFG)
        assert t.files and t.command and t.mismatches, name
        assert any("initial weights" in m for m in t.mismatches)


def test_yacs_configs_carry_the_canonical_values():
    for name, filename in (("maskrcnn-benchmark", "maskrcnn_benchmark.yaml"), ("nvidia", "nvidia.yaml")):
        native = yaml.safe_load(get_system(name).translate(CFG).files[filename])
        assert native["SOLVER"]["IMS_PER_BATCH"] == 16 and native["SOLVER"]["BASE_LR"] == 0.02
        assert native["SOLVER"]["MAX_ITER"] == 500 and native["SOLVER"]["STEPS"] == [60000, 80000]
        assert native["SOLVER"]["WARMUP_FACTOR"] == 0.001 and native["SOLVER"]["BIAS_LR_FACTOR"] == 1
        assert native["MODEL"]["RPN"]["FPN_POST_NMS_TOP_N_TRAIN"] == 1000
        assert native["MODEL"]["ROI_MASK_HEAD"]["CONV_LAYERS"] == [256] * 4
        assert native["INPUT"]["PIXEL_MEAN"] == [103.53, 116.28, 123.675]  # BGR
    mrb = yaml.safe_load(get_system("maskrcnn-benchmark").translate(CFG).files["maskrcnn_benchmark.yaml"])
    assert mrb["MODEL"]["RPN"]["FPN_POST_NMS_PER_BATCH"] is False
    nvidia = get_system("nvidia").translate(CFG.with_overrides({"benchmark.dtype": "fp16"}))
    assert yaml.safe_load(nvidia.files["nvidia.yaml"])["DTYPE"] == "float16"
    assert any("over the whole per-GPU batch" in m for m in nvidia.mismatches)


def test_detectron_and_tensorpack_configs():
    d = get_system("detectron").translate(CFG)
    native = yaml.safe_load(d.files["detectron.yaml"])
    assert (
        native["NUM_GPUS"] == 8
        and native["TRAIN"]["IMS_PER_BATCH"] == 2
        and native["SOLVER"]["MAX_ITER"] == 501
    )
    assert native["SOLVER"]["STEPS"] == [0, 60000, 80000] and native["PIXEL_MEANS"] == [
        [[103.53, 116.28, 123.675]]
    ]
    assert any("pixel_std" in m for m in d.mismatches)
    tp = get_system("tensorpack")
    overrides = dict(o.split("=", 1) for o in tp.overrides(CFG))
    assert overrides["TRAIN.STEPS_PER_EPOCH"] == "100"
    # one image per GPU on 8 GPUs: the schedule in steps at a batch of 8 ends at 500
    assert overrides["TRAIN.LR_SCHEDULE"] == "[120000, 160000, 500]" and overrides["TRAIN.BASE_LR"] == "0.01"
    assert tp.images_per_iteration(CFG) == 8
    assert any("global batch of 8, not 16" in m for m in tp.translate(CFG).mismatches)


def test_simpledet_module_sets_values_on_the_base_configs_classes(tmp_path):
    """The written module, run against a base config of SimpleDet's shape, builds it with our values
    set where its class bodies assign them; a value it cannot place is an error naming it."""
    t = get_system("simpledet").translate(CFG)
    base = tmp_path / "mask_r50v1_fpn_1x.py"
    base.write_text(
        "def get_config(is_train):\n"
        "    class General:\n        batch_image = 2 if is_train else 1\n        log_frequency = 10\n        "
        "fp16 = False\n"
        "    class KvstoreParam:\n        gpus = [0, 1]\n"
        "    class OptimizeParam:\n        class optimizer:\n            lr = 0.01 / 8 * "
        "len(KvstoreParam.gpus)\n"
        "    return General, KvstoreParam, OptimizeParam\n"
    )
    module = tmp_path / "mrcnn_bench.py"
    values = {
        "General.batch_image": 2,
        "General.log_frequency": 20,
        "General.fp16": False,
        "KvstoreParam.gpus": list(range(8)),
        "OptimizeParam.optimizer.lr": 0.02,
    }
    text = t.files["mrcnn_bench.py"]
    start = text.index("VALUES = ")
    end = text.index("BASE = ")
    module.write_text(text[:start] + f"VALUES = {values!r}\n" + text[end:])
    scope = {"__file__": str(module)}
    exec(compile(module.read_text(), str(module), "exec"), scope)
    general, kv, opt = scope["get_config"](True)
    assert general.batch_image == 2 and general.log_frequency == 20 and kv.gpus == list(range(8))
    assert opt.optimizer.lr == 0.02
    full = {"__file__": str(module)}
    module.write_text(text)  # every canonical value: the small base lacks most of them
    exec(compile(module.read_text(), str(module), "exec"), full)
    with pytest.raises(KeyError, match="not assigned in .*mask_r50v1_fpn_1x.py: BboxParam.image_roi"):
        full["get_config"](True)


def test_matterport_script_is_a_config_subclass_with_the_values():
    t = get_system("matterport").translate(CFG)
    tree = ast.parse(t.files["mrcnn_bench_matterport.py"])
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef))
    attrs = {a.targets[0].id: ast.literal_eval(a.value) for a in cls.body if isinstance(a, ast.Assign)}
    assert [b.id for b in cls.bases] == ["Config"]
    assert attrs["GPU_COUNT"] == 8 and attrs["IMAGES_PER_GPU"] == 2 and attrs["STEPS_PER_EPOCH"] == 100
    assert (
        attrs["IMAGE_MAX_DIM"] == 1344
        and attrs["TRAIN_ROIS_PER_IMAGE"] == 512
        and attrs["LEARNING_RATE"] == 0.02
    )
    assert "epochs=5" in t.files["mrcnn_bench_matterport.py"]


@pytest.mark.e2e
def test_run_external_writes_the_config_and_prints_the_commands(tmp_path):
    out = run_cli(
        "run",
        "--impl",
        "nvidia",
        "--config",
        "mask_rcnn_R_50_FPN_noaug_1x",
        "--out",
        tmp_path,
        "--run-id",
        "x",
        "--container",
        "no-such-image:0",
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "x" / "nvidia" / "nvidia.yaml").is_file()
    assert "not run here (" in out.stdout and "docker run --rm --gpus all" in out.stdout
    assert "mrcnn-bench ingest --impl nvidia" in out.stdout and "cannot match:" in out.stdout
    bad = run_cli("run", "--impl", "reference", "--container", "img", "--out", tmp_path)
    assert bad.returncode == 2 and "--container goes with an external system" in bad.stderr
    listed = run_cli("list")
    assert "tensorpack   external" in listed.stdout


@pytest.mark.e2e
def test_ingest_cli_and_the_report_beside_measured_runs(tmp_path):
    log = tmp_path / "det.log"
    log.write_text(detectron_log())
    out = run_cli("ingest", "--impl", "detectron", log, "--out", tmp_path / "runs", "--run-id", "mixed")
    assert out.returncode == 0, out.stderr
    assert f"detectron: {16 / 0.5:.3f} img/s over iterations [101, 501)" in out.stdout
    record = json.loads((tmp_path / "runs" / "mixed" / "detectron" / "run.json").read_text())
    assert record["schema_version"] == 3 and record["environment"]["source_logs"] == [str(log.resolve())]
    from test_report_regress import write_run

    write_run(tmp_path / "runs", "mixed", "reference", [1.0] * 20)
    md = render_markdown(load_runs([tmp_path / "runs"]))
    measured, logs = md.split("### From the systems' own logs")
    assert "| reference " in measured and "detectron" not in measured.split("###")[0]
    assert "| detectron " in logs and "json_stats' average" in logs
    assert run_cli("ingest", "--impl", "nope", log).returncode == 2
