"""MLPerf Training result logs of Mask R-CNN read into the suite's records (``mrcnn-bench ingest --format
mlperf LOG...``).

A result log is a text file whose lines carry ``:::MLLOG {json}`` (any text before the marker is a
launcher's prefix and ignored), as MLCommons' mlperf-logging package writes them (``mllog``) and checks
them (its compliance checker). Each line is read with that package's own parser (ruleset 3.1.0, the last
round with Mask R-CNN); a line it cannot read is an error naming the file and the line.

One log is one run: the system (``submission_org``, ``submission_platform``), the global batch and the
hyperparameter keys, ``run_start`` to ``run_stop`` (the time to train) with ``run_stop``'s status, the
accuracy of each evaluation (``eval_accuracy``: BBOX and SEGM, with the epoch) and the throughput
(``run_stop``'s ``throughput`` in its metadata, and each block's ``tracked_stats`` where present).
Several logs of one system are one result, scored as MLPerf scores Mask R-CNN: of five runs the fastest
and the slowest are dropped and the time to train is the mean of the other three; a run that did not
reach the target counts as the slowest (one such run at most, or there is no score).
"""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .logs import LogError

TOKEN = ":::MLLOG "
RULESET = "3.1.0"
RUNS_SCORED = 5  # MLPerf Training's Mask R-CNN result: five runs, the fastest and slowest dropped
# The keys of a Mask R-CNN submission's hyperparameters (MLPerf's closed_maskrcnn.yaml), beside the
# canonical config's value of each (``canonical``).
HPARAMS = (
    "global_batch_size",
    "gradient_accumulation_steps",
    "opt_base_learning_rate",
    "opt_learning_rate_warmup_steps",
    "opt_learning_rate_warmup_factor",
    "opt_learning_rate_decay_steps",
    "opt_learning_rate_decay_factor",
    "min_image_size",
    "max_image_size",
    "num_image_candidates",
)


@dataclass
class MLPerfRun:
    """One result log."""

    path: Path
    org: str
    platform: str
    benchmark: str
    status: str  # run_stop's: success, aborted, ...
    minutes: float  # run_start to run_stop
    hparams: dict = field(default_factory=dict)
    throughput: float | None = None  # run_stop's metadata: samples/s over the run
    tracked: list[float] = field(default_factory=list)  # each block's tracked_stats throughput
    accuracy: list[dict] = field(default_factory=list)  # {"epoch", "BBOX", "SEGM"} per evaluation
    train_samples: int | None = None
    eval_samples: int | None = None

    @property
    def accelerators(self) -> int | None:
        """The accelerator count of MLPerf's platform names (``8xXE9680x8H100-SXM-80GB``: 8)."""
        m = re.match(r"(\d+)x", self.platform)
        return int(m.group(1)) if m else None


def _parse_lines(path: Path) -> list:
    from mlperf_logging.compliance_checker.mlp_parser import parse_file

    try:
        text = path.read_text(encoding="latin-1")
    except OSError as e:
        raise LogError(f"{path}: cannot be read ({e.strerror})") from None
    marked = [(n, line) for n, line in enumerate(text.splitlines(), 1) if TOKEN in line]
    if not marked:
        raise LogError(f"{path}: no ':::MLLOG' line: not an MLPerf result log")
    lines, failed = parse_file(str(path), ruleset=RULESET)
    if failed:
        bad, why = failed[0]
        n = next((n for n, line in marked if bad.strip() in line), "?")
        raise LogError(f"{path}:{n}: not an MLPerf log line ({why}): {bad.strip()[:120]}")
    return lines


def _keys(lines) -> dict[str, list]:
    found = defaultdict(list)
    for line in lines:
        found[line.key].append(line)
    return found


def read_log(path: str | Path) -> MLPerfRun:
    """One MLPerf result log of Mask R-CNN; LogError naming the file (and the line) otherwise."""
    path = Path(path)
    try:
        keys = _keys(_parse_lines(path))
    except LogError:
        raise
    except (KeyError, TypeError, ValueError) as e:  # a line of JSON without its fields
        raise LogError(f"{path}: an MLPerf log line without {e}") from None

    def one(key: str, required: bool = True):
        if not keys.get(key):
            if required:
                raise LogError(f"{path}: no {key!r} line (expected one in a Mask R-CNN result log)")
            return None
        return keys[key][0].value

    benchmark = one("submission_benchmark")["value"]
    if benchmark != "maskrcnn":
        raise LogError(f"{path}: submission_benchmark is {benchmark!r}, not 'maskrcnn'")
    start, stop = keys.get("run_start"), keys.get("run_stop")
    if not start or not stop:
        missing = "run_start" if not start else "run_stop"
        raise LogError(f"{path}: no {missing!r} line: the run's time to train is unknown")
    stop_meta = stop[0].value.get("metadata") or {}
    accuracy = [
        {"epoch": (line.value.get("metadata") or {}).get("epoch_num"), **line.value["value"]}
        for line in keys.get("eval_accuracy", [])
        if isinstance(line.value.get("value"), dict)
    ]
    tracked = [
        line.value["value"]["throughput"]
        for line in keys.get("tracked_stats", [])
        if isinstance(line.value.get("value"), dict) and "throughput" in line.value["value"]
    ]
    return MLPerfRun(
        path=path,
        org=str(one("submission_org")["value"]),
        platform=str(one("submission_platform")["value"]),
        benchmark=benchmark,
        status=str(stop_meta.get("status", "unknown")),
        minutes=(stop[0].timestamp - start[0].timestamp) / 60000,
        hparams={k: one(k, required=False)["value"] for k in HPARAMS if keys.get(k)},
        throughput=stop_meta.get("throughput"),
        tracked=tracked,
        accuracy=accuracy,
        train_samples=(one("train_samples", required=False) or {}).get("value"),
        eval_samples=(one("eval_samples", required=False) or {}).get("value"),
    )


def olympic_minutes(runs: list[MLPerfRun]) -> tuple[float | None, str]:
    """MLPerf's score of one system's runs: (minutes, how it was reached). Five runs: the fastest and the
    slowest dropped, a run that did not succeed counted as the slowest; the mean of the rest."""
    ok = sorted(r.minutes for r in runs if r.status == "success")
    failed = len(runs) - len(ok)
    if len(runs) != RUNS_SCORED:
        how = f"{len(runs)} run(s), not MLPerf's {RUNS_SCORED}: the mean of the successful ones, unscored"
        return (statistics.fmean(ok) if ok else None), how
    if failed > 1:
        return None, f"{failed} of {RUNS_SCORED} runs did not succeed: no score (at most one may fail)"
    kept = ok[1 : len(ok) - (1 - failed)]
    return statistics.fmean(
        kept
    ), f"the mean of {len(kept)} of {RUNS_SCORED} runs, fastest and slowest dropped"


def canonical(cfg) -> dict:
    """The config's value of each MLPerf hyperparameter key (``hparams_of`` of its dict, as in run.json)."""
    return hparams_of(cfg.to_dict())


def differences(hparams: dict, cfg) -> list[str]:
    """What a submission set differently from the canonical config, key by key (MLPerf's names)."""
    mine = canonical(cfg)
    out = []
    for key in HPARAMS:
        if key in hparams and hparams[key] != mine[key]:
            out.append(f"{key} {hparams[key]} (canonical {mine[key]})")
    return out


def _slug(run: MLPerfRun) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"mlperf-{run.org}-{run.platform}").strip("-")


def record_of(runs: list[MLPerfRun], cfg, run_id: str) -> dict:
    """One system's runs as a run record beside the measured ones (``measured_by: log``): img/s the median
    of the runs' own throughput, the time to train as MLPerf scores it, what differs from ``cfg``."""
    from .results import make_run_record

    first = runs[0]
    minutes, how = olympic_minutes(runs)
    rates = [r.throughput for r in runs if isinstance(r.throughput, (int, float))]
    batch = first.hparams.get("global_batch_size")
    reached = [r.accuracy[-1] for r in runs if r.accuracy]
    notes = [f"time to train {minutes:.2f} min ({how})" if minutes is not None else how]
    if reached:
        notes.append(
            "reached bbox "
            + ", ".join(f"{a.get('BBOX', float('nan')):.3f}" for a in reached)
            + " / segm "
            + ", ".join(f"{a.get('SEGM', float('nan')):.3f}" for a in reached)
        )
    notes += [f"differs: {d}" for d in differences(first.hparams, cfg)]
    # the run's length in steps: its epochs (the last evaluated) of train_samples at the global batch
    epochs = max(
        (a["epoch"] for r in runs for a in r.accuracy if isinstance(a.get("epoch"), (int, float))), default=0
    )
    if not (epochs and first.train_samples and batch):
        raise LogError(
            f"{first.path}: no train_samples, eval_accuracy epoch_num or global_batch_size: "
            "the run's length in steps is unknown"
        )
    steps = max(1, round(epochs * first.train_samples / batch))
    status, reason = "ok", None
    if not rates:
        status, reason = "failed", "no run_stop throughput in the log(s): no img/s to show"
    summary = {
        "images_per_s": statistics.median(rates) if rates else None,
        "s_per_iter_mean": batch / statistics.median(rates) if rates and batch else None,
        "time_to_train_min": minutes,
        "time_to_train_how": how,
        "runs": [
            {
                "log": str(r.path),
                "status": r.status,
                "minutes": r.minutes,
                "throughput": r.throughput,
                "block_throughput": r.tracked,
                "accuracy": r.accuracy,
            }
            for r in runs
        ],
    }
    record = make_run_record(
        impl=_slug(first),
        run_id=run_id,
        status=status,
        reason=reason,
        config={"name": "mlperf", "solver": {"ims_per_batch": batch}, "mlperf": first.hparams},
        world_size=first.accelerators or 1,
        device="cuda",
        dtype="as submitted",
        window={"warmup": 0, "end": steps, "iters": steps},  # the whole run, start to stop
        summary=summary,
        environment={
            "source_logs": [str(r.path.resolve()) for r in runs],
            "log_format": f"mlperf {RULESET}",
            "system": f"{first.org}: {first.platform}",
        },
        extra={
            "measured_by": "log",
            "parity_unverified": [
                "MLPerf's own hyperparameters and rules, not the canonical config's (see the notes)",
                "the submission's own timer (run_start to run_stop), no device synchronize of ours",
            ],
            "from_log": {
                "derivation": "MLPerf result log(s): run_stop's throughput (median of the runs)",
                "notes": notes,
            },
        },
        measures="MLPerf Training: time to train (run_start to run_stop) and run_stop's throughput",
    )
    return record


def ingest(logs: list[str | Path], cfg, out_root: str | Path, run_id: str) -> list[tuple[Path, dict]]:
    """Every log read (any that cannot be is a LogError naming it), grouped by system, one record each
    written to OUT/<run-id>/<system>/run.json: [(folder, record)]."""
    from .results import atomic_write_json

    by_system: dict[tuple[str, str], list[MLPerfRun]] = defaultdict(list)
    for path in logs:
        run = read_log(path)
        by_system[(run.org, run.platform)].append(run)
    written = []
    for runs in by_system.values():
        record = record_of(runs, cfg, run_id)
        folder = Path(out_root) / run_id / record["impl"]
        atomic_write_json(folder / "run.json", record)
        written.append((folder, record))
    return written


# ------------------------------------------------------------------------------ writing a run's log
MLPERF_LOG = "mlperf.log"


def _logger(path: Path):
    """An mllog writer to ``path`` only (not the shared default logger)."""
    import logging

    from mlperf_logging.mllog.mllog import MLLogger

    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger(f"mrcnn-bench.mlperf.{path}")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return MLLogger(logger=logger, default_clear_line=False), handler


def hparams_of(cfg: dict) -> dict:
    """A run's config (run.json's) as MLPerf's hyperparameter keys."""
    solver, inp = cfg.get("solver") or {}, cfg.get("input") or {}
    rpn, bench = (cfg.get("model") or {}).get("rpn") or {}, cfg.get("benchmark") or {}
    return {
        "global_batch_size": solver.get("ims_per_batch"),
        "gradient_accumulation_steps": bench.get("grad_accum", 1),
        "opt_base_learning_rate": solver.get("base_lr"),
        "opt_learning_rate_warmup_steps": solver.get("warmup_iters"),
        "opt_learning_rate_warmup_factor": solver.get("warmup_factor"),
        "opt_learning_rate_decay_steps": solver.get("steps"),
        "opt_learning_rate_decay_factor": solver.get("gamma"),
        "min_image_size": (inp.get("min_size_train") or [None])[0],
        "max_image_size": inp.get("max_size_train"),
        "num_image_candidates": rpn.get("post_nms_topk_train"),
    }


def _times(record: dict, iterations: list[dict]) -> tuple[float, float, list[float]]:
    """(the launch, the first iteration's start, each iteration's end), ms since the epoch: the iterations'
    wall_time, or for older records their clock from the start ending at the record's time; the launch is
    the record's time less wall_s (its seconds since the launch)."""
    from datetime import datetime

    env = record.get("environment") or {}
    if not iterations:
        raise ValueError("no iteration recorded: the run's start and stop are unknown")
    if all("wall_time" in row for row in iterations):
        ms = [1e3 * row["wall_time"] for row in iterations]
    elif env.get("time") and all("end_time" in row for row in iterations):
        last = 1e3 * datetime.fromisoformat(env["time"]).timestamp()
        ms = [last - 1e3 * (iterations[-1]["end_time"] - row["end_time"]) for row in iterations]
    else:
        raise ValueError(
            "the iterations carry no wall_time or end_time: the run's start and stop are unknown"
        )
    run_start = ms[0] - 1e3 * iterations[0]["duration"]
    init_start = run_start
    if env.get("time") and record.get("wall_s"):
        launched = 1e3 * (datetime.fromisoformat(env["time"]).timestamp() - float(record["wall_s"]))
        init_start = min(launched, run_start)
    return init_start, run_start, ms


def write_log(run_dir: Path, record: dict, iterations: list[dict]) -> Path:
    """``mlperf.log`` beside run.json, written with MLCommons' mllog from the finished run: the submission
    keys (org mrcnn-bench, division closed, status research), the hyperparameters, cache_clear, init
    (the launch to the first iteration), the run (the first iteration's start to the last's end, or
    the evaluation's), one block over the iterations with the window's throughput as tracked_stats,
    train_samples and eval_samples, and eval_accuracy (BBOX and SEGM) when the run evaluated. The run
    stops "success" only where the evaluation reached MLPerf's target (bbox 0.377, segm 0.339), else
    "aborted", as a submission stopped short of it would."""
    from mlperf_logging.mllog import constants as c

    cfg, summary = record.get("config") or {}, record.get("summary") or {}
    env, data = record.get("environment") or {}, record.get("data") or {}
    hparams = hparams_of(cfg)
    init_start, run_start, ms = _times(record, iterations)
    device = ", ".join(sorted(set(env.get("gpus") or []))) or env.get("cpu") or record.get("device")
    path = Path(run_dir) / MLPERF_LOG
    tmp = path.with_name(f".{MLPERF_LOG}.tmp")
    log, handler = _logger(tmp)
    try:
        for key, value in (
            (c.SUBMISSION_BENCHMARK, c.MASKRCNN),
            (c.SUBMISSION_ORG, "mrcnn-bench"),
            (c.SUBMISSION_DIVISION, "closed"),
            (c.SUBMISSION_STATUS, "research"),
            (c.SUBMISSION_PLATFORM, f"{record.get('world_size', 1)}x{device}"),
            ("implementation", record.get("impl")),
        ):
            log.event(key=key, value=value, time_ms=init_start)
        log.event(key=c.CACHE_CLEAR, value=True, time_ms=init_start)
        log.start(key=c.INIT_START, time_ms=init_start)
        for key, value in hparams.items():
            if value is not None:
                log.event(key=key, value=value, time_ms=init_start)
        log.event(key=c.SEED, value=(cfg.get("benchmark") or {}).get("seed", 0), time_ms=init_start)
        log.end(key=c.INIT_STOP, time_ms=run_start)
        log.start(key=c.RUN_START, time_ms=run_start)
        log.event(key=c.TRAIN_SAMPLES, value=(data.get("train") or {}).get("images", 0), time_ms=run_start)
        log.event(key=c.EVAL_SAMPLES, value=(data.get("val") or {}).get("images", 0), time_ms=run_start)
        log.start(key=c.BLOCK_START, metadata={"step_num": 0}, time_ms=run_start)
        if summary.get("images_per_s"):
            window = record.get("window") or {}
            stats = {
                "throughput": summary["images_per_s"],
                "window": [window.get("warmup"), window.get("end")],
            }
            log.event(key="tracked_stats", value=stats, metadata={"step": len(iterations)}, time_ms=ms[-1])
        log.end(key=c.BLOCK_STOP, metadata={"step_num": len(iterations)}, time_ms=ms[-1])
        stop, status = ms[-1], "aborted"
        accuracy = summary.get("accuracy")
        if accuracy:
            epochs = len(iterations) * (hparams["global_batch_size"] or 0)
            epochs /= max(1, (data.get("train") or {}).get("images", 1))
            meta = {"epoch_num": round(epochs, 3)}
            log.start(key=c.EVAL_START, metadata=meta, time_ms=stop)
            value = {"BBOX": accuracy["bbox"]["AP"], "SEGM": accuracy["segm"]["AP"]}
            log.event(key=c.EVAL_ACCURACY, value=value, metadata=meta, time_ms=stop)
            log.end(key=c.EVAL_STOP, metadata=meta, time_ms=stop)
            if value["BBOX"] >= 0.377 and value["SEGM"] >= 0.339:
                status = "success"
        log.end(
            key=c.RUN_STOP,
            metadata={"status": status, "throughput": summary.get("images_per_s")},
            time_ms=stop,
        )
    finally:
        handler.close()
    tmp.replace(path)
    return path
