"""docker/: one Dockerfile per implementation environment, each installing what its adapters need."""

import re
import subprocess

import pytest
from conftest import ROOT
from dockerfile_parse import DockerfileParser

DOCKER = ROOT / "docker"
# what an image must run for each implementation it serves
NEEDS = {
    "reference": [r"\bmake\b[^&;]*\bsetup\b"],  # builds the package and its native C++/CUDA ops
    "torchvision": [r"\bmake\b[^&;]*\bsetup\b"],  # torchvision==0.29.1 is a dependency of the package
    "detectron2": [r"\bmake\b[^&;]*\bdetectron2\b"],
    "mmdet": [r"\bmake\b[^&;]*\bmmdet\b"],
}


def images() -> dict[str, list[str]]:
    """Image name -> implementations, as docker/run-suite.sh runs them."""
    script = (DOCKER / "run-suite.sh").read_text()
    mapping = dict(re.findall(r"\[(\w+)\]=\"([\w,]+)\"", script))
    for df in DOCKER.glob("*.Dockerfile"):
        mapping.setdefault(df.name.removesuffix(".Dockerfile"), df.name.removesuffix(".Dockerfile"))
    return {k: v.split(",") for k, v in mapping.items()}


def test_every_image_has_a_dockerfile_and_the_script_parses():
    assert images(), "no Dockerfile under docker/"
    for name in images():
        assert (DOCKER / f"{name}.Dockerfile").is_file(), name
    assert subprocess.run(["bash", "-n", str(DOCKER / "run-suite.sh")]).returncode == 0


@pytest.mark.parametrize("name", sorted(images()))
def test_dockerfile_installs_what_its_adapters_need(name):
    parser = DockerfileParser(path=str(DOCKER / f"{name}.Dockerfile"))
    base = parser.baseimage
    # an official PyTorch CUDA *devel* image (nvcc for the native kernels), chosen by a build argument
    default = re.search(r"ARG BASE_IMAGE=(\S+)", parser.content).group(1)
    assert base == default and re.fullmatch(r"pytorch/pytorch:[\w.]+-cuda[\d.]+-cudnn\d+-devel", default), (
        default
    )
    runs = " && ".join(i["value"] for i in parser.structure if i["instruction"] == "RUN")
    for impl in images()[name]:
        for pattern in NEEDS[impl]:
            assert re.search(pattern, runs), f"{name}.Dockerfile does not run {pattern} for {impl}"
    assert parser.envs.get("CUDA_HOME") == "/usr/local/cuda"
    assert any(i["instruction"] == "COPY" for i in parser.structure)
    assert '"mrcnn-bench"' in next(i["value"] for i in parser.structure if i["instruction"] == "ENTRYPOINT")
