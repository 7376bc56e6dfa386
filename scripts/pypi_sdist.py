"""Fetch a source distribution from the package index named in pip's configuration and check its sha256.

``pip download`` cannot do this here: it prepares the sdist's metadata, which runs its setup.py, and
the two sdists fetched this way do not build as published (mmcv 2.1.0's setup.py imports pkg_resources,
which today's setuptools no longer has; pb1-detectron2 0.6 declares a direct-URL dependency, which pip
refuses from PyPI) - patching them is why they are fetched at all. So the file is fetched from the
index's simple page, as pip would, with pip's settings: its index URL (``pip config`` or
PIP_INDEX_URL; PyPI by default), its certificate bundle (``cert`` / PIP_CERT) and timeout; proxies
come from the environment (HTTPS_PROXY), as for pip.
"""

from __future__ import annotations

import hashlib
import re
import ssl
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path


def pip_setting(name: str, default: str | None = None) -> str | None:
    """A setting of pip's configuration (files and PIP_* variables; the last scope pip lists wins)."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    ).stdout
    values = re.findall(rf"^[\w:.-]*\.{re.escape(name)}='([^']*)'$", out, flags=re.M)
    return values[-1] if values else default


def fetch_sdist(project: str, version: str, sha256: str, dest: Path) -> Path:
    """``project``==``version``'s sdist in ``dest`` (downloaded there unless already present), verified."""
    filename = f"{project}-{version}.tar.gz"
    path = dest / filename
    if not path.exists():
        index = pip_setting("index-url", "https://pypi.org/simple").rstrip("/") + f"/{project}/"
        cert = pip_setting("cert")
        context = ssl.create_default_context(cafile=cert) if cert else None
        timeout = float(pip_setting("timeout") or pip_setting("default-timeout") or 60)
        html = urllib.request.urlopen(index, timeout=timeout, context=context).read().decode()
        links = [urllib.parse.urljoin(index, u.split("#")[0]) for u in re.findall(r'href="([^"]+)"', html)]
        url = next((u for u in links if u.endswith("/" + filename)), None)
        if url is None:
            raise SystemExit(f"{index}: {filename} is not listed")
        print(f"downloading {url}", flush=True)
        with urllib.request.urlopen(url, timeout=max(timeout, 300), context=context) as response:
            data = response.read()
        dest.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sha256:
        raise SystemExit(f"{path}: sha256 {digest} does not match the expected {sha256}")
    return path
