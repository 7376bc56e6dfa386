// CUDA kernels. The arithmetic lives in box_math.h (shared with the CPU kernels); this file only
// maps it onto threads.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#include <torch/types.h>

#include <vector>

#include "box_math.h"
#include "ops.h"

namespace mrcnn_bench {
namespace {

constexpr int kThreads = 256;

inline int64_t blocks_for(int64_t n) {
  return std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t(1) << 20);
}

#define MRB_GRID_STRIDE(i, n) for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); i += int64_t(blockDim.x) * gridDim.x)

// ------------------------------------------------------------------------------------ RoIAlign
template <typename T>
__global__ void roi_align_fwd_kernel(int64_t total, const T* input, const at::opmath_type<T>* rois, double spatial_scale, int C, int H,
                                     int W, int ph_n, int pw_n, int sampling_ratio, bool aligned, T* out) {
  using A = at::opmath_type<T>;
  MRB_GRID_STRIDE(i, total) {
    int pw = i % pw_n, ph = (i / pw_n) % ph_n;
    int64_t c = (i / pw_n / ph_n) % C, k = i / pw_n / ph_n / C;
    auto g = roi_geometry<A, A>(rois + k * 5, A(spatial_scale), ph_n, pw_n, sampling_ratio, aligned);
    out[i] = T(roi_align_bin<T, A>(input + (g.batch * C + c) * H * W, H, W, g, ph, pw));
  }
}

template <typename T, typename A>
__global__ void roi_align_bwd_kernel(int64_t total, const T* grad, const A* rois, double spatial_scale, int C, int H,
                                     int W, int ph_n, int pw_n, int sampling_ratio, bool aligned, A* grad_input) {
  MRB_GRID_STRIDE(i, total) {
    int pw = i % pw_n, ph = (i / pw_n) % ph_n;
    int64_t c = (i / pw_n / ph_n) % C, k = i / pw_n / ph_n / C;
    auto g = roi_geometry<A, A>(rois + k * 5, A(spatial_scale), ph_n, pw_n, sampling_ratio, aligned);
    A* plane = grad_input + (g.batch * C + c) * H * W;
    roi_align_bin_backward<A>(H, W, g, ph, pw, A(grad[i]), [&](int64_t j, A v) { gpuAtomicAdd(plane + j, v); });
  }
}

at::Tensor roi_align_forward_cuda(const at::Tensor& input_, const at::Tensor& rois_, double spatial_scale,
                                  int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned) {
  check_roi_align_args(input_, rois_, pooled_h, pooled_w);
  at::cuda::CUDAGuard guard(input_.device());
  auto input = input_.contiguous();
  auto rois = rois_.contiguous();
  const int64_t K = rois.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  auto out = at::zeros({K, C, pooled_h, pooled_w}, input.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_align_forward_cuda", [&] {
    roi_align_fwd_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        total, input.data_ptr<scalar_t>(), rois.data_ptr<at::opmath_type<scalar_t>>(), spatial_scale, C, H, W, pooled_h,
        pooled_w, sampling_ratio, aligned, out.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor roi_align_backward_cuda(const at::Tensor& grad_, const at::Tensor& rois_, double spatial_scale,
                                   int64_t pooled_h, int64_t pooled_w, int64_t batch, int64_t channels, int64_t height,
                                   int64_t width, int64_t sampling_ratio, bool aligned) {
  // Overlapping RoIs add into the same input pixels with atomics: the order, and so the last bits
  // of the sum, vary from run to run.
  at::globalContext().alertNotDeterministic("mrcnn_bench::roi_align_backward (CUDA)");
  at::cuda::CUDAGuard guard(grad_.device());
  auto grad = grad_.contiguous();
  auto rois = rois_.contiguous();
  auto acc_type = at::toOpMathType(grad.scalar_type());
  auto grad_input = at::zeros({batch, channels, height, width}, grad.options().dtype(acc_type));
  const int64_t total = grad.numel();
  if (total == 0) return grad_input.to(grad.scalar_type());
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_backward_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    roi_align_bwd_kernel<scalar_t, A><<<blocks_for(total), kThreads, 0, stream>>>(
        total, grad.data_ptr<scalar_t>(), rois.data_ptr<A>(), spatial_scale, channels, height, width,
        pooled_h, pooled_w, sampling_ratio, aligned, grad_input.data_ptr<A>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad_input.to(grad.scalar_type());
}

// ----------------------------------------------------------------------- multi-level RoIAlign
template <typename P>
struct Levels {
  P data[kMaxLevels];
  int h[kMaxLevels], w[kMaxLevels];
  double scale[kMaxLevels];  // the op-math type narrows it in the kernel (float for float features only)
};

template <typename T>
__global__ void ml_roi_align_fwd_kernel(int64_t total, Levels<const T*> lv, const at::opmath_type<T>* rois, int C, int ph_n, int pw_n,
                                        int sampling_ratio, bool aligned, int k_min, int k_max, int canonical_level,
                                        int canonical_scale, T* out) {
  using A = at::opmath_type<T>;
  MRB_GRID_STRIDE(i, total) {
    int pw = i % pw_n, ph = (i / pw_n) % ph_n;
    int64_t c = (i / pw_n / ph_n) % C, k = i / pw_n / ph_n / C;
    const A* roi = rois + k * 5;
    int l = fpn_level(roi, k_min, k_max, canonical_level, canonical_scale);
    auto g = roi_geometry<A, A>(roi, A(lv.scale[l]), ph_n, pw_n, sampling_ratio, aligned);
    out[i] = T(roi_align_bin<T, A>(lv.data[l] + (g.batch * C + c) * lv.h[l] * lv.w[l], lv.h[l], lv.w[l], g, ph, pw));
  }
}

template <typename T, typename A>
__global__ void ml_roi_align_bwd_kernel(int64_t total, Levels<A*> lv, const T* grad, const A* rois, int C, int ph_n,
                                        int pw_n, int sampling_ratio, bool aligned, int k_min, int k_max,
                                        int canonical_level, int canonical_scale) {
  MRB_GRID_STRIDE(i, total) {
    int pw = i % pw_n, ph = (i / pw_n) % ph_n;
    int64_t c = (i / pw_n / ph_n) % C, k = i / pw_n / ph_n / C;
    const A* roi = rois + k * 5;
    int l = fpn_level(roi, k_min, k_max, canonical_level, canonical_scale);
    auto g = roi_geometry<A, A>(roi, A(lv.scale[l]), ph_n, pw_n, sampling_ratio, aligned);
    A* plane = lv.data[l] + (g.batch * C + c) * lv.h[l] * lv.w[l];
    roi_align_bin_backward<A>(lv.h[l], lv.w[l], g, ph, pw, A(grad[i]), [&](int64_t j, A v) { gpuAtomicAdd(plane + j, v); });
  }
}

at::Tensor multilevel_roi_align_forward_cuda(at::TensorList feats_, const at::Tensor& rois_, at::ArrayRef<double> scales,
                                             int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned,
                                             int64_t canonical_level, int64_t canonical_scale) {
  auto ml = MultiLevel::make(feats_, rois_, scales, canonical_level);
  at::cuda::CUDAGuard guard(ml.rois.device());
  const int64_t K = ml.rois.size(0), C = ml.feats[0].size(1);
  auto out = at::zeros({K, C, pooled_h, pooled_w}, ml.feats[0].options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "multilevel_roi_align_cuda", [&] {
    Levels<const scalar_t*> lv{};
    for (int l = 0; l < ml.levels(); ++l) {
      lv.data[l] = ml.feats[l].data_ptr<scalar_t>();
      lv.h[l] = ml.feats[l].size(2);
      lv.w[l] = ml.feats[l].size(3);
      lv.scale[l] = scales[l];
    }
    ml_roi_align_fwd_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        total, lv, ml.rois.data_ptr<at::opmath_type<scalar_t>>(), C, pooled_h, pooled_w, sampling_ratio, aligned, ml.k_min, ml.k_max,
        canonical_level, canonical_scale, out.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::vector<at::Tensor> multilevel_roi_align_backward_cuda(const at::Tensor& grad_, const at::Tensor& rois_,
                                                           at::TensorList feats_, at::ArrayRef<double> scales,
                                                           int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio,
                                                           bool aligned, int64_t canonical_level,
                                                           int64_t canonical_scale) {
  at::globalContext().alertNotDeterministic("mrcnn_bench::multilevel_roi_align_backward (CUDA)");
  // The features are read for their sizes only: no contiguous copy of a channels-last level.
  auto ml = MultiLevel::make(feats_, rois_, scales, canonical_level, /*need_data=*/false);
  at::cuda::CUDAGuard guard(ml.rois.device());
  auto grad = grad_.contiguous();
  const int64_t C = ml.feats[0].size(1), total = grad.numel();
  auto acc_type = at::toOpMathType(grad.scalar_type());
  std::vector<at::Tensor> acc;
  for (auto& f : ml.feats) acc.push_back(at::zeros(f.sizes(), f.options().dtype(acc_type).memory_format(at::MemoryFormat::Contiguous)));
  if (total > 0) {
    auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "multilevel_roi_align_bwd_cuda", [&] {
      using A = at::opmath_type<scalar_t>;
      Levels<A*> lv{};
      for (int l = 0; l < ml.levels(); ++l) {
        lv.data[l] = acc[l].data_ptr<A>();
        lv.h[l] = acc[l].size(2);
        lv.w[l] = acc[l].size(3);
        lv.scale[l] = scales[l];
      }
      ml_roi_align_bwd_kernel<scalar_t, A><<<blocks_for(total), kThreads, 0, stream>>>(
          total, lv, grad.data_ptr<scalar_t>(), ml.rois.data_ptr<A>(), C, pooled_h, pooled_w, sampling_ratio,
          aligned, ml.k_min, ml.k_max, canonical_level, canonical_scale);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  for (auto& a : acc) a = a.to(grad.scalar_type());
  return acc;
}

// ------------------------------------------------------------------------------------------ NMS
constexpr int kNmsBlock = 64;  // boxes per 64-bit mask word

// mask[i][b] bit j: box i suppresses box b * 64 + j (boxes sorted by score, same category if idxs).
template <typename T>
__global__ void nms_mask_kernel(int n, const T* boxes, const int64_t* idxs, double threshold, uint64_t* mask) {
  using A = at::opmath_type<T>;
  const int row = blockIdx.y, col = blockIdx.x;
  if (row > col) return;  // only later boxes can be suppressed
  const int rows = min(n - row * kNmsBlock, kNmsBlock), cols = min(n - col * kNmsBlock, kNmsBlock);
  __shared__ A block_boxes[kNmsBlock * 4];
  __shared__ int64_t block_idx[kNmsBlock];
  if (threadIdx.x < cols) {
    for (int d = 0; d < 4; ++d) block_boxes[threadIdx.x * 4 + d] = A(boxes[(col * kNmsBlock + threadIdx.x) * 4 + d]);
    block_idx[threadIdx.x] = idxs ? idxs[col * kNmsBlock + threadIdx.x] : 0;
  }
  __syncthreads();
  if (threadIdx.x >= rows) return;
  const int i = row * kNmsBlock + threadIdx.x;
  A me[4] = {A(boxes[i * 4]), A(boxes[i * 4 + 1]), A(boxes[i * 4 + 2]), A(boxes[i * 4 + 3])};
  const int64_t my_idx = idxs ? idxs[i] : 0;
  uint64_t bits = 0;
  for (int j = (row == col ? threadIdx.x + 1 : 0); j < cols; ++j) {
    if (block_idx[j] == my_idx && box_iou<A>(me, block_boxes + j * 4) > A(threshold)) bits |= uint64_t(1) << j;
  }
  mask[int64_t(i) * gridDim.x + col] = bits;
}

at::Tensor nms_impl_cuda(const at::Tensor& boxes_, const at::Tensor& scores_, const at::Tensor* idxs_, double thr) {
  check_nms_args(boxes_, scores_);
  at::cuda::CUDAGuard guard(boxes_.device());
  const int64_t n = boxes_.size(0);
  if (n == 0) return at::empty({0}, boxes_.options().dtype(at::kLong));
  auto order = std::get<1>(scores_.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  auto boxes = boxes_.index_select(0, order).contiguous();
  at::Tensor idxs;
  if (idxs_) idxs = idxs_->index_select(0, order).to(at::kLong).contiguous();
  const int words = (n + kNmsBlock - 1) / kNmsBlock;
  auto mask = at::empty({n * words}, boxes.options().dtype(at::kLong));
  auto stream = at::cuda::getCurrentCUDAStream();
  dim3 grid(words, words);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "nms_cuda", [&] {
    nms_mask_kernel<scalar_t><<<grid, kNmsBlock, 0, stream>>>(
        n, boxes.data_ptr<scalar_t>(), idxs_ ? idxs.data_ptr<int64_t>() : nullptr, thr,
        reinterpret_cast<uint64_t*>(mask.data_ptr<int64_t>()));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // The greedy sweep over the mask is sequential: do it on the host, one copy of the mask.
  auto mask_cpu = mask.cpu();
  const uint64_t* m = reinterpret_cast<const uint64_t*>(mask_cpu.data_ptr<int64_t>());
  std::vector<uint64_t> removed(words, 0);
  std::vector<int64_t> keep;
  for (int64_t i = 0; i < n; ++i) {
    if (removed[i / kNmsBlock] & (uint64_t(1) << (i % kNmsBlock))) continue;
    keep.push_back(i);
    const uint64_t* row = m + i * words;
    for (int w = i / kNmsBlock; w < words; ++w) removed[w] |= row[w];
  }
  auto keep_t = at::from_blob(keep.data(), {int64_t(keep.size())}, at::kLong).to(boxes.device());
  return order.index_select(0, keep_t);
}

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double thr) {
  return nms_impl_cuda(boxes, scores, nullptr, thr);
}

at::Tensor batched_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs, double thr) {
  TORCH_CHECK(idxs.dim() == 1 && idxs.size(0) == boxes.size(0), "batched_nms: idxs must be [N], got ", idxs.sizes());
  return nms_impl_cuda(boxes, scores, &idxs, thr);
}

// ---------------------------------------------------------------------------------- box coding
// The four box-coding weights, passed by value in double: the op-math type narrows them in the
// kernel, as on the CPU (a float4 would round them for float64 boxes).
struct Weights4 {
  double v[4];
  explicit Weights4(at::ArrayRef<double> w) {
    TORCH_CHECK(w.size() == 4, "box coding: 4 weights expected, got ", w.size());
    for (int d = 0; d < 4; ++d) v[d] = w[d];
  }
};

template <typename T>
__global__ void encode_kernel(int64_t n, const T* gt, const T* proposals, Weights4 weights, T* out) {
  using A = at::opmath_type<T>;
  const A w[4] = {A(weights.v[0]), A(weights.v[1]), A(weights.v[2]), A(weights.v[3])};
  MRB_GRID_STRIDE(i, n) { encode_box<T, A>(gt + i * 4, proposals + i * 4, w, out + i * 4); }
}

template <typename T>
__global__ void decode_kernel(int64_t n, int per, const T* deltas, const T* boxes, Weights4 weights, double scale_clamp,
                              double clip_h, double clip_w, bool clip, T* out) {
  using A = at::opmath_type<T>;
  const A w[4] = {A(weights.v[0]), A(weights.v[1]), A(weights.v[2]), A(weights.v[3])};
  MRB_GRID_STRIDE(i, n) {
    decode_box<T, A>(deltas + i * 4, boxes + (i / per) * 4, w, A(scale_clamp), A(clip_h), A(clip_w), clip, out + i * 4);
  }
}

at::Tensor encode_boxes_cuda(const at::Tensor& gt_, const at::Tensor& proposals_, at::ArrayRef<double> weights) {
  check_box_pairs(gt_, proposals_, "encode_boxes");
  at::cuda::CUDAGuard guard(gt_.device());
  auto gt = gt_.contiguous();
  auto proposals = proposals_.contiguous();
  auto out = at::empty_like(gt);
  const int64_t n = gt.size(0);
  if (n == 0) return out;
  const Weights4 w(weights);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gt.scalar_type(), "encode_boxes_cuda", [&] {
    encode_kernel<scalar_t><<<blocks_for(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        n, gt.data_ptr<scalar_t>(), proposals.data_ptr<scalar_t>(), w, out.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor decode_boxes_cuda(const at::Tensor& deltas_, const at::Tensor& boxes_, at::ArrayRef<double> weights,
                             double scale_clamp, at::OptionalIntArrayRef clip_hw) {
  check_decode_args(deltas_, boxes_);
  at::cuda::CUDAGuard guard(deltas_.device());
  auto deltas = deltas_.contiguous();
  auto boxes = boxes_.contiguous();
  auto out = at::empty_like(deltas);
  const int per = deltas.size(1) / 4;
  const int64_t n = deltas.size(0) * per;
  if (n == 0) return out;
  const bool clip = clip_hw.has_value();
  const double ch = clip ? (*clip_hw)[0] : 0, cw = clip ? (*clip_hw)[1] : 0;
  const Weights4 w(weights);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, deltas.scalar_type(), "decode_boxes_cuda", [&] {
    decode_kernel<scalar_t><<<blocks_for(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        n, per, deltas.data_ptr<scalar_t>(), boxes.data_ptr<scalar_t>(), w, scale_clamp, ch, cw, clip,
        out.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// ---------------------------------------------------------------------------------- mask paste
template <typename T>
__global__ void paste_kernel(int64_t total, const T* masks, const float* boxes, int m, int height, int width, T* out) {
  using A = at::opmath_type<T>;
  MRB_GRID_STRIDE(i, total) {
    const int x = i % width, y = (i / width) % height;
    const int64_t n = i / width / height;
    int64_t ib[4];
    paste_box<float>(boxes + n * 4, m, ib);
    out[i] = T(paste_mask_pixel<T, A>(masks + n * m * m, m, ib, y, x));
  }
}

at::Tensor paste_masks_cuda(const at::Tensor& masks_, const at::Tensor& boxes_, int64_t height, int64_t width) {
  check_paste_args(masks_, boxes_);
  at::cuda::CUDAGuard guard(masks_.device());
  auto masks = masks_.contiguous();
  auto boxes = boxes_.to(at::kFloat).contiguous();
  auto out = at::empty({masks.size(0), height, width}, masks.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, masks.scalar_type(), "paste_masks_cuda", [&] {
    paste_kernel<scalar_t><<<blocks_for(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        total, masks.data_ptr<scalar_t>(), boxes.data_ptr<float>(), masks.size(1), height, width,
        out.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mrcnn_bench, CUDA, m) {
  m.impl("roi_align", &roi_align_forward_cuda);
  m.impl("roi_align_backward", &roi_align_backward_cuda);
  m.impl("multilevel_roi_align", &multilevel_roi_align_forward_cuda);
  m.impl("multilevel_roi_align_backward", &multilevel_roi_align_backward_cuda);
  m.impl("nms", &nms_cuda);
  m.impl("batched_nms", &batched_nms_cuda);
  m.impl("encode_boxes", &encode_boxes_cuda);
  m.impl("decode_boxes", &decode_boxes_cuda);
  m.impl("paste_masks", &paste_masks_cuda);
}

}  // namespace mrcnn_bench
