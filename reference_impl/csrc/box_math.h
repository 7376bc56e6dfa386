// The arithmetic of every op, shared by the CPU and CUDA kernels (__host__ __device__), so the CPU
// tests exercise exactly the code the GPU runs. Conventions follow torchvision.ops, which the tests
// compare against: boxes are (x1, y1, x2, y2) in pixels, widths are x2 - x1 (no +1).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define MRB_HD __host__ __device__ __forceinline__
#else
#define MRB_HD inline
#endif

namespace mrcnn_bench {

template <typename T>
MRB_HD T mrb_max(T a, T b) { return a > b ? a : b; }
template <typename T>
MRB_HD T mrb_min(T a, T b) { return a < b ? a : b; }

// ------------------------------------------------------------------------------------------ RoIAlign
// The four neighbours of a sampling point and their weights (torchvision's bilinear_interpolate).
template <typename A>
struct Bilinear {
  int y_low, x_low, y_high, x_high;
  A w1, w2, w3, w4;
  bool valid;
};

template <typename A>
MRB_HD Bilinear<A> bilinear_at(int height, int width, A y, A x) {
  Bilinear<A> b{0, 0, 0, 0, A(0), A(0), A(0), A(0), false};
  if (y < A(-1) || y > A(height) || x < A(-1) || x > A(width)) return b;  // outside: contributes 0
  if (y <= A(0)) y = A(0);
  if (x <= A(0)) x = A(0);
  int y_low = static_cast<int>(y);
  int x_low = static_cast<int>(x);
  int y_high, x_high;
  if (y_low >= height - 1) {
    y_high = y_low = height - 1;
    y = A(y_low);
  } else {
    y_high = y_low + 1;
  }
  if (x_low >= width - 1) {
    x_high = x_low = width - 1;
    x = A(x_low);
  } else {
    x_high = x_low + 1;
  }
  A ly = y - A(y_low), lx = x - A(x_low);
  A hy = A(1) - ly, hx = A(1) - lx;
  b = Bilinear<A>{y_low, x_low, y_high, x_high, hy * hx, hy * lx, ly * hx, ly * lx, true};
  return b;
}

// Where one RoI's bins and sampling points lie on a feature map.
template <typename A>
struct RoiGeometry {
  int batch;
  A start_h, start_w, bin_h, bin_w;
  int grid_h, grid_w;
  A count;
};

template <typename T, typename A>
MRB_HD RoiGeometry<A> roi_geometry(const T* roi, A spatial_scale, int pooled_h, int pooled_w, int sampling_ratio,
                                   bool aligned) {
  RoiGeometry<A> g;
  g.batch = static_cast<int>(A(roi[0]));
  A offset = aligned ? A(0.5) : A(0);
  A x1 = A(roi[1]) * spatial_scale - offset;
  A y1 = A(roi[2]) * spatial_scale - offset;
  A x2 = A(roi[3]) * spatial_scale - offset;
  A y2 = A(roi[4]) * spatial_scale - offset;
  A roi_w = x2 - x1, roi_h = y2 - y1;
  if (!aligned) {  // legacy (Detectron 1) behaviour: force malformed RoIs to 1x1
    roi_w = mrb_max(roi_w, A(1));
    roi_h = mrb_max(roi_h, A(1));
  }
  g.start_h = y1;
  g.start_w = x1;
  g.bin_h = roi_h / A(pooled_h);
  g.bin_w = roi_w / A(pooled_w);
  g.grid_h = sampling_ratio > 0 ? sampling_ratio : static_cast<int>(ceil(roi_h / A(pooled_h)));
  g.grid_w = sampling_ratio > 0 ? sampling_ratio : static_cast<int>(ceil(roi_w / A(pooled_w)));
  int count = g.grid_h * g.grid_w;
  g.count = A(count > 1 ? count : 1);
  return g;
}

// Calls fn(bilinear) for every sampling point of bin (ph, pw) that falls inside the feature map.
template <typename A, typename F>
MRB_HD void for_each_sample(int height, int width, const RoiGeometry<A>& g, int ph, int pw, F fn) {
  for (int iy = 0; iy < g.grid_h; ++iy) {
    A y = g.start_h + A(ph) * g.bin_h + (A(iy) + A(0.5)) * g.bin_h / A(g.grid_h);
    for (int ix = 0; ix < g.grid_w; ++ix) {
      A x = g.start_w + A(pw) * g.bin_w + (A(ix) + A(0.5)) * g.bin_w / A(g.grid_w);
      Bilinear<A> b = bilinear_at<A>(height, width, y, x);
      if (b.valid) fn(b);
    }
  }
}

// One output element: the average of the bilinear samples in bin (ph, pw) of one channel plane.
template <typename T, typename A>
MRB_HD A roi_align_bin(const T* plane, int height, int width, const RoiGeometry<A>& g, int ph, int pw) {
  A sum = A(0);
  for_each_sample<A>(height, width, g, ph, pw, [&](const Bilinear<A>& b) {
    sum += b.w1 * A(plane[b.y_low * width + b.x_low]) + b.w2 * A(plane[b.y_low * width + b.x_high]) +
           b.w3 * A(plane[b.y_high * width + b.x_low]) + b.w4 * A(plane[b.y_high * width + b.x_high]);
  });
  return sum / g.count;
}

// Backward of one output element: calls add(index, value) for each of the feature-map cells it read.
template <typename A, typename Add>
MRB_HD void roi_align_bin_backward(int height, int width, const RoiGeometry<A>& g, int ph, int pw, A grad, Add add) {
  A scaled = grad / g.count;
  for_each_sample<A>(height, width, g, ph, pw, [&](const Bilinear<A>& b) {
    add(b.y_low * width + b.x_low, scaled * b.w1);
    add(b.y_low * width + b.x_high, scaled * b.w2);
    add(b.y_high * width + b.x_low, scaled * b.w3);
    add(b.y_high * width + b.x_high, scaled * b.w4);
  });
}

// FPN level of a box (Feature Pyramid Networks, eq. 1), as torchvision's LevelMapper computes it:
// floor(k0 + log2(sqrt(area) / s0) + eps), clamped to the levels present, minus the lowest level.
template <typename T>
MRB_HD int fpn_level(const T* roi, int k_min, int k_max, int canonical_level, int canonical_scale) {
  float area = (float(roi[3]) - float(roi[1])) * (float(roi[4]) - float(roi[2]));
  float s = sqrtf(area);
  float lvl = floorf(float(canonical_level) + log2f(s / float(canonical_scale)) + 1e-6f);
  if (!(lvl >= float(k_min))) lvl = float(k_min);  // also catches NaN (degenerate boxes)
  if (lvl > float(k_max)) lvl = float(k_max);
  return static_cast<int>(lvl) - k_min;
}

constexpr int kMaxLevels = 8;

// ------------------------------------------------------------------------------------------ boxes
template <typename A>
MRB_HD A box_iou(const A* a, const A* b) {
  A ix = mrb_max(mrb_min(a[2], b[2]) - mrb_max(a[0], b[0]), A(0));
  A iy = mrb_max(mrb_min(a[3], b[3]) - mrb_max(a[1], b[1]), A(0));
  A inter = ix * iy;
  A uni = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
  return uni > A(0) ? inter / uni : A(0);
}

// Regression targets of `gt` relative to `proposal` (torchvision's BoxCoder.encode_single).
template <typename T, typename A>
MRB_HD void encode_box(const T* gt, const T* proposal, const A* weights, T* out) {
  A pw = A(proposal[2]) - A(proposal[0]), ph = A(proposal[3]) - A(proposal[1]);
  A px = A(proposal[0]) + A(0.5) * pw, py = A(proposal[1]) + A(0.5) * ph;
  A gw = A(gt[2]) - A(gt[0]), gh = A(gt[3]) - A(gt[1]);
  A gx = A(gt[0]) + A(0.5) * gw, gy = A(gt[1]) + A(0.5) * gh;
  out[0] = T(weights[0] * (gx - px) / pw);
  out[1] = T(weights[1] * (gy - py) / ph);
  out[2] = T(weights[2] * log(gw / pw));
  out[3] = T(weights[3] * log(gh / ph));
}

// Boxes from deltas (torchvision's BoxCoder.decode_single), optionally clipped to the image.
template <typename T, typename A>
MRB_HD void decode_box(const T* delta, const T* box, const A* weights, A scale_clamp, A clip_h, A clip_w, bool clip,
                       T* out) {
  A w = A(box[2]) - A(box[0]), h = A(box[3]) - A(box[1]);
  A cx = A(box[0]) + A(0.5) * w, cy = A(box[1]) + A(0.5) * h;
  A dx = A(delta[0]) / weights[0], dy = A(delta[1]) / weights[1];
  A dw = mrb_min(A(delta[2]) / weights[2], scale_clamp), dh = mrb_min(A(delta[3]) / weights[3], scale_clamp);
  A pcx = dx * w + cx, pcy = dy * h + cy;
  A pw = exp(dw) * w, ph = exp(dh) * h;
  // torchvision computes the half-size as 0.5 * pred_w in the box dtype; same order here.
  A hw = A(0.5) * pw, hh = A(0.5) * ph;
  A x1 = pcx - hw, y1 = pcy - hh, x2 = pcx + hw, y2 = pcy + hh;
  if (clip) {
    x1 = mrb_min(mrb_max(x1, A(0)), clip_w);
    x2 = mrb_min(mrb_max(x2, A(0)), clip_w);
    y1 = mrb_min(mrb_max(y1, A(0)), clip_h);
    y2 = mrb_min(mrb_max(y2, A(0)), clip_h);
  }
  out[0] = T(x1);
  out[1] = T(y1);
  out[2] = T(x2);
  out[3] = T(y2);
}

// --------------------------------------------------------------------------------------- mask paste
// Value of image pixel (y, x) for one mask, as torchvision's paste_masks_in_image computes it: the
// MxM mask is padded by one pixel, its box scaled by (M + 2) / M, the box truncated to integers,
// the padded mask resized (bilinear, align_corners=False) to the box and copied into the image.
// `ibox` is the integer box (x0, y0, x1, y1) that torchvision computes; the caller makes it.
template <typename T, typename A>
MRB_HD A paste_mask_pixel(const T* mask, int m, const int64_t* ibox, int y, int x) {
  int64_t bw = ibox[2] - ibox[0] + 1, bh = ibox[3] - ibox[1] + 1;
  if (bw < 1) bw = 1;
  if (bh < 1) bh = 1;
  int64_t ly = y - ibox[1], lx = x - ibox[0];
  if (ly < 0 || lx < 0 || ly >= bh || lx >= bw || y > ibox[3] || x > ibox[2]) return A(0);
  int padded = m + 2;
  // PyTorch's upsample_bilinear2d (align_corners=False): src = scale * (dst + 0.5) - 0.5, floored at 0.
  float scale_h = float(padded) / float(bh), scale_w = float(padded) / float(bw);
  float sy = scale_h * (float(ly) + 0.5f) - 0.5f;
  float sx = scale_w * (float(lx) + 0.5f) - 0.5f;
  if (sy < 0.f) sy = 0.f;
  if (sx < 0.f) sx = 0.f;
  int y0 = static_cast<int>(sy), x0 = static_cast<int>(sx);
  int y1 = y0 < padded - 1 ? y0 + 1 : y0, x1 = x0 < padded - 1 ? x0 + 1 : x0;
  A l1y = A(sy - float(y0)), l1x = A(sx - float(x0));
  A l0y = A(1) - l1y, l0x = A(1) - l1x;
  // The padded border is zero: read inside [1, m] only.
  auto at = [&](int py, int px) -> A {
    return (py >= 1 && py <= m && px >= 1 && px <= m) ? A(mask[(py - 1) * m + (px - 1)]) : A(0);
  };
  return l0y * (l0x * at(y0, x0) + l1x * at(y0, x1)) + l1y * (l0x * at(y1, x0) + l1x * at(y1, x1));
}

// The integer box torchvision pastes into: the box scaled about its centre by (m + 2) / m, then
// truncated towards zero (Tensor.to(int64)).
template <typename T>
MRB_HD void paste_box(const T* box, int m, int64_t* ibox) {
  float scale = static_cast<float>(double(m + 2) / double(m));  // a Python float, applied in float32
  float w_half = (float(box[2]) - float(box[0])) * 0.5f * scale;
  float h_half = (float(box[3]) - float(box[1])) * 0.5f * scale;
  float x_c = (float(box[2]) + float(box[0])) * 0.5f;
  float y_c = (float(box[3]) + float(box[1])) * 0.5f;
  ibox[0] = static_cast<int64_t>(x_c - w_half);
  ibox[1] = static_cast<int64_t>(y_c - h_half);
  ibox[2] = static_cast<int64_t>(x_c + w_half);
  ibox[3] = static_cast<int64_t>(y_c + h_half);
}

}  // namespace mrcnn_bench
