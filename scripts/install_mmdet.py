"""Install mmdetection 3.3.0 with a compiled mmcv 2.1.0 into this interpreter, without GitHub access.

    python scripts/install_mmdet.py [--cuda auto|on|off] [--cache DIR] [--jobs N] [--force]
    python scripts/install_mmdet.py --sdist mmcv-2.1.0.tar.gz --wheel-dir DIR [--cuda on]
        # offline: build the mmcv wheel from a local sdist into DIR; install nothing (the GPU check)

mmdet 3.3.0 and mmengine 0.10.7 are pure Python wheels on PyPI. mmdet needs mmcv>=2.0.0rc4,<2.2.0 with
its compiled ops (``mmcv._ext``: NMS, RoIAlign); PyPI has no mmcv 2.1.0 wheel for torch 2.14, only the
sdist, so it is built here against the torch of this environment. Two changes make it build:

1. setup.py imports ``pkg_resources`` (gone from setuptools >= 80): the same three names from
   ``importlib.metadata`` and ``packaging``.
2. setup.py asks for ``-std=c++17``; torch 2.14's headers need C++20.

The build (77 C++ files; 4 to 7 min on 2 cores for the CPU ops, much longer with CUDA) happens once: the
wheel,
stripped of debug symbols, is kept in the cache (``$MRCNN_BENCH_CACHE`` or ``~/.cache/mrcnn-bench``)
under a key of mmcv version, torch version and CPU/CUDA, and later installs take it from there.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from pypi_sdist import fetch_sdist

MMCV_VERSION = "2.1.0"
MMCV_SHA256 = "d387bcab66b467479b6660310e23746cfc79c6e57acf04094680adb499a5cd3f"
PACKAGES = ["mmengine==0.10.7", "mmdet==3.3.0"]
# mmcv's own runtime requirements (its wheel is installed with --no-deps)
MMCV_DEPENDENCIES = ["addict", "packaging", "Pillow", "pyyaml", "yapf"]  # opencv-python comes with mmengine
BUILD_TOOLS = ["wheel", "ninja"]  # wheel: to strip the built wheel; ninja: parallel compiles
PKG_RESOURCES_IMPORT = "from pkg_resources import DistributionNotFound, get_distribution, parse_version\n"
PKG_RESOURCES_REPLACEMENT = (
    "from importlib.metadata import PackageNotFoundError as DistributionNotFound\n"
    "from importlib.metadata import distribution as get_distribution\n"
    "from packaging.version import parse as parse_version\n"
)


def probe() -> tuple[str, bool] | None:
    """('mmdet X, mmcv Y', whether mmcv's ops have CUDA) when mmdet and mmcv's compiled ops import here."""
    code = (
        "import mmdet, mmcv, mmcv.ops; print(f'mmdet {mmdet.__version__}, mmcv {mmcv.__version__}'); "
        "print(mmcv.ops.get_compiling_cuda_version())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        return None
    versions, cuda = out.stdout.strip().splitlines()[-2:]
    return versions, cuda != "not available"


def torch_build() -> tuple[str, bool]:
    import torch

    return torch.__version__.split("+")[0], torch.cuda.is_available()


def patch(src: Path) -> None:
    setup = src / "setup.py"
    text = setup.read_text()
    if PKG_RESOURCES_IMPORT not in text:
        raise SystemExit(f"{setup}: expected the line {PKG_RESOURCES_IMPORT.strip()!r}")
    text = text.replace(PKG_RESOURCES_IMPORT, PKG_RESOURCES_REPLACEMENT)
    text, n = re.subn(r"-std=c\+\+17", "-std=c++20", text)
    if n == 0:
        raise SystemExit(f"{setup}: expected '-std=c++17' flags to raise to c++20, found none")
    setup.write_text(text)


def build_wheel(src: Path, out: Path, cuda: bool, jobs: int, log: Path) -> Path:
    """pip wheel the patched sdist; progress is ninja's [n/total] lines, the whole output goes to ``log``."""
    env = dict(os.environ, MMCV_WITH_OPS="1", FORCE_CUDA="1" if cuda else "0", MAX_JOBS=str(jobs))
    env["CFLAGS"] = env.get("CFLAGS", "") + " -g0"  # no debug info: a third of the compile time
    # torch's BuildExtension compiles in parallel only when it finds ninja on PATH (this venv's bin)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if cuda:
        import torch

        if "TORCH_CUDA_ARCH_LIST" not in env:  # this machine's GPU, else Ampere and Hopper
            env["TORCH_CUDA_ARCH_LIST"] = (
                "{}.{}".format(*torch.cuda.get_device_capability())
                if torch.cuda.is_available()
                else "8.0;9.0"
            )
        env.setdefault("CUDA_HOME", "/usr/local/cuda")
        nvidia = Path(torch.__file__).parent.parent / "nvidia"
        env["CPATH"] = (
            os.pathsep.join(str(p) for p in nvidia.glob("*/include")) + os.pathsep + env.get("CPATH", "")
        )
    command = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-v",
        "--no-build-isolation",
        "--no-deps",
        "-w",
        str(out),
        str(src),
    ]
    start = time.monotonic()
    with open(log, "w") as sink:
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for line in process.stdout:
            sink.write(line)
            step = re.match(r"\s*\[(\d+)/(\d+)\]", line)  # ninja's, indented by pip -v
            if step and (int(step.group(1)) % 10 == 0 or step.group(1) == step.group(2)):
                print(
                    f"  mmcv build {step.group(1)}/{step.group(2)}  {time.monotonic() - start:4.0f} s",
                    flush=True,
                )
        if process.wait() != 0:
            tail = "".join(log.read_text().splitlines(keepends=True)[-40:])
            raise SystemExit(f"{tail}\nbuilding mmcv {MMCV_VERSION} failed; the whole log: {log}")
    print(f"mmcv {MMCV_VERSION} built in {time.monotonic() - start:.0f} s", flush=True)
    (wheel,) = out.glob("mmcv-*.whl")
    return wheel


def strip(wheel: Path, out: Path) -> Path:
    """The same wheel without debug symbols in its shared objects (32 MB -> 2 MB); as it is where binutils'
    strip is missing."""
    if shutil.which("strip") is None:
        print("no 'strip' on this machine: the wheel keeps its debug symbols", flush=True)
        return Path(shutil.move(str(wheel), out / wheel.name))
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "wheel", "unpack", "-d", tmp, str(wheel)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        (unpacked,) = Path(tmp).iterdir()
        for so in unpacked.rglob("*.so"):
            subprocess.run(["strip", "--strip-debug", str(so)], check=True)
        subprocess.run(
            [sys.executable, "-m", "wheel", "pack", "-d", str(out), str(unpacked)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    (stripped,) = out.glob("mmcv-*.whl")
    return stripped


def cached_wheel(cache: Path, cuda: bool, jobs: int) -> Path:
    torch_version, _ = torch_build()
    build = f"{'cuda' if cuda else 'cpu'}-py{sys.version_info[0]}{sys.version_info[1]}"
    key = cache / "wheels" / f"mmcv-{MMCV_VERSION}-torch{torch_version}-{build}"
    found = sorted(key.glob("mmcv-*.whl"))
    if found:
        print(f"using the cached wheel {found[0]}")
        return found[0]
    print(
        f"no cached mmcv wheel in {key}: building it from the sdist (once; 4 to 7 min on 2 cores for the CPU "
        "ops)",
        flush=True,
    )
    key.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=key.parent) as tmp:
        tmp = Path(tmp)
        sdist = fetch_sdist("mmcv", MMCV_VERSION, MMCV_SHA256, cache / "sdists")
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        src = tmp / f"mmcv-{MMCV_VERSION}"
        patch(src)
        (tmp / "raw").mkdir()
        (tmp / "stripped").mkdir()
        log = key.parent / f"{key.name}.build.log"
        wheel = strip(build_wheel(src, tmp / "raw", cuda, jobs, log), tmp / "stripped")
        (tmp / "key").mkdir()
        shutil.move(str(wheel), tmp / "key" / wheel.name)
        (tmp / "key").rename(key)  # all or nothing: a failed build leaves no half wheel behind
    return key / wheel.name


def build_offline(sdist: Path | None, wheel_dir: Path, cuda: bool, jobs: int) -> int:
    """The patched sdist built into ``wheel_dir`` (its log beside the wheel), from a local file."""
    if sdist is None or sdist.name != f"mmcv-{MMCV_VERSION}.tar.gz" or not sdist.is_file():
        raise SystemExit(
            f"--wheel-dir needs --sdist PATH/mmcv-{MMCV_VERSION}.tar.gz (got {sdist}): this mode downloads "
            "nothing"
        )
    wheel_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        local = fetch_sdist("mmcv", MMCV_VERSION, MMCV_SHA256, sdist.parent)  # verifies, no download
        with tarfile.open(local) as tar:
            tar.extractall(tmp, filter="data")
        src = tmp / f"mmcv-{MMCV_VERSION}"
        patch(src)
        (tmp / "raw").mkdir()
        wheel = strip(build_wheel(src, tmp / "raw", cuda, jobs, wheel_dir / "mmcv-build.log"), wheel_dir)
    print(f"built {wheel} (ops for {'CPU + CUDA' if cuda else 'CPU'})")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cuda",
        choices=["auto", "on", "off"],
        default=os.environ.get("MMCV_CUDA", "auto"),
        help="build mmcv's CUDA ops too (auto: when torch sees a GPU; default from $MMCV_CUDA)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("MRCNN_BENCH_CACHE", Path.home() / ".cache" / "mrcnn-bench")),
    )
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("MAX_JOBS", os.cpu_count() or 1)))
    parser.add_argument(
        "--force", action="store_true", help="reinstall even if mmdet and mmcv.ops import already"
    )
    parser.add_argument(
        "--sdist", type=Path, help=f"a local mmcv-{MMCV_VERSION}.tar.gz (checked like a download)"
    )
    parser.add_argument(
        "--wheel-dir",
        type=Path,
        help="build the stripped mmcv wheel into DIR and stop (no network, no installs)",
    )
    args = parser.parse_args()
    _, gpu = torch_build()
    cuda = args.cuda == "on" or (args.cuda == "auto" and gpu)
    if args.wheel_dir:
        return build_offline(args.sdist, args.wheel_dir, cuda, args.jobs)
    have = probe()
    if have and not args.force and (have[1] or not cuda):
        print(
            f"{have[0]} already installed in {sys.executable}, ops for {'CPU + CUDA' if have[1] else 'CPU'} "
            "(--force to reinstall)"
        )
        return 0
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    subprocess.run([*pip, *BUILD_TOOLS, *MMCV_DEPENDENCIES, *PACKAGES], check=True)
    wheel = cached_wheel(args.cache, cuda, args.jobs)
    subprocess.run([*pip, "--no-deps", "--force-reinstall", str(wheel)], check=True)
    have = probe()
    if not have:
        raise SystemExit(
            f"mmdet or mmcv.ops does not import after installing {wheel}; run: {sys.executable} -c 'import "
            "mmcv.ops'"
        )
    print(f"{have[0]} installed in {sys.executable}, ops for {'CPU + CUDA' if have[1] else 'CPU'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
