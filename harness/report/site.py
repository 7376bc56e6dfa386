"""``mrcnn-bench publish RESULTS --out SITE``: a static site of every run under RESULTS — no server, nothing
fetched at view time (vega, vega-lite and vega-embed are copied in from ``site_assets/``), so it opens from
the file system and from any static host.

- ``index.html``: per scenario (config, processes x device, dtype, task) its latest comparison — the
  summary table of its newest round — and the records that could not be read, with why;
- ``<scenario>.html``: throughput over commits per implementation, absolute and relative to torchvision
  where it ran beside, with the steps ``regress --history`` finds marked and their commits named; the
  whole report of the newest round (work per image, MFU, energy, phases, inference, accuracy,
  environment, the machine during the window); and every run with its commit, its machine's state and
  links to its files;
- ``runs/``: each run folder's files, copied (a static host serves what the site links).

A second publish rewrites only what changed: ``manifest.json`` keeps a digest of each page's inputs (the
records' paths, sizes and times, and this module's own source) and each copied file's size and time.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..config.settings import MODE_TITLES

ASSETS = Path(__file__).parent / "site_assets"
VENDORED = ("vega.min.js", "vega-lite.min.js", "vega-embed.min.js")
RUN_FILES = ("run.json", "iterations.jsonl", "log.txt", "telemetry.jsonl", "launch.json", "mlperf.log")
PEER = "torchvision"  # the history relative to this implementation, where it ran in the same round
STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:left}th{background:#f3f3f3}
code{background:#f3f3f3;padding:0 3px}.bad{color:#a00}.warning{color:#a60}.chart{margin:1em 0}
nav a{margin-right:1em}"""


@dataclass
class Published:
    out: Path
    scenarios: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)  # pages written this time
    kept: list[str] = field(default_factory=list)  # pages whose inputs had not changed
    copied: int = 0  # run files copied (new or changed)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # records that could not be read, and why

    def text(self) -> str:
        return (
            f"{self.out / 'index.html'}: {len(self.scenarios)} scenario(s); pages written "
            f"{len(self.written)}, unchanged "
            f"{len(self.kept)}; {self.copied} file(s) copied"
            + "".join(f"\nskipped {p}: {why}" for p, why in self.skipped)
        )


def read_records(results: Path) -> tuple[list[dict], list[tuple[str, str]]]:
    """Every record under ``results`` (through the format's history, results.load_run); those that cannot
    be read are listed with the reason instead."""
    from ..records.results import ResultError, find_runs, load_run

    records, skipped = [], []
    for path in find_runs([results]):
        try:
            records.append(load_run(path))
        except (ResultError, OSError, ValueError) as e:
            skipped.append((str(path), str(e).splitlines()[0]))
    return records, skipped


def scenario_of(record: dict) -> str:
    bench = (record.get("config") or {}).get("benchmark") or {}
    name = (record.get("config") or {}).get("name") or "unnamed"
    task = bench.get("task", "train") + (
        " with phases timed" if bench.get("phases") else ""
    )  # a phases run is not a throughput
    best = _BEST if bench.get("settings") == "best" else ""  # --best: a scenario of its own
    where = f"{record.get('world_size', '?')} × {record.get('device', '?')}, {record.get('dtype', '?')}"
    return f"{name}, {where}, {task}{best}"


_BEST = f", {MODE_TITLES['best']}"


def _best_first(item) -> tuple:
    """A scenario's two modes side by side, each at its best first (the report's order)."""
    scenario = item[0]
    return scenario.removesuffix(_BEST), not scenario.endswith(_BEST)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _round_of(record: dict) -> Path:
    return Path(record["_path"]).parent.parent


def _rounds(records: list[dict]) -> dict[Path, dict[str, dict]]:
    rounds: dict[Path, dict[str, dict]] = defaultdict(dict)
    for r in records:
        rounds[_round_of(r)][r["impl"]] = r
    return dict(rounds)


def _when(records) -> str:
    return max(((r.get("environment") or {}).get("time") or "") for r in records)


def _page(title: str, body: str, charts: dict[str, dict]) -> str:
    scripts = "".join(f'<script src="assets/{name}"></script>' for name in VENDORED) if charts else ""
    embeds = "".join(
        f"vegaEmbed('#{cid}', {json.dumps(spec)}, {{actions: false}});" for cid, spec in charts.items()
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<link rel='stylesheet' href='assets/site.css'>{scripts}</head><body>"
        f"<nav><a href='index.html'>all scenarios</a></nav><h1>{html.escape(title)}</h1>{body}"
        + (f"<script>{embeds}</script>" if charts else "")
        + "</body></html>\n"
    )


def _markdown(text: str) -> str:
    import markdown

    return markdown.markdown(text, extensions=["tables"])


def _history_chart(steps, title: str) -> dict:
    """A Vega-Lite line chart of each implementation's value per commit, the step commits as rules."""
    values = [
        {"impl": s.impl, "commit": c[:10], "order": i, "value": v}
        for s in steps
        for i, (c, v) in enumerate(zip(s.commits, s.values))
    ]
    rules = [
        {"impl": s.impl, "commit": s.commit[:10], "order": s.index, "change": round(s.change, 3)}
        for s in steps
        if s.significant
    ]
    x = {
        "field": "order",
        "type": "quantitative",
        "title": "commit (in the order measured)",
        "axis": {"tickMinStep": 1},
    }
    layers = [
        {
            "data": {"values": values},
            "mark": {"type": "line", "point": True},
            "encoding": {
                "x": x,
                "y": {"field": "value", "type": "quantitative", "title": title, "scale": {"zero": False}},
                "color": {"field": "impl", "type": "nominal"},
                "tooltip": [{"field": "impl"}, {"field": "commit"}, {"field": "value", "format": ".4g"}],
            },
        }
    ]
    if rules:
        layers.append(
            {
                "data": {"values": rules},
                "mark": {"type": "rule", "strokeDash": [4, 4]},
                "encoding": {
                    "x": x,
                    "color": {"field": "impl", "type": "nominal"},
                    "tooltip": [
                        {"field": "impl"},
                        {"field": "commit", "title": "stepped at"},
                        {"field": "change", "title": "after ÷ before"},
                    ],
                },
            }
        )
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "width": 640,
        "height": 260,
        "layer": layers,
    }


def _history(records: list[dict]) -> tuple[str, dict]:
    """The history section of a scenario: charts (absolute, relative to the peer) and the steps in words."""
    from ..records.results import ResultError
    from .regress import history_of

    rounds, body, charts = _rounds(records), [], {}
    for rel, title in ((None, "img/s"), (PEER, f"img/s ÷ {PEER}'s in the same round")):
        try:
            steps = history_of(rounds, "this scenario", relative_to=rel)
        except ResultError:
            continue  # no successful run (with the peer beside it)
        cid = f"history-{_slug(title)}"
        charts[cid] = _history_chart(steps, title)
        lines = [
            f"<li><b>{html.escape(s.impl)}</b>: "
            + (
                f"stepped at <code>{s.commit[:10]}</code>: ×{s.change:.3f} (p={s.p_value:.2g})"
                if s.significant
                else f"no step over {len(s.commits)} commit(s)"
            )
            + "</li>"
            for s in steps
        ]
        body.append(
            f"<h3>{html.escape(title)}</h3><div class='chart' id='{cid}'></div><ul>{''.join(lines)}</ul>"
        )
    return "<h2>Over commits</h2>" + "".join(body or ["<p>no successful run</p>"]), charts


def _state_cell(record: dict) -> str:
    findings = ((record.get("machine_state") or {}).get("findings")) or []
    worst = [f for f in findings if f.get("level") in ("warning", "bad")]
    noisy = record.get("noisy") or []
    cells = [
        f"<span class='{f['level']}'>{html.escape(f['check'])}: {html.escape(str(f['value']))}</span>"
        for f in worst
    ]
    cells += [f"<span class='bad'>noisy: {html.escape(c)}</span>" for c in noisy]
    return "<br>".join(cells) if cells else ("ok" if findings else "not recorded")


def _runs_table(records: list[dict], results: Path) -> str:
    rows = []
    for r in sorted(
        records, key=lambda r: ((r.get("environment") or {}).get("time") or "", r["impl"]), reverse=True
    ):
        folder = Path(r["_path"]).parent
        rel = folder.relative_to(results).as_posix()
        files = [name for name in RUN_FILES if (folder / name).is_file()] + sorted(
            p.name for p in folder.glob("trace-*.json.gz")
        )
        links = " ".join(
            f"<a href='runs/{html.escape(rel)}/{html.escape(n)}'>{html.escape(n)}</a>" for n in files
        )
        env = r.get("environment") or {}
        ips = (r.get("summary") or {}).get("images_per_s")
        rows.append(
            f"<tr><td>{html.escape(rel)}</td><td>{html.escape(r['impl'])}</td><td>{html.escape(r['status'])}</td>"
            f"<td>{f'{ips:.4g}' if ips else '—'}</td><td>{html.escape(env.get('time') or '—')}</td>"
            f"<td><code>{html.escape((env.get('git_sha') or '—')[:12])}</code></td>"
            f"<td>{_state_cell(r)}</td><td>{links}</td></tr>"
        )
    return (
        "<h2>Every run</h2><table><tr><th>run</th><th>implementation</th><th>status</th><th>img/s</th>"
        "<th>measured</th>"
        "<th>commit</th><th>machine (findings not ok; noise)</th><th>files</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _digest(records: list[dict], extra: str = "") -> str:
    h = hashlib.sha1(Path(__file__).read_bytes())
    h.update(extra.encode())
    for r in sorted(records, key=lambda r: r["_path"]):
        st = os.stat(r["_path"])
        h.update(f"{r['_path']}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _copy(src: Path, dst: Path, manifest: dict) -> bool:
    """Copy ``src`` to ``dst`` unless the manifest says this size and time were copied already."""
    st = src.stat()
    stamp = [st.st_size, st.st_mtime_ns]
    if manifest.get(str(dst)) == stamp and dst.is_file():
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)
    manifest[str(dst)] = stamp
    return True


def _write(out: Path, name: str, text: str, digest: str, manifest: dict, done: Published) -> None:
    from ..records.results import atomic_write_text

    if manifest.get(name) == digest and (out / name).is_file():
        done.kept.append(name)
        return
    atomic_write_text(out / name, text)
    manifest[name] = digest
    done.written.append(name)


def _work_and_energy(records: list[dict]) -> str:
    """For finished training runs: their work per image, FLOPs and MFU (the report's detail table) and the
    machine's energy and utilisation where measured (its machine table), as HTML."""
    from ..records.frames import runs_frame
    from .tables import _md, detail_table, machine_table

    ok = [
        r for r in records if r["status"] == "ok" and (r.get("summary") or {}).get("images_per_s") is not None
    ]
    if not ok:
        return ""
    df = runs_frame(ok)
    tables = [detail_table(df), machine_table(df)]
    return "".join(_markdown(_md(t)) for t in tables if t is not None and len(t))


def _newest_round_table(latest: list[dict]) -> str:
    """Every implementation of the newest round, the failed ones with their status and reason."""
    rows = []
    for r in sorted(latest, key=lambda r: (r["status"] != "ok", r["impl"])):
        rate = (r.get("summary") or {}).get("images_per_s")
        ok = r["status"] == "ok"
        rows.append(
            f"<tr><td>{html.escape(r['impl'])}</td>"
            f"<td class='{'' if ok else 'bad'}'>{html.escape(r['status'])}</td>"
            f"<td>{f'{rate:.4g}' if isinstance(rate, (int, float)) else '—'}</td>"
            f"<td>{html.escape(str(r.get('reason') or ''))}</td></tr>"
        )
    return (
        "<table class='round'><tr><th>implementation</th><th>status</th><th>img/s</th><th>reason</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _commit_rounds(
    rounds: dict[Path, dict[str, dict]], newest: dict[str, dict]
) -> tuple[str | None, list[dict[str, dict]]]:
    """The newest round's commit (``environment.git_sha``) and the rounds measured on it."""

    def sha(impls: dict[str, dict]) -> str | None:
        return next(((r.get("environment") or {}).get("git_sha") for r in impls.values()), None)

    commit = sha(newest)
    return commit, [impls for impls in rounds.values() if sha(impls) == commit]


def _relative_chart(commit_rounds: list[dict[str, dict]]) -> dict | None:
    """Vega-Lite: each implementation's img/s over the fastest other's in the same round, the median of
    the rounds as a bar, their range as a rule; None with fewer than two implementations ok in a round."""
    values = []
    for impls in commit_rounds:
        rates = {
            i: r["summary"]["images_per_s"]
            for i, r in impls.items()
            if r["status"] == "ok" and isinstance((r.get("summary") or {}).get("images_per_s"), (int, float))
        }
        for impl, rate in rates.items():
            others = [v for i, v in rates.items() if i != impl]
            if others:
                values.append({"impl": impl, "ratio": rate / max(others)})
    if not values:
        return None
    y = {"field": "impl", "type": "nominal", "title": None, "sort": "-x"}
    title = "img/s ÷ the fastest other's, same round"
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "width": 480,
        "data": {"values": values},
        "layer": [
            {
                "mark": "bar",
                "encoding": {
                    "y": y,
                    "x": {"aggregate": "median", "field": "ratio", "type": "quantitative", "title": title},
                    "tooltip": [
                        {"field": "impl"},
                        {"aggregate": "median", "field": "ratio", "format": ".3f"},
                    ],
                },
            },
            {
                "mark": {"type": "rule", "color": "black"},
                "encoding": {
                    "y": y,
                    "x": {"aggregate": "min", "field": "ratio", "type": "quantitative"},
                    "x2": {"aggregate": "max", "field": "ratio"},
                },
            },
            {"mark": {"type": "rule", "strokeDash": [4, 4]}, "encoding": {"x": {"datum": 1}}},
        ],
    }


def _index_section(
    scenario: str, page: str, recs: list[dict], rounds: dict, newest: dict, charts: dict[str, dict]
) -> str:
    """A scenario on the index: the newest round in full (failed ones with why), the median and spread
    of the rounds of its commit, a chart of each relative to the fastest other, the task's short table."""
    from ..records.frames import runs_frame
    from .tables import compact_markdown, repeats_table

    latest = list(newest.values())
    sha, same_commit = _commit_rounds(rounds, newest)
    sha = sha or "unknown"
    parts = [
        f"<h2><a href='{page}'>{html.escape(scenario)}</a></h2>",
        f"<p>{len(recs)} run(s) in {len(rounds)} round(s).</p>",
        f"<h3>The newest round, {html.escape(_when(latest))}</h3>",
        _newest_round_table(latest),
    ]
    commit_records = [r for impls in same_commit for r in impls.values()]
    table = repeats_table(runs_frame(commit_records)) if len(same_commit) > 1 else None
    if table is not None:
        parts.append(
            f"<h3>The {len(same_commit)} rounds of commit <code>{html.escape(sha[:12])}</code>: "
            "median and spread</h3>" + _markdown(table.to_markdown(index=False))
        )
    chart = _relative_chart(same_commit)
    if chart is not None:
        cid = f"relative-{_slug(scenario)}"
        charts[cid] = chart
        parts.append(f"<div class='chart' id='{cid}'></div>")
    # the task's own short table (latency, accuracy, loaders, ...) and the work and energy per image
    parts.append(_markdown(compact_markdown(latest)) + _work_and_energy(latest))
    return "".join(parts)


def publish(results: str | os.PathLike, out: str | os.PathLike) -> Published:
    from .tables import render_markdown

    results, out = Path(results).resolve(), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    manifest = (
        json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"pages": {}, "files": {}}
    )
    done = Published(out)
    records, done.skipped = read_records(results)
    for name in (*VENDORED, *(p.name for p in ASSETS.glob("LICENSE-*"))):
        done.copied += _copy(ASSETS / name, out / "assets" / name, manifest["files"])
    (out / "assets" / "site.css").write_text(STYLE)
    by_scenario: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_scenario[scenario_of(r)].append(r)
    index, index_charts = [], {}
    for scenario, recs in sorted(by_scenario.items(), key=_best_first):
        done.scenarios.append(scenario)
        rounds = _rounds(recs)
        newest = max(rounds.values(), key=lambda impls: _when(impls.values()))
        latest = list(newest.values())
        page = f"{_slug(scenario)}.html"
        history, charts = _history(recs)
        body = (
            f"<h2>The newest round ({html.escape(_when(latest))})</h2>"
            + _markdown(render_markdown(latest))
            + history
            + _runs_table(recs, results)
        )
        _write(out, page, _page(scenario, body, charts), _digest(recs, scenario), manifest["pages"], done)
        for r in recs:
            folder = Path(r["_path"]).parent
            for f in [*(folder / n for n in RUN_FILES), *folder.glob("trace-*.json.gz")]:
                if f.is_file():
                    done.copied += _copy(
                        f, out / "runs" / folder.relative_to(results) / f.name, manifest["files"]
                    )
        index.append(_index_section(scenario, page, recs, rounds, newest, index_charts))
    if done.skipped:
        index.append(
            "<h2>Records not read</h2><ul>"
            + "".join(
                f"<li><code>{html.escape(p)}</code>: {html.escape(why)}</li>" for p, why in done.skipped
            )
            + "</ul>"
        )
    body = "".join(index) or "<p>no runs found</p>"
    _write(
        out,
        "index.html",
        _page(f"mrcnn-bench: {results.name}", body, index_charts),
        _digest(records, json.dumps(done.skipped)),
        manifest["pages"],
        done,
    )
    from ..records.results import atomic_write_json

    atomic_write_json(manifest_path, manifest)
    return done
