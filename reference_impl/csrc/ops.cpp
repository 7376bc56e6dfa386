// The op schemas of the mrcnn_bench namespace, and the Python module that loads them.
// Kernels register themselves per device (cpu/ops_cpu.cpp, cuda/ops_cuda.cu); autograd and fake
// (meta) kernels are registered from Python in reference_impl/ops, with torch.library.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(mrcnn_bench, m) {
  m.def("roi_align(Tensor input, Tensor rois, float spatial_scale, int pooled_height, int pooled_width, "
        "int sampling_ratio, bool aligned) -> Tensor");
  m.def("roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, int pooled_height, int pooled_width, "
        "int batch_size, int channels, int height, int width, int sampling_ratio, bool aligned) -> Tensor");
  m.def("multilevel_roi_align(Tensor[] features, Tensor rois, float[] scales, int pooled_height, int pooled_width, "
        "int sampling_ratio, bool aligned, int canonical_level, int canonical_scale) -> Tensor");
  m.def("multilevel_roi_align_backward(Tensor grad, Tensor rois, Tensor[] features, float[] scales, "
        "int pooled_height, int pooled_width, int sampling_ratio, bool aligned, int canonical_level, "
        "int canonical_scale) -> Tensor[]");
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");
  m.def("encode_boxes(Tensor gt, Tensor proposals, float[] weights) -> Tensor");
  m.def("decode_boxes(Tensor deltas, Tensor boxes, float[] weights, float scale_clamp, int[]? clip_hw) -> Tensor");
  m.def("paste_masks(Tensor masks, Tensor boxes, int height, int width) -> Tensor");
  m.def("built_with_cuda() -> bool", []() -> bool {
#ifdef WITH_CUDA
    return true;
#else
    return false;
#endif
  });
}

// Importing mrcnn_bench.reference_impl._C registers the ops above.
static struct PyModuleDef mrcnn_bench_module = {PyModuleDef_HEAD_INIT, "_C", "mrcnn-bench native ops", -1, nullptr};
extern "C" PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&mrcnn_bench_module); }
