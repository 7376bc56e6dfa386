"""Check that a folder of wheels, installed with --no-deps on a GPU machine, leaves nothing missing.

    python scripts/wheel_closure.py WHEEL_DIR [--python 3.12] [--max-mib 60]

Every ``Requires-Dist`` of every wheel in WHEEL_DIR, and every dependency of mrcnn-bench itself
(pyproject.toml), evaluated for CPython ``--python`` on Linux x86-64 (extras not asked for are
ignored), must be met by a wheel in the folder or by a package the GPU machines already carry
(DEVICE_HAS, from the device tool's KINDS.md). Prints what is missing and exits 1; also exits 1 when the
folder is larger than ``--max-mib`` (the device tool carries at most 64 MiB of working tree).
"""

from __future__ import annotations

import argparse
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import tomllib
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

# Python packages of the GPU machines' image ('cuda'), as KINDS.md lists them (2026-11-17): only the names
# this project's dependencies could ask for. torch 2.11 and torchvision 0.26 are among them.
DEVICE_HAS = {
    canonicalize_name(n)
    for n in """absl-py aiohttp attrs certifi charset-normalizer click cloudpickle colorama contourpy cycler
    filelock fonttools fsspec grpcio h5py idna imageio iniconfig jinja2 joblib kiwisolver markdown
    markupsafe matplotlib mpmath networkx ninja numpy nvidia-ml-py opencv-python-headless packaging
    pandas pillow pip pluggy portalocker protobuf psutil pybind11 pygments pyparsing pytest
    python-dateutil pyyaml regex requests rich scipy setuptools six sympy tabulate tensorboard
    tensorboard-data-server tqdm typing-extensions urllib3 werkzeug wheel torch torchvision triton
    pytest-timeout pytest-xdist""".split()
}
# What a dependency may be met by on the device under another name (mmengine asks for opencv-python;
# the machines carry the headless build of the same cv2).
ALIASES = {canonicalize_name("opencv-python"): canonicalize_name("opencv-python-headless")}

# Requirements a wheel declares that the suite never imports, with why (the .venv where the tests pass
# installs these packages with --no-deps and lacks them too).
NOT_NEEDED = {
    (
        canonicalize_name("pb1-detectron2"),
        canonicalize_name(n),
    ): "detectron2's setup.py lists it for its tools "
    "(code formatting, graph export, Python 2 shims); training and evaluation never import it"
    for n in ("black", "future", "pydot")
}
NOT_NEEDED[canonicalize_name("holistictraceanalysis"), canonicalize_name("jupyterlab")] = (
    "Holistic Trace Analysis lists it for its notebooks; TraceAnalysis (harness/tasks/trace.py) never "
    "imports it"
)


def wheel_metadata(path: Path) -> tuple[str, list[str]]:
    with zipfile.ZipFile(path) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(z.read(name).decode())
    return canonicalize_name(meta["Name"]), meta.get_all("Requires-Dist") or []


def sdist_name(path: Path) -> str:
    with tarfile.open(path) as tar:
        top = tar.getnames()[0].split("/")[0]
    return canonicalize_name(top.rsplit("-", 1)[0])


def environment(python: str) -> dict[str, str]:
    env = default_environment()
    env.update(
        python_version=python,
        python_full_version=python + ".0",
        implementation_name="cpython",
        platform_python_implementation="CPython",
        sys_platform="linux",
        platform_system="Linux",
        platform_machine="x86_64",
        os_name="posix",
        extra="",
    )
    return env


def missing(wheel_dir: Path, python: str, project: Path | None) -> list[str]:
    env = environment(python)
    provided: dict[str, str] = {}
    wants: list[tuple[str, str]] = []  # (who, requirement)
    for wheel in sorted(wheel_dir.glob("*.whl")):
        name, requires = wheel_metadata(wheel)
        tags = parse_wheel_filename(wheel.name)[3]
        pythons = {t.interpreter for t in tags}
        if not pythons & {"py3", "py2.py3", f"cp{python.replace('.', '')}"}:
            yield f"{wheel.name}: built for {sorted(pythons)}, not CPython {python}"
        provided[name] = wheel.name
        wants += [
            (wheel.name, r)
            for r in requires
            if (name, canonicalize_name(Requirement(r).name)) not in NOT_NEEDED
        ]
    for sdist in sorted(
        wheel_dir.glob("*.tar.gz")
    ):  # built on the device (mmcv): its needs are listed by hand
        provided[sdist_name(sdist)] = sdist.name
    if project is not None:
        meta = tomllib.loads(project.read_text())["project"]
        wants += [(project.name, r) for r in meta["dependencies"]]
    for who, text in wants:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = canonicalize_name(req.name)
        if name in provided or name in DEVICE_HAS or ALIASES.get(name) in DEVICE_HAS:
            continue
        yield f"{who} needs {text}: no wheel here and not on the GPU machines"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel_dir", type=Path)
    parser.add_argument("--python", default="3.12")
    parser.add_argument("--max-mib", type=float, default=60.0)
    parser.add_argument(
        "--project", type=Path, default=Path(__file__).resolve().parent.parent / "pyproject.toml"
    )
    args = parser.parse_args()
    if not args.wheel_dir.is_dir():
        print(f"{args.wheel_dir}: no such folder (run scripts/device_wheels.sh)", file=sys.stderr)
        return 1
    problems = list(missing(args.wheel_dir, args.python, args.project))
    size = sum(p.stat().st_size for p in args.wheel_dir.iterdir() if p.is_file()) / 2**20
    if size > args.max_mib:
        problems.append(f"{args.wheel_dir}: {size:.1f} MiB, more than {args.max_mib:g} MiB")
    for p in problems:
        print(f"wheel_closure: {p}", file=sys.stderr)
    count = len(list(args.wheel_dir.glob("*.whl")))
    print(
        f"wheel_closure: {args.wheel_dir}: {count} wheels, {size:.1f} MiB, "
        f"{'nothing missing for CPython ' + args.python if not problems else f'{len(problems)} problem(s)'}"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
