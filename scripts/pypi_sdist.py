"""Fetch a source distribution from PyPI's simple index and check its sha256 (no GitHub needed)."""
from __future__ import annotations

import hashlib
import re
import urllib.request
from pathlib import Path


def fetch_sdist(project: str, filename: str, sha256: str, dest: Path) -> Path:
    """Download ``filename`` of ``project`` into ``dest`` (or reuse it there) and verify its sha256."""
    path = dest / filename
    if not path.exists():
        index = f"https://pypi.org/simple/{project}/"
        html = urllib.request.urlopen(index, timeout=60).read().decode()
        url = next((u.split("#")[0] for u in re.findall(r'href="([^"]+)"', html) if u.split("#")[0].endswith("/" + filename)), None)
        if url is None:
            raise SystemExit(f"{index}: {filename} is not listed")
        print(f"downloading {url}", flush=True)
        with urllib.request.urlopen(url, timeout=300) as response:
            data = response.read()
        dest.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sha256:
        raise SystemExit(f"{path}: sha256 {digest} does not match the expected {sha256}")
    return path
