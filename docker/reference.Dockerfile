# The reference implementation (and torchvision, which it ships beside) on an official PyTorch CUDA
# devel image: nvcc is needed to build the native CUDA kernels.
#   docker build -f docker/reference.Dockerfile -t mrcnn-bench/reference .
ARG BASE_IMAGE=pytorch/pytorch:2.14.1-cuda13.0-cudnn9-devel
FROM ${BASE_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    CUDA_HOME=/usr/local/cuda \
    TORCH_CUDA_ARCH_LIST="8.0;9.0+PTX" \
    MAX_JOBS=8
RUN apt-get update && apt-get install -y --no-install-recommends make git && rm -rf /var/lib/apt/lists/*

WORKDIR /workspace/mrcnn-bench
COPY . .
# make setup: .venv with torch==2.14.1 / torchvision==0.29.1 and the package, whose setup.py builds the
# C++ and CUDA kernels (CUDA_HOME is set, so the CUDA ones too); then check that they loaded.
RUN make setup \
 && .venv/bin/python -c "from mrcnn_bench.reference_impl import ops; b = ops.backend(); print(b); assert b == 'native (cpu+cuda)', b"

ENV PATH=/workspace/mrcnn-bench/.venv/bin:$PATH
ENTRYPOINT ["mrcnn-bench"]
CMD ["list"]
