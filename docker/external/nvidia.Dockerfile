# NVIDIA's Mask R-CNN for PyTorch (DeepLearningExamples, PyTorch/Segmentation/MaskRCNN) in NGC's PyTorch
# container, the image NVIDIA builds it on. An external system: mrcnn-bench does not run inside it; it
# writes the native config (`mrcnn-bench run --impl nvidia`), this image trains, `mrcnn-bench ingest`
# reads the log.
#   docker build -f docker/external/nvidia.Dockerfile -t mrcnn-bench/nvidia-maskrcnn docker/external
#   mrcnn-bench run --impl nvidia --container mrcnn-bench/nvidia-maskrcnn --data /path/to/coco
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:21.12-py3
FROM ${BASE_IMAGE}

ARG DLE_REF=master
RUN git clone --depth 1 --branch ${DLE_REF} https://github.com/NVIDIA/DeepLearningExamples /opt/dle \
 && cp -r /opt/dle/PyTorch/Segmentation/MaskRCNN/pytorch /workspace/object_detection \
 && rm -rf /opt/dle
WORKDIR /workspace/object_detection
# its own requirements, then its CUDA/C++ extension built in place
RUN pip install --no-cache-dir -r requirements.txt && python setup.py build develop
