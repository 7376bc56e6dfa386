# mmdetection 3.3.0 with mmcv 2.1.0 compiled from its PyPI sdist (CPU + CUDA ops) beside the harness.
#   docker build -f docker/mmdet.Dockerfile -t mrcnn-bench/mmdet .
# The mmcv build takes ~25 min with CUDA on 8 cores; the wheel is kept in the image's cache folder.
ARG BASE_IMAGE=pytorch/pytorch:2.14.1-cuda13.0-cudnn9-devel
FROM ${BASE_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    CUDA_HOME=/usr/local/cuda \
    TORCH_CUDA_ARCH_LIST="8.0;9.0+PTX" \
    MMCV_CUDA=on \
    MAX_JOBS=8
# libgl1/libglib2.0-0: opencv-python (pulled by mmengine) loads them at import
RUN apt-get update && apt-get install -y --no-install-recommends make git libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /workspace/mrcnn-bench
COPY . .
# make mmdet: mmengine and mmdet wheels from PyPI, mmcv built by scripts/install_mmdet.py with its ops
# for CUDA (no GPU is visible during docker build, hence MMCV_CUDA=on); then check that the adapter sees it.
RUN make setup mmdet \
 && .venv/bin/python -m mrcnn_bench.harness.parity.probe available mmdet | grep -q '"available": true'

ENV PATH=/workspace/mrcnn-bench/.venv/bin:$PATH
ENTRYPOINT ["mrcnn-bench"]
CMD ["list"]
