# detectron2 v0.6 (pure Python: RoIAlign/NMS from torchvision) beside the harness.
#   docker build -f docker/detectron2.Dockerfile -t mrcnn-bench/detectron2 .
ARG BASE_IMAGE=pytorch/pytorch:2.14.1-cuda13.0-cudnn9-devel
FROM ${BASE_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    CUDA_HOME=/usr/local/cuda \
    TORCH_CUDA_ARCH_LIST="8.0;9.0+PTX" \
    MAX_JOBS=8
RUN apt-get update && apt-get install -y --no-install-recommends make git && rm -rf /var/lib/apt/lists/*

WORKDIR /workspace/mrcnn-bench
COPY . .
# make detectron2: pb1-detectron2==0.6 from PyPI (upstream v0.6's Python files), patched and installed
# into the project's venv by scripts/install_detectron2.py; then check that the adapter sees it.
RUN make setup detectron2 \
 && .venv/bin/python -m mrcnn_bench.harness.parity.probe available detectron2 | grep -q '"available": true'

ENV PATH=/workspace/mrcnn-bench/.venv/bin:$PATH
ENTRYPOINT ["mrcnn-bench"]
CMD ["list"]
