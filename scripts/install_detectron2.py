"""Install detectron2 v0.6 (pure Python) into this interpreter, without GitHub access.

    python scripts/install_detectron2.py [--sdist PATH] [--force]

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
import hashlib
import re
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

PACKAGE, VERSION = "pb1-detectron2", "0.6"
SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
INDEX = "https://pypi.org/simple/pb1-detectron2/"
DEPENDENCIES = [
    "fvcore>=0.1.5,<0.1.6", "iopath>=0.1.7,<0.1.10", "pycocotools>=2.0.2", "yacs>=0.1.8", "termcolor>=1.1",
    "tabulate", "cloudpickle", "tqdm>4.29.0", "tensorboard", "matplotlib", "omegaconf>=2.1,<2.4", "hydra-core>=1.1",
    "Pillow>=7.1",
]
STAND_IN = '''"""Stand-in for detectron2's C++/CUDA extension, which this install does not build (mrcnn-bench).

Mask R-CNN R-50-FPN does not use it: RoIAlign and NMS come from torchvision.
"""


def __getattr__(name):
    raise ImportError(
        f"detectron2._C.{name} is not available: detectron2 was installed by mrcnn-bench's "
        "scripts/install_detectron2.py without its C++/CUDA ops (deformable conv, rotated boxes)"
    )
'''


def installed_version() -> str | None:
    out = subprocess.run([sys.executable, "-c", "import detectron2; print(detectron2.__version__)"], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def download(dest: Path) -> Path:
    html = urllib.request.urlopen(INDEX, timeout=60).read().decode()
    url = next((u for u in re.findall(r'href="([^"]+)"', html) if f"-{VERSION}.tar.gz" in u), None)
    if url is None:
        raise SystemExit(f"{INDEX}: no {PACKAGE}-{VERSION}.tar.gz listed")
    path = dest / f"{PACKAGE}-{VERSION}.tar.gz"
    print(f"downloading {url.split('#')[0]}")
    with urllib.request.urlopen(url.split("#")[0], timeout=300) as r:
        path.write_bytes(r.read())
    return path


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
        import shutil

        shutil.copytree(configs, src / "configs")
    # 3. the stand-in extension module
    (src / "detectron2" / "_C.py").write_text(STAND_IN)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdist", type=Path, help="a local pb1-detectron2-0.6.tar.gz instead of downloading it")
    parser.add_argument("--force", action="store_true", help="reinstall even if detectron2 imports already")
    args = parser.parse_args()
    have = installed_version()
    if have and not args.force:
        print(f"detectron2 {have} is already installed in {sys.executable} (--force to reinstall)")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sdist = args.sdist or download(tmp)
        digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
        if digest != SHA256:
            raise SystemExit(f"{sdist}: sha256 {digest} does not match the expected {SHA256}")
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        src = tmp / f"{PACKAGE}-{VERSION}"
        patch(src)
        pip = [sys.executable, "-m", "pip", "install", "-q"]
        subprocess.run([*pip, *DEPENDENCIES], check=True)
        # setup.py imports torch: build against the torch of this environment
        subprocess.run([*pip, "--no-build-isolation", "--no-deps", str(src)], check=True)
    print(f"detectron2 {installed_version()} installed in {sys.executable}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
