// CPU kernels, parallelised with at::parallel_for. The arithmetic lives in box_math.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "box_math.h"
#include "ops.h"

namespace mrcnn_bench {
namespace {

// ------------------------------------------------------------------------------------ RoIAlign
// The sampling points of one RoI (positions and bilinear weights) are the same for every channel:
// they are tabulated once per RoI and reused across its C channels, forward and backward.
template <typename A>
struct Sample {
  int32_t i1, i2, i3, i4;
  A w1, w2, w3, w4;
};

template <typename A>
struct SampleTable {
  std::vector<Sample<A>> samples;
  std::vector<int32_t> bin_start;  // samples of bin b: [bin_start[b], bin_start[b + 1])
  A count = A(1);
  int64_t plane = 0;  // offset of this RoI's image in its level, in planes (batch * C)
  int level = 0;

  template <typename R>
  void build(const R* roi, int level_, A scale, int H, int W, int ph_n, int pw_n, int sampling_ratio, bool aligned,
             int64_t C) {
    auto g = roi_geometry<R, A>(roi, scale, ph_n, pw_n, sampling_ratio, aligned);
    level = level_;
    count = g.count;
    plane = int64_t(g.batch) * C;
    samples.clear();
    bin_start.assign(1, 0);
    for (int ph = 0; ph < ph_n; ++ph) {
      for (int pw = 0; pw < pw_n; ++pw) {
        for_each_sample<A>(H, W, g, ph, pw, [&](const Bilinear<A>& b) {
          samples.push_back({b.y_low * W + b.x_low, b.y_low * W + b.x_high, b.y_high * W + b.x_low,
                             b.y_high * W + b.x_high, b.w1, b.w2, b.w3, b.w4});
        });
        bin_start.push_back(static_cast<int32_t>(samples.size()));
      }
    }
  }
};

// One or several feature maps (FPN levels) and how a RoI picks its level.
template <typename T>
struct Pyramid {
  std::vector<const T*> data;
  std::vector<int> H, W;
  std::vector<double> scale;
  int k_min = 0, k_max = 0, canonical_level = 4, canonical_scale = 224;
  bool multilevel = false;

  template <typename R>
  int level_of(const R* roi) const {
    return multilevel ? fpn_level(roi, k_min, k_max, canonical_level, canonical_scale) : 0;
  }
};

// The table of one RoI, on the FPN level it belongs to.
template <typename T, typename A>
void build_table(SampleTable<A>& t, const Pyramid<T>& pyr, const A* roi, int ph_n, int pw_n, int sampling_ratio,
                 bool aligned, int64_t C) {
  const int l = pyr.level_of(roi);
  t.build(roi, l, A(pyr.scale[l]), pyr.H[l], pyr.W[l], ph_n, pw_n, sampling_ratio, aligned, C);
}

// The backwards' walk over the RoIs: in chunks, so the tables of one chunk stay small, each chunk's tables
// built in parallel, then ``accumulate(k0, n, tables)`` for RoIs [k0, k0 + n) (channels in parallel there:
// RoIs overlap, channels never do, so no atomics are needed).
template <typename T, typename A, typename F>
void for_each_chunk(const Pyramid<T>& pyr, const A* rois, int64_t K, int ph_n, int pw_n, int sampling_ratio,
                    bool aligned, int64_t C, F accumulate) {
  constexpr int64_t kChunk = 256;
  std::vector<SampleTable<A>> tables(std::min<int64_t>(K, kChunk));
  for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
    const int64_t n = std::min<int64_t>(kChunk, K - k0);
    at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        build_table(tables[i], pyr, rois + (k0 + i) * 5, ph_n, pw_n, sampling_ratio, aligned, C);
      }
    });
    accumulate(k0, n, tables);
  }
}

template <typename T, typename A>
void roi_align_forward_impl(const Pyramid<T>& pyr, const A* rois, int64_t K, int64_t C, int ph_n, int pw_n,
                            int sampling_ratio, bool aligned, T* out) {
  const int64_t bins = int64_t(ph_n) * pw_n;
  at::parallel_for(0, K, 1, [&](int64_t begin, int64_t end) {
    SampleTable<A> t;
    for (int64_t k = begin; k < end; ++k) {
      build_table(t, pyr, rois + k * 5, ph_n, pw_n, sampling_ratio, aligned, C);
      const int H = pyr.H[t.level], W = pyr.W[t.level];
      for (int64_t c = 0; c < C; ++c) {
        const T* plane = pyr.data[t.level] + (t.plane + c) * H * W;
        T* o = out + (k * C + c) * bins;
        for (int64_t b = 0; b < bins; ++b) {
          A sum = A(0);
          for (int32_t s = t.bin_start[b]; s < t.bin_start[b + 1]; ++s) {
            const auto& p = t.samples[s];
            sum += p.w1 * A(plane[p.i1]) + p.w2 * A(plane[p.i2]) + p.w3 * A(plane[p.i3]) + p.w4 * A(plane[p.i4]);
          }
          o[b] = T(sum / t.count);
        }
      }
    }
  });
}

// grad_levels[l]: the op-math-typed gradient buffer of level l, same shape as its feature map.
template <typename T, typename A>
void roi_align_backward_impl(const Pyramid<T>& pyr, std::vector<A*>& grad_levels, const T* grad, const A* rois,
                             int64_t K, int64_t C, int ph_n, int pw_n, int sampling_ratio, bool aligned) {
  const int64_t bins = int64_t(ph_n) * pw_n;
  for_each_chunk(pyr, rois, K, ph_n, pw_n, sampling_ratio, aligned, C,
                 [&](int64_t k0, int64_t n, const std::vector<SampleTable<A>>& tables) {
    at::parallel_for(0, C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        for (int64_t i = 0; i < n; ++i) {
          const auto& t = tables[i];
          A* plane = grad_levels[t.level] + (t.plane + c) * pyr.H[t.level] * pyr.W[t.level];
          const T* go = grad + ((k0 + i) * C + c) * bins;
          for (int64_t b = 0; b < bins; ++b) {
            const A g = A(go[b]) / t.count;
            for (int32_t s = t.bin_start[b]; s < t.bin_start[b + 1]; ++s) {
              const auto& p = t.samples[s];
              plane[p.i1] += g * p.w1;
              plane[p.i2] += g * p.w2;
              plane[p.i3] += g * p.w3;
              plane[p.i4] += g * p.w4;
            }
          }
        }
      }
    });
  });
}

// Channels-last (NHWC) maps: a sample's four corners are rows of C contiguous values, so each bin is
// a weighted sum of rows (vectorised over channels) instead of C strided gathers, and the maps are read
// where they lie (no NCHW copy of each level). The output is [K, bins, C] (channels-last [K, C, ph, pw]);
// per channel the arithmetic, and its order, are those of the NCHW kernels above.
template <typename T, typename A>
void roi_align_forward_nhwc_impl(const Pyramid<T>& pyr, const A* rois, int64_t K, int64_t C, int ph_n, int pw_n,
                                 int sampling_ratio, bool aligned, T* out) {
  const int64_t bins = int64_t(ph_n) * pw_n;
  at::parallel_for(0, K, 1, [&](int64_t begin, int64_t end) {
    SampleTable<A> t;
    std::vector<A> acc(C);
    for (int64_t k = begin; k < end; ++k) {
      build_table(t, pyr, rois + k * 5, ph_n, pw_n, sampling_ratio, aligned, C);
      const int H = pyr.H[t.level], W = pyr.W[t.level];
      const T* image = pyr.data[t.level] + t.plane * H * W;  // t.plane = batch * C
      for (int64_t b = 0; b < bins; ++b) {
        A* __restrict a = acc.data();
        std::fill(a, a + C, A(0));
        for (int32_t s = t.bin_start[b]; s < t.bin_start[b + 1]; ++s) {
          const auto& p = t.samples[s];
          const T* __restrict r1 = image + int64_t(p.i1) * C;
          const T* __restrict r2 = image + int64_t(p.i2) * C;
          const T* __restrict r3 = image + int64_t(p.i3) * C;
          const T* __restrict r4 = image + int64_t(p.i4) * C;
          for (int64_t c = 0; c < C; ++c) {
            a[c] += p.w1 * A(r1[c]) + p.w2 * A(r2[c]) + p.w3 * A(r3[c]) + p.w4 * A(r4[c]);
          }
        }
        T* __restrict o = out + (k * bins + b) * C;
        for (int64_t c = 0; c < C; ++c) o[c] = T(a[c] / t.count);
      }
    }
  });
}

// grad: [K, bins, C]; grad_levels[l]: level l's op-math-typed gradient, [N, H, W, C]. Channels in
// parallel as in the NCHW backward (RoIs overlap, channels never do); a thread's channels are contiguous.
template <typename T, typename A>
void roi_align_backward_nhwc_impl(const Pyramid<T>& pyr, std::vector<A*>& grad_levels, const T* grad, const A* rois,
                                  int64_t K, int64_t C, int ph_n, int pw_n, int sampling_ratio, bool aligned) {
  const int64_t bins = int64_t(ph_n) * pw_n;
  for_each_chunk(pyr, rois, K, ph_n, pw_n, sampling_ratio, aligned, C,
                 [&](int64_t k0, int64_t n, const std::vector<SampleTable<A>>& tables) {
    at::parallel_for(0, C, 16, [&](int64_t c0, int64_t c1) {
      std::vector<A> g(c1 - c0);
      for (int64_t i = 0; i < n; ++i) {
        const auto& t = tables[i];
        A* image = grad_levels[t.level] + t.plane * pyr.H[t.level] * pyr.W[t.level];
        for (int64_t b = 0; b < bins; ++b) {
          const T* __restrict go = grad + ((k0 + i) * bins + b) * C;
          A* __restrict gb = g.data();
          for (int64_t c = c0; c < c1; ++c) gb[c - c0] = A(go[c]) / t.count;
          for (int32_t s = t.bin_start[b]; s < t.bin_start[b + 1]; ++s) {
            const auto& p = t.samples[s];
            // the four corners may be one row (a sample on the map's edge), so they are not restrict: one
            // after the other, each loop reading only gb
            A* r1 = image + int64_t(p.i1) * C + c0;
            A* r2 = image + int64_t(p.i2) * C + c0;
            A* r3 = image + int64_t(p.i3) * C + c0;
            A* r4 = image + int64_t(p.i4) * C + c0;
            const int64_t m = c1 - c0;
            for (int64_t c = 0; c < m; ++c) r1[c] += gb[c] * p.w1;
            for (int64_t c = 0; c < m; ++c) r2[c] += gb[c] * p.w2;
            for (int64_t c = 0; c < m; ++c) r3[c] += gb[c] * p.w3;
            for (int64_t c = 0; c < m; ++c) r4[c] += gb[c] * p.w4;
          }
        }
      }
    });
  });
}

// [K, ph, pw, C] storage seen as the [K, C, ph, pw] result (channels-last strides).
inline at::Tensor nhwc_result(int64_t K, int64_t C, int64_t ph, int64_t pw, const at::TensorOptions& opts) {
  return at::empty({K, ph, pw, C}, opts).permute({0, 3, 1, 2});
}

at::Tensor roi_align_forward_cpu(const at::Tensor& input_, const at::Tensor& rois_, double spatial_scale,
                                 int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned) {
  check_roi_align_args(input_, rois_, pooled_h, pooled_w);
  const bool nhwc = is_nhwc(input_);
  auto input = input_.contiguous(nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  auto rois = rois_.contiguous();
  const int64_t K = rois.size(0), C = input.size(1);
  if (K == 0 || C == 0) return at::zeros({K, C, pooled_h, pooled_w}, input.options());
  auto output = nhwc ? nhwc_result(K, C, pooled_h, pooled_w, input.options())
                     : at::empty({K, C, pooled_h, pooled_w}, input.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_align_forward_cpu", [&] {
    using A = at::opmath_type<scalar_t>;
    Pyramid<scalar_t> pyr;
    pyr.data = {input.data_ptr<scalar_t>()};
    pyr.H = {int(input.size(2))};
    pyr.W = {int(input.size(3))};
    pyr.scale = {spatial_scale};
    if (nhwc) {
      roi_align_forward_nhwc_impl<scalar_t, A>(pyr, rois.data_ptr<A>(), K, C, pooled_h, pooled_w, sampling_ratio,
                                               aligned, output.data_ptr<scalar_t>());
    } else {
      roi_align_forward_impl<scalar_t, A>(pyr, rois.data_ptr<A>(), K, C, pooled_h, pooled_w, sampling_ratio,
                                          aligned, output.data_ptr<scalar_t>());
    }
  });
  return output;
}

at::Tensor roi_align_backward_cpu(const at::Tensor& grad_, const at::Tensor& rois_, double spatial_scale,
                                  int64_t pooled_h, int64_t pooled_w, int64_t batch, int64_t channels, int64_t height,
                                  int64_t width, int64_t sampling_ratio, bool aligned) {
  auto grad = grad_.contiguous();
  auto rois = rois_.contiguous();
  const int64_t K = rois.size(0);
  // Accumulate in the op-math type (float for half/bfloat16), cast at the end.
  auto acc_type = at::toOpMathType(grad.scalar_type());
  auto grad_input = at::zeros({batch, channels, height, width}, grad.options().dtype(acc_type));
  if (K == 0 || grad.numel() == 0) return grad_input.to(grad.scalar_type());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_backward_cpu", [&] {
    using A = at::opmath_type<scalar_t>;
    Pyramid<scalar_t> pyr;
    pyr.data = {nullptr};
    pyr.H = {int(height)};
    pyr.W = {int(width)};
    pyr.scale = {spatial_scale};
    std::vector<A*> levels = {grad_input.data_ptr<A>()};
    roi_align_backward_impl<scalar_t, A>(pyr, levels, grad.data_ptr<scalar_t>(), rois.data_ptr<A>(), K,
                                         channels, pooled_h, pooled_w, sampling_ratio, aligned);
  });
  return grad_input.to(grad.scalar_type());
}

// ----------------------------------------------------------------------- multi-level RoIAlign
template <typename T>
Pyramid<T> make_pyramid(const MultiLevel& ml, at::ArrayRef<double> scales, int64_t canonical_level,
                        int64_t canonical_scale) {
  Pyramid<T> pyr;
  for (int l = 0; l < ml.levels(); ++l) {
    pyr.data.push_back(ml.feats[l].data_ptr<T>());
    pyr.H.push_back(int(ml.feats[l].size(2)));
    pyr.W.push_back(int(ml.feats[l].size(3)));
    pyr.scale.push_back(scales[l]);
  }
  pyr.k_min = ml.k_min;
  pyr.k_max = ml.k_max;
  pyr.canonical_level = int(canonical_level);
  pyr.canonical_scale = int(canonical_scale);
  pyr.multilevel = true;
  return pyr;
}

at::Tensor multilevel_roi_align_forward_cpu(at::TensorList feats_, const at::Tensor& rois_, at::ArrayRef<double> scales,
                                            int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned,
                                            int64_t canonical_level, int64_t canonical_scale) {
  auto ml = MultiLevel::make(feats_, rois_, scales, canonical_level, /*need_data=*/true, /*keep_channels_last=*/true);
  const int64_t K = ml.rois.size(0), C = ml.feats[0].size(1);
  const auto opts = ml.feats[0].options();
  if (K == 0 || C == 0) return at::zeros({K, C, pooled_h, pooled_w}, opts);
  auto output = ml.nhwc ? nhwc_result(K, C, pooled_h, pooled_w, opts) : at::empty({K, C, pooled_h, pooled_w}, opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, output.scalar_type(), "multilevel_roi_align_cpu", [&] {
    using A = at::opmath_type<scalar_t>;
    auto pyr = make_pyramid<scalar_t>(ml, scales, canonical_level, canonical_scale);
    if (ml.nhwc) {
      roi_align_forward_nhwc_impl<scalar_t, A>(pyr, ml.rois.data_ptr<A>(), K, C, pooled_h, pooled_w, sampling_ratio,
                                               aligned, output.data_ptr<scalar_t>());
    } else {
      roi_align_forward_impl<scalar_t, A>(pyr, ml.rois.data_ptr<A>(), K, C, pooled_h, pooled_w, sampling_ratio,
                                          aligned, output.data_ptr<scalar_t>());
    }
  });
  return output;
}

std::vector<at::Tensor> multilevel_roi_align_backward_cpu(const at::Tensor& grad_, const at::Tensor& rois_,
                                                          at::TensorList feats_, at::ArrayRef<double> scales,
                                                          int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio,
                                                          bool aligned, int64_t canonical_level,
                                                          int64_t canonical_scale) {
  auto ml = MultiLevel::make(feats_, rois_, scales, canonical_level, /*need_data=*/false);
  // Channels-last levels get channels-last gradients, accumulated where they lie ([K, bins, C] grad).
  const bool nhwc = is_nhwc(ml.feats[0]);
  auto grad = nhwc ? grad_.permute({0, 2, 3, 1}).contiguous() : grad_.contiguous();
  const int64_t K = ml.rois.size(0), C = ml.feats[0].size(1);
  auto acc_type = at::toOpMathType(grad.scalar_type());
  std::vector<at::Tensor> acc;
  for (auto& f : ml.feats) {
    auto opts = f.options().dtype(acc_type);
    acc.push_back(nhwc ? at::zeros({f.size(0), f.size(2), f.size(3), f.size(1)}, opts).permute({0, 3, 1, 2})
                       : at::zeros(f.sizes(), opts));
  }
  if (K > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "multilevel_roi_align_bwd_cpu", [&] {
      using A = at::opmath_type<scalar_t>;
      auto pyr = make_pyramid<scalar_t>(ml, scales, canonical_level, canonical_scale);
      std::vector<A*> levels;
      for (auto& a : acc) levels.push_back(a.data_ptr<A>());
      if (nhwc) {
        roi_align_backward_nhwc_impl<scalar_t, A>(pyr, levels, grad.data_ptr<scalar_t>(), ml.rois.data_ptr<A>(), K, C,
                                                  pooled_h, pooled_w, sampling_ratio, aligned);
      } else {
        roi_align_backward_impl<scalar_t, A>(pyr, levels, grad.data_ptr<scalar_t>(), ml.rois.data_ptr<A>(), K, C,
                                             pooled_h, pooled_w, sampling_ratio, aligned);
      }
    });
  }
  for (auto& a : acc) a = a.to(grad.scalar_type());  // preserves the channels-last strides
  return acc;
}

// ------------------------------------------------------------------------------------------ NMS
// Greedy NMS over positions [first, last) of arrays already in score order. The sweep of one kept
// box over the later ones is branch-free over contiguous arrays, so the compiler vectorizes it.
// 0 / 0 (two empty boxes) is NaN and suppresses nothing, as in torchvision.
template <typename A>
void greedy_nms(size_t first, size_t last, const A* __restrict x1, const A* __restrict y1, const A* __restrict x2,
                const A* __restrict y2, const A* __restrict area, A threshold, uint8_t* __restrict removed,
                std::vector<int64_t>& keep) {
  for (size_t a = first; a < last; ++a) {
    if (removed[a]) continue;
    keep.push_back(int64_t(a));
    const A ax1 = x1[a], ay1 = y1[a], ax2 = x2[a], ay2 = y2[a], aarea = area[a];
    for (size_t b = a + 1; b < last; ++b) {
      const A w = std::max(std::min(ax2, x2[b]) - std::max(ax1, x1[b]), A(0));
      const A h = std::max(std::min(ay2, y2[b]) - std::max(ay1, y1[b]), A(0));
      const A inter = w * h;
      removed[b] |= uint8_t(inter / (aarea + area[b] - inter) > threshold);
    }
  }
}

// With `idxs`, boxes of different groups never suppress each other: NMS runs within each group, so
// the work is the sum of the groups' squared sizes instead of the square of the total.
at::Tensor nms_impl(const at::Tensor& boxes_, const at::Tensor& scores_, const at::Tensor* idxs_, double iou_threshold) {
  check_nms_args(boxes_, scores_);
  const int64_t N = boxes_.size(0);
  if (N == 0) return at::empty({0}, boxes_.options().dtype(at::kLong));
  auto sorted = std::get<1>(scores_.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  auto boxes = boxes_.index_select(0, sorted).contiguous();
  // Positions 0..N-1 in score order; for batched NMS, grouped by category, score order kept within.
  std::vector<int64_t> order(N);
  std::iota(order.begin(), order.end(), 0);
  std::vector<size_t> group_end = {size_t(N)};
  if (idxs_) {
    auto cls_t = idxs_->index_select(0, sorted).to(at::kLong).contiguous();
    const int64_t* cls = cls_t.data_ptr<int64_t>();
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return cls[a] < cls[b]; });
    group_end.clear();
    for (int64_t a = 1; a <= N; ++a)
      if (a == N || cls[order[a]] != cls[order[a - 1]]) group_end.push_back(size_t(a));
  }
  std::vector<uint8_t> removed(N, 0);
  std::vector<int64_t> keep;
  keep.reserve(N);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "nms_cpu", [&] {
    using A = at::opmath_type<scalar_t>;
    // Coordinates as separate arrays in `order` (group, then score), areas computed once.
    std::vector<A> x1(N), y1(N), x2(N), y2(N), area(N);
    const scalar_t* b = boxes.data_ptr<scalar_t>();
    for (int64_t p = 0; p < N; ++p) {
      const scalar_t* bp = b + order[p] * 4;
      x1[p] = A(bp[0]);
      y1[p] = A(bp[1]);
      x2[p] = A(bp[2]);
      y2[p] = A(bp[3]);
      area[p] = (x2[p] - x1[p]) * (y2[p] - y1[p]);
    }
    size_t first = 0;
    for (size_t last : group_end) {
      greedy_nms<A>(first, last, x1.data(), y1.data(), x2.data(), y2.data(), area.data(), A(iou_threshold),
                    removed.data(), keep);
      first = last;
    }
  });
  for (auto& k : keep) k = order[k];  // positions -> score rank
  std::sort(keep.begin(), keep.end());  // back to decreasing score
  auto keep_t = at::from_blob(keep.data(), {int64_t(keep.size())}, at::kLong).clone();
  return sorted.index_select(0, keep_t);
}

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  return nms_impl(boxes, scores, nullptr, iou_threshold);
}

at::Tensor batched_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                           double iou_threshold) {
  TORCH_CHECK(idxs.dim() == 1 && idxs.size(0) == boxes.size(0), "batched_nms: idxs must be [N], got ", idxs.sizes());
  return nms_impl(boxes, scores, &idxs, iou_threshold);
}

// ---------------------------------------------------------------------------------- box coding
at::Tensor encode_boxes_cpu(const at::Tensor& gt_, const at::Tensor& proposals_, at::ArrayRef<double> weights) {
  check_box_pairs(gt_, proposals_, "encode_boxes");
  auto gt = gt_.contiguous();
  auto proposals = proposals_.contiguous();
  auto out = at::empty_like(gt);
  const int64_t N = gt.size(0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gt.scalar_type(), "encode_boxes_cpu", [&] {
    using A = at::opmath_type<scalar_t>;
    const A w[4] = {A(weights[0]), A(weights[1]), A(weights[2]), A(weights[3])};
    const scalar_t* g = gt.data_ptr<scalar_t>();
    const scalar_t* p = proposals.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, N, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) encode_box<scalar_t, A>(g + i * 4, p + i * 4, w, o + i * 4);
    });
  });
  return out;
}

at::Tensor decode_boxes_cpu(const at::Tensor& deltas_, const at::Tensor& boxes_, at::ArrayRef<double> weights,
                            double scale_clamp, at::OptionalIntArrayRef clip_hw) {
  check_decode_args(deltas_, boxes_);
  auto deltas = deltas_.contiguous();
  auto boxes = boxes_.contiguous();
  auto out = at::empty_like(deltas);
  const int64_t N = deltas.size(0), per = deltas.size(1) / 4;
  const bool clip = clip_hw.has_value();
  const double ch = clip ? (*clip_hw)[0] : 0, cw = clip ? (*clip_hw)[1] : 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, deltas.scalar_type(), "decode_boxes_cpu", [&] {
    using A = at::opmath_type<scalar_t>;
    const A w[4] = {A(weights[0]), A(weights[1]), A(weights[2]), A(weights[3])};
    const scalar_t* d = deltas.data_ptr<scalar_t>();
    const scalar_t* b = boxes.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, N * per, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)
        decode_box<scalar_t, A>(d + i * 4, b + (i / per) * 4, w, A(scale_clamp), A(ch), A(cw), clip, o + i * 4);
    });
  });
  return out;
}

// ---------------------------------------------------------------------------------- mask paste
at::Tensor paste_masks_cpu(const at::Tensor& masks_, const at::Tensor& boxes_, int64_t height, int64_t width) {
  check_paste_args(masks_, boxes_);
  auto masks = masks_.contiguous();
  auto boxes = boxes_.to(at::kFloat).contiguous();
  const int64_t N = masks.size(0), M = masks.size(1);
  auto out = at::zeros({N, height, width}, masks.options());
  if (N == 0 || height == 0 || width == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, masks.scalar_type(), "paste_masks_cpu", [&] {
    using A = at::opmath_type<scalar_t>;
    const scalar_t* m = masks.data_ptr<scalar_t>();
    const float* b = boxes.data_ptr<float>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        int64_t ib[4];
        paste_box<float>(b + n * 4, M, ib);
        // Only the box's rows and columns can be non-zero.
        const int64_t y0 = std::max<int64_t>(ib[1], 0), y1 = std::min<int64_t>(ib[3] + 1, height);
        const int64_t x0 = std::max<int64_t>(ib[0], 0), x1 = std::min<int64_t>(ib[2] + 1, width);
        for (int64_t y = y0; y < y1; ++y)
          for (int64_t x = x0; x < x1; ++x)
            o[(n * height + y) * width + x] = scalar_t(paste_mask_pixel<scalar_t, A>(m + n * M * M, M, ib, y, x));
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mrcnn_bench, CPU, m) {
  m.impl("roi_align", &roi_align_forward_cpu);
  m.impl("roi_align_backward", &roi_align_backward_cpu);
  m.impl("multilevel_roi_align", &multilevel_roi_align_forward_cpu);
  m.impl("multilevel_roi_align_backward", &multilevel_roi_align_backward_cpu);
  m.impl("nms", &nms_cpu);
  m.impl("batched_nms", &batched_nms_cpu);
  m.impl("encode_boxes", &encode_boxes_cpu);
  m.impl("decode_boxes", &decode_boxes_cpu);
  m.impl("paste_masks", &paste_masks_cpu);
}

}  // namespace mrcnn_bench
