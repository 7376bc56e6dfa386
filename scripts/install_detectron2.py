"""Install detectron2 v0.6 (pure Python) into this interpreter, without GitHub access.

    python scripts/install_detectron2.py [--sdist PATH] [--force]
    python scripts/install_detectron2.py --wheel-dir DIR   # build the patched wheel only (for another
    machine)

Upstream installs from its git repository. PyPI holds ``pb1-detectron2==0.6``, an sdist whose Python
files are upstream's tag v0.6 with another package name; it lacks the C++/CUDA sources, which Mask
R-CNN R-50-FPN does not need (RoIAlign and NMS come from torchvision). Three changes make it install:

1. setup.py looks for ./configs; the configs sit in detectron2/model_zoo/configs: copy them there.
2. ``get_extensions()`` would build ``detectron2._C`` from sources that are absent: build nothing.
3. ``detectron2._C`` is imported by three layer modules at import time: a stand-in module that says
   what is missing when one of its functions is used (deformable conv, rotated boxes).

An already installed detectron2 (e.g. upstream from git) is left alone unless --force.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from pypi_sdist import fetch_sdist

PACKAGE, VERSION = "pb1-detectron2", "0.6"
SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
DEPENDENCIES = [
    "fvcore>=0.1.5,<0.1.6",
    "iopath>=0.1.7,<0.1.10",
    "pycocotools>=2.0.2",
    "yacs>=0.1.8",
    "termcolor>=1.1",
    "tabulate",
    "cloudpickle",
    "tqdm>4.29.0",
    "tensorboard",
    "matplotlib",
    "omegaconf>=2.1,<2.4",
    "hydra-core>=1.1",
    "Pillow>=7.1",
]
STAND_IN = '''"""Stand-in for detectron2's C++/CUDA extension, which this install does not build
(mrcnn-bench).

Mask R-CNN R-50-FPN does not use it: RoIAlign and NMS come from torchvision.
"""


def __getattr__(name):
    raise ImportError(
        f"detectron2._C.{name} is not available: detectron2 was installed by mrcnn-bench's "
        "scripts/install_detectron2.py without its C++/CUDA ops (deformable conv, rotated boxes)"
    )
'''


def installed_version() -> str | None:
    out = subprocess.run(
        [sys.executable, "-c", "import detectron2; print(detectron2.__version__)"],
        capture_output=True,
        text=True,
    )
    return out.stdout.strip() if out.returncode == 0 else None


def patch(src: Path) -> None:
    setup = src / "setup.py"
    text = setup.read_text()
    # 2. no C++/CUDA sources in this sdist: build no extension
    text, n = re.subn(r"ext_modules=get_extensions\(\)", "ext_modules=[]", text)
    if n != 1:
        raise SystemExit(f"{setup}: expected one 'ext_modules=get_extensions()', found {n}")
    setup.write_text(text)
    # 1. the configs where setup.py looks for them
    configs = src / "detectron2" / "model_zoo" / "configs"
    if configs.is_dir() and not (src / "configs").exists():
        shutil.copytree(configs, src / "configs")
    # 3. the stand-in extension module
    (src / "detectron2" / "_C.py").write_text(STAND_IN)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sdist", type=Path, help="a local pb1-detectron2-0.6.tar.gz instead of downloading it"
    )
    parser.add_argument("--force", action="store_true", help="reinstall even if detectron2 imports already")
    parser.add_argument(
        "--wheel-dir", type=Path, help="build a wheel of the patched sdist into DIR; install nothing"
    )
    args = parser.parse_args()
    have = installed_version()
    if have and not args.force and not args.wheel_dir:
        print(f"detectron2 {have} is already installed in {sys.executable} (--force to reinstall)")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        filename = f"{PACKAGE}-{VERSION}.tar.gz"
        if args.sdist:  # a local copy: checked like a download
            shutil.copyfile(args.sdist, tmp / filename)
        sdist = fetch_sdist(PACKAGE, VERSION, SHA256, tmp)
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        src = tmp / f"{PACKAGE}-{VERSION}"
        patch(src)
        if args.wheel_dir:
            # pure Python once patched (no extension): a py3-none-any wheel that installs on any Python 3
            args.wheel_dir.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "wheel",
                    "-q",
                    "--no-build-isolation",
                    "--no-deps",
                    "-w",
                    str(args.wheel_dir),
                    str(src),
                ],
                check=True,
            )
            (wheel,) = args.wheel_dir.glob("pb1_detectron2-*.whl")
            print(f"built {wheel}; its dependencies: {' '.join(DEPENDENCIES)}")
            return 0
        pip = [sys.executable, "-m", "pip", "install", "-q"]
        subprocess.run([*pip, *DEPENDENCIES], check=True)
        # setup.py imports torch: build against the torch of this environment
        subprocess.run([*pip, "--no-build-isolation", "--no-deps", str(src)], check=True)
    print(f"detectron2 {installed_version()} installed in {sys.executable}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
