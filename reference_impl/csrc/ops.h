// Argument checks and helpers shared by the CPU and CUDA kernels (host code only).
#pragma once

#include <torch/types.h>

#include <cmath>
#include <vector>

namespace mrcnn_bench {

inline void check_roi_align_args(const at::Tensor& input, const at::Tensor& rois, int64_t ph, int64_t pw) {
  TORCH_CHECK(input.dim() == 4, "roi_align: input must be [N, C, H, W], got ", input.sizes());
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, "roi_align: rois must be [K, 5] (batch index, x1, y1, x2, y2), got ",
              rois.sizes());
  // RoIs stay in the op-math type (float for half/bfloat16 features): a bfloat16 coordinate near
  // 1000 px would be off by several pixels.
  TORCH_CHECK(rois.scalar_type() == at::toOpMathType(input.scalar_type()), "roi_align: rois must be ",
              at::toOpMathType(input.scalar_type()), " for ", input.scalar_type(), " features, got ", rois.scalar_type());
  TORCH_CHECK(input.device() == rois.device(), "roi_align: input and rois must be on one device");
  TORCH_CHECK(ph > 0 && pw > 0, "roi_align: output size must be > 0, got ", ph, "x", pw);
}

inline void check_nms_args(const at::Tensor& boxes, const at::Tensor& scores) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, "nms: boxes must be [N, 4], got ", boxes.sizes());
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == boxes.size(0), "nms: scores must be [N] matching boxes, got ",
              scores.sizes());
  TORCH_CHECK(boxes.scalar_type() == scores.scalar_type(), "nms: boxes and scores must have one dtype");
}

inline void check_box_pairs(const at::Tensor& a, const at::Tensor& b, const char* op) {
  TORCH_CHECK(a.dim() == 2 && a.size(1) == 4 && a.sizes() == b.sizes(), op, ": expected two [N, 4] tensors, got ",
              a.sizes(), " and ", b.sizes());
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), op, ": both tensors must have one dtype");
}

inline void check_decode_args(const at::Tensor& deltas, const at::Tensor& boxes) {
  TORCH_CHECK(deltas.dim() == 2 && deltas.size(1) % 4 == 0, "decode_boxes: deltas must be [N, 4k], got ", deltas.sizes());
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4 && boxes.size(0) == deltas.size(0),
              "decode_boxes: boxes must be [N, 4] matching deltas, got ", boxes.sizes());
  TORCH_CHECK(deltas.scalar_type() == boxes.scalar_type(), "decode_boxes: deltas and boxes must have one dtype");
}

inline void check_paste_args(const at::Tensor& masks, const at::Tensor& boxes) {
  TORCH_CHECK(masks.dim() == 3 && masks.size(1) == masks.size(2), "paste_masks: masks must be [N, M, M], got ",
              masks.sizes());
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4 && boxes.size(0) == masks.size(0),
              "paste_masks: boxes must be [N, 4] matching masks, got ", boxes.sizes());
}

// A map laid out channels-last (NHWC), as benchmark.channels_last leaves the FPN's levels.
inline bool is_nhwc(const at::Tensor& t) {
  return t.dim() == 4 && t.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
}

// The feature maps of an FPN and the levels they stand for.
struct MultiLevel {
  std::vector<at::Tensor> feats;
  at::Tensor rois;
  int k_min = 0, k_max = 0;
  int levels() const { return static_cast<int>(feats.size()); }

  bool nhwc = false;  // the maps are channels-last (only with keep_channels_last)

  // need_data: the kernels read the maps (forward), so each is made contiguous; a backward needs only
  // their sizes and keeps them as they are (a channels-last level is not copied). keep_channels_last:
  // the kernels read channels-last maps too (the CPU's), so when the first level is channels-last every
  // level is made channels-last-contiguous instead.
  static MultiLevel make(at::TensorList feats, const at::Tensor& rois, at::ArrayRef<double> scales,
                         int64_t canonical_level, bool need_data = true, bool keep_channels_last = false) {
    TORCH_CHECK(!feats.empty() && feats.size() <= 8, "multilevel_roi_align: 1 to 8 feature maps, got ", feats.size());
    TORCH_CHECK(scales.size() == feats.size(), "multilevel_roi_align: one scale per feature map, got ", scales.size(),
                " scales for ", feats.size(), " maps");
    MultiLevel ml;
    ml.nhwc = keep_channels_last && is_nhwc(feats[0]);
    const auto format = ml.nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
    for (size_t l = 0; l < feats.size(); ++l) {
      const auto& f = feats[l];
      check_roi_align_args(f, rois, 1, 1);
      TORCH_CHECK(f.size(0) == feats[0].size(0) && f.size(1) == feats[0].size(1),
                  "multilevel_roi_align: every level must have the same batch and channels, level ", l, " is ",
                  f.sizes(), " and level 0 is ", feats[0].sizes());
      TORCH_CHECK(scales[l] > 0, "multilevel_roi_align: scales must be > 0");
      ml.feats.push_back(need_data ? f.contiguous(format) : f);
    }
    ml.rois = rois.contiguous();
    ml.k_min = static_cast<int>(std::lround(-std::log2(scales.front())));
    ml.k_max = ml.k_min + static_cast<int>(feats.size()) - 1;
    return ml;
  }
};

}  // namespace mrcnn_bench
