// Fused CPU generalized neighborhood attention (NATTEN >= 0.20 semantics), forward and backward.
//
// Tensors arrive in the canonical 3-D layout [B, L0, L1, L2, heads, D] (1-D and 2-D calls have leading axes of
// length 1 with kernel 1), contiguous, fp32 or fp64 (the Python wrapper validates and converts). Every query
// enumerates exactly its window (per axis: first key, count, dilation step), so no mask is ever evaluated: causal
// and border-clamped windows are just shorter or shifted ranges, and stride groups share ranges. Per query the
// logits of its window (plus the additional keys) are one small row computed with batched SIMD dot products, then
// softmax and P.V; the forward returns the log-sum-exp, from which the backward recomputes the probabilities
// (FlashAttention-2 style). Threads: torch's pool (at::parallel_for), forward over (batch, head, query rows),
// backward over (batch, head) so that dK/dV/d(rpb) are accumulated without races.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <vector>

#include "common.h"

namespace visionattn_cpu {
namespace {

struct Axis {
  std::vector<int64_t> first;  // actual coordinate of the first key of each query
  std::vector<int64_t> count;  // keys of each query along this axis
  std::vector<int64_t> rel;    // rpb index of the first key: (key - query) / dilation + k - 1
  int64_t dilation;
};

Axis make_axis(int64_t length, int64_t k, int64_t s, int64_t d, bool causal) {
  Axis a;
  a.first.resize(length);
  a.count.resize(length);
  a.rel.resize(length);
  a.dilation = d;
  for (int64_t pos = 0; pos < length; ++pos) {
    int64_t g = pos % d, c = pos / d;
    int64_t lg = (length - g + d - 1) / d;
    int64_t start, cnt;
    if (causal) {
      int64_t leader = std::min((c / s) * s + s - 1, lg - 1);
      start = std::max<int64_t>(leader - k + 1, 0);
      cnt = c - start + 1;
    } else {
      int64_t left = k / 2, right = k / 2 + k % 2 - 1;
      int64_t leader = std::min((c / s) * s + s / 2, lg - 1);
      int64_t centre = std::max(std::min(leader, lg - 1 - right), left);
      start = centre - left;
      cnt = k;
    }
    a.first[pos] = g + start * d;
    a.count[pos] = cnt;
    a.rel[pos] = start - c + k - 1;
  }
  return a;
}

struct Geometry {
  int64_t B, L[3], H, D, Dv, E, R[3];
  Axis ax[3];
  int64_t window;  // largest number of window keys of a query
};

Geometry make_geometry(const torch::Tensor& q, const torch::Tensor& v, at::IntArrayRef ks, at::IntArrayRef st,
                       at::IntArrayRef dil, at::IntArrayRef causal, const c10::optional<torch::Tensor>& ak) {
  TORCH_CHECK(q.dim() == 6 && ks.size() == 3 && st.size() == 3 && dil.size() == 3 && causal.size() == 3,
              "gna_cpu: expects canonical 3-D layout");
  Geometry g;
  g.B = q.size(0);
  g.H = q.size(4);
  g.D = q.size(5);
  g.Dv = v.size(5);
  g.E = ak.has_value() ? ak->size(1) : 0;
  g.window = 1;
  for (int i = 0; i < 3; ++i) {
    g.L[i] = q.size(1 + i);
    g.R[i] = 2 * ks[i] - 1;
    TORCH_CHECK(ks[i] >= 1 && st[i] >= 1 && dil[i] >= 1 && ks[i] * dil[i] <= g.L[i], "gna_cpu: bad geometry");
    g.ax[i] = make_axis(g.L[i], ks[i], st[i], dil[i], causal[i] != 0);
    g.window *= ks[i];
  }
  return g;
}

// Window of query (i0, i1, i2): token indices (flattened spatial) and flat rpb indices; returns the count.
inline int64_t enumerate(const Geometry& g, int64_t i0, int64_t i1, int64_t i2, int64_t* tok, int64_t* rel) {
  const Axis &a0 = g.ax[0], &a1 = g.ax[1], &a2 = g.ax[2];
  int64_t n = 0;
  const int64_t c2 = a2.count[i2], f2 = a2.first[i2], r2 = a2.rel[i2], d2 = a2.dilation;
  for (int64_t t0 = 0; t0 < a0.count[i0]; ++t0) {
    int64_t p0 = a0.first[i0] + t0 * a0.dilation, q0 = a0.rel[i0] + t0;
    for (int64_t t1 = 0; t1 < a1.count[i1]; ++t1) {
      int64_t p1 = a1.first[i1] + t1 * a1.dilation, q1 = a1.rel[i1] + t1;
      int64_t base = (p0 * g.L[1] + p1) * g.L[2] + f2;
      int64_t rbase = (q0 * g.R[1] + q1) * g.R[2] + r2;
      for (int64_t t2 = 0; t2 < c2; ++t2) {
        tok[n] = base + t2 * d2;
        rel[n] = rbase + t2;
        ++n;
      }
    }
  }
  return n;
}

template <typename T>
void fwd_kernel(const Geometry& g, const T* q, const T* k, const T* v, const T* rpb, const T* ak, const T* av,
                T scale, T* out, T* lse) {
  const int64_t H = g.H, D = g.D, Dv = g.Dv, E = g.E;
  const int64_t N = g.L[0] * g.L[1] * g.L[2];
  const int64_t chunk = 64, nchunk = (g.L[2] + chunk - 1) / chunk;
  const int64_t tasks = g.B * H * g.L[0] * g.L[1] * nchunk;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    const int64_t W = g.window + E;
    std::vector<int64_t> tok(g.window), rel(g.window);
    std::vector<const T*> krow(W), vrow(W);
    std::vector<T> s(W), acc(Dv);
    for (int64_t t = begin; t < end; ++t) {
      int64_t r = t;
      const int64_t c = r % nchunk; r /= nchunk;
      const int64_t i1 = r % g.L[1]; r /= g.L[1];
      const int64_t i0 = r % g.L[0]; r /= g.L[0];
      const int64_t h = r % H, b = r / H;
      const T* kb = k + b * N * H * D + h * D;
      const T* vb = v + b * N * H * Dv + h * Dv;
      const T* rb = rpb ? rpb + h * g.R[0] * g.R[1] * g.R[2] : nullptr;
      for (int64_t e = 0; e < E; ++e) {
        krow[g.window + e] = ak + ((b * E + e) * H + h) * D;
        vrow[g.window + e] = av + ((b * E + e) * H + h) * Dv;
      }
      const int64_t i2end = std::min(g.L[2], (c + 1) * chunk);
      for (int64_t i2 = c * chunk; i2 < i2end; ++i2) {
        const int64_t qi = (i0 * g.L[1] + i1) * g.L[2] + i2;
        const T* qr = q + ((b * N + qi) * H + h) * D;
        const int64_t n = enumerate(g, i0, i1, i2, tok.data(), rel.data());
        for (int64_t j = 0; j < n; ++j) {
          krow[j] = kb + tok[j] * H * D;
          vrow[j] = vb + tok[j] * H * Dv;
        }
        if (n < g.window && E) {  // causal windows are shorter: move the extra keys up
          for (int64_t e = 0; e < E; ++e) {
            krow[n + e] = krow[g.window + e];
            vrow[n + e] = vrow[g.window + e];
          }
        }
        const int64_t m = n + E;
        dots<T>(qr, krow.data(), m, D, s.data());
        T mx = -std::numeric_limits<T>::infinity();
        for (int64_t j = 0; j < m; ++j) {
          s[j] = s[j] * scale + (rb && j < n ? rb[rel[j]] : T(0));
          mx = std::max(mx, s[j]);
        }
        const T sum = exp_sub_sum<T>(s.data(), m, mx);
        weighted_sum<T>(s.data(), vrow.data(), m, Dv, T(1) / sum, acc.data(), out + ((b * N + qi) * H + h) * Dv);
        lse[(b * H + h) * N + qi] = mx + std::log(sum);
        if (n < g.window && E) {
          for (int64_t e = 0; e < E; ++e) {
            krow[g.window + e] = ak + ((b * E + e) * H + h) * D;
            vrow[g.window + e] = av + ((b * E + e) * H + h) * Dv;
          }
        }
      }
    }
  });
}

template <typename T>
void bwd_kernel(const Geometry& g, const T* dout, const T* q, const T* k, const T* v, const T* out, const T* lse,
                const T* rpb, const T* ak, const T* av, T scale, T* dq, T* dk, T* dv, T* drpb, T* dak, T* dav) {
  const int64_t H = g.H, D = g.D, Dv = g.Dv, E = g.E;
  const int64_t N = g.L[0] * g.L[1] * g.L[2];
  const int64_t RV = g.R[0] * g.R[1] * g.R[2];
  at::parallel_for(0, g.B * H, 1, [&](int64_t begin, int64_t end) {
    const int64_t W = g.window + E;
    std::vector<int64_t> tok(g.window), rel(g.window);
    std::vector<const T*> krow(W), vrow(W);
    std::vector<T*> dkrow(W), dvrow(W);
    std::vector<T> s(W), dp(W), dqa(D);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t h = t % H, b = t / H;
      const T* kb = k + b * N * H * D + h * D;
      const T* vb = v + b * N * H * Dv + h * Dv;
      T* dkb = dk + b * N * H * D + h * D;
      T* dvb = dv + b * N * H * Dv + h * Dv;
      const T* rb = rpb ? rpb + h * RV : nullptr;
      T* drb = drpb ? drpb + (b * H + h) * RV : nullptr;
      for (int64_t qi = 0; qi < N; ++qi) {
        const int64_t i2 = qi % g.L[2], i1 = (qi / g.L[2]) % g.L[1], i0 = qi / (g.L[2] * g.L[1]);
        const int64_t row = (b * N + qi) * H + h;
        const T* qr = q + row * D;
        const T* gor = dout + row * Dv;
        const T* orow = out + row * Dv;
        const int64_t n = enumerate(g, i0, i1, i2, tok.data(), rel.data());
        for (int64_t j = 0; j < n; ++j) {
          krow[j] = kb + tok[j] * H * D;
          vrow[j] = vb + tok[j] * H * Dv;
          dkrow[j] = dkb + tok[j] * H * D;
          dvrow[j] = dvb + tok[j] * H * Dv;
        }
        for (int64_t e = 0; e < E; ++e) {
          const int64_t er = (b * E + e) * H + h;
          krow[n + e] = ak + er * D;
          vrow[n + e] = av + er * Dv;
          dkrow[n + e] = dak + er * D;
          dvrow[n + e] = dav + er * Dv;
        }
        const int64_t m = n + E;
        dots<T>(qr, krow.data(), m, D, s.data());
        dots<T>(gor, vrow.data(), m, Dv, dp.data());
        const T l = lse[(b * H + h) * N + qi];
        const T di = dot<T>(gor, orow, Dv);
        for (int64_t j = 0; j < m; ++j) s[j] = s[j] * scale + (rb && j < n ? rb[rel[j]] : T(0)) - l;
        exp_sub_sum<T>(s.data(), m, T(0));
        std::fill(dqa.begin(), dqa.end(), T(0));
        for (int64_t j = 0; j < m; ++j) {
          const T p = s[j];
          const T ds = p * (dp[j] - di);
          axpy<T>(dvrow[j], p, gor, Dv);
          axpy<T>(dkrow[j], ds * scale, qr, D);
          axpy<T>(dqa.data(), ds * scale, krow[j], D);
          if (drb && j < n) drb[rel[j]] += ds;
        }
        T* dqr = dq + row * D;
        for (int64_t i = 0; i < D; ++i) dqr[i] = dqa[i];
      }
    }
  });
}

std::tuple<torch::Tensor, torch::Tensor> gna_fwd(const torch::Tensor& q, const torch::Tensor& k,
                                                 const torch::Tensor& v, at::IntArrayRef ks, at::IntArrayRef st,
                                                 at::IntArrayRef dil, at::IntArrayRef causal,
                                                 const c10::optional<torch::Tensor>& rpb, double scale,
                                                 const c10::optional<torch::Tensor>& ak,
                                                 const c10::optional<torch::Tensor>& av) {
  TORCH_CHECK(q.is_contiguous() && k.is_contiguous() && v.is_contiguous(), "gna_cpu: inputs must be contiguous");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(), "gna_cpu: dtypes differ");
  TORCH_CHECK(q.sizes() == k.sizes() && v.dim() == 6, "gna_cpu: shapes");
  Geometry g = make_geometry(q, v, ks, st, dil, causal, ak);
  auto out = torch::empty({g.B, g.L[0], g.L[1], g.L[2], g.H, g.Dv}, q.options());
  auto lse = torch::empty({g.B, g.H, g.L[0] * g.L[1] * g.L[2]}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "gna_cpu_fwd", [&] {
    fwd_kernel<scalar_t>(g, q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                         rpb.has_value() ? rpb->data_ptr<scalar_t>() : nullptr,
                         ak.has_value() ? ak->data_ptr<scalar_t>() : nullptr,
                         av.has_value() ? av->data_ptr<scalar_t>() : nullptr, static_cast<scalar_t>(scale),
                         out.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>());
  });
  return {out, lse};
}

std::vector<torch::Tensor> gna_bwd(const torch::Tensor& dout, const torch::Tensor& q, const torch::Tensor& k,
                                   const torch::Tensor& v, const torch::Tensor& out, const torch::Tensor& lse,
                                   at::IntArrayRef ks, at::IntArrayRef st, at::IntArrayRef dil,
                                   at::IntArrayRef causal, const c10::optional<torch::Tensor>& rpb, double scale,
                                   const c10::optional<torch::Tensor>& ak, const c10::optional<torch::Tensor>& av) {
  TORCH_CHECK(dout.is_contiguous() && q.is_contiguous() && k.is_contiguous() && v.is_contiguous() &&
                  out.is_contiguous() && lse.is_contiguous(),
              "gna_cpu: inputs must be contiguous");
  Geometry g = make_geometry(q, v, ks, st, dil, causal, ak);
  auto dq = torch::empty_like(q);
  auto dk = torch::zeros_like(k);
  auto dv = torch::zeros_like(v);
  const int64_t RV = g.R[0] * g.R[1] * g.R[2];
  torch::Tensor drpb_part = rpb.has_value() ? torch::zeros({g.B, g.H, RV}, q.options()) : torch::Tensor();
  torch::Tensor dak = ak.has_value() ? torch::zeros_like(*ak) : torch::Tensor();
  torch::Tensor dav = av.has_value() ? torch::zeros_like(*av) : torch::Tensor();
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "gna_cpu_bwd", [&] {
    bwd_kernel<scalar_t>(g, dout.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
                         v.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(),
                         rpb.has_value() ? rpb->data_ptr<scalar_t>() : nullptr,
                         ak.has_value() ? ak->data_ptr<scalar_t>() : nullptr,
                         av.has_value() ? av->data_ptr<scalar_t>() : nullptr, static_cast<scalar_t>(scale),
                         dq.data_ptr<scalar_t>(), dk.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>(),
                         rpb.has_value() ? drpb_part.data_ptr<scalar_t>() : nullptr,
                         ak.has_value() ? dak.data_ptr<scalar_t>() : nullptr,
                         av.has_value() ? dav.data_ptr<scalar_t>() : nullptr);
  });
  torch::Tensor drpb = rpb.has_value() ? drpb_part.sum(0).view(rpb->sizes()) : q.new_empty({0});
  if (!ak.has_value()) {
    dak = q.new_empty({0});
    dav = q.new_empty({0});
  }
  return {dq, dk, dv, drpb, dak, dav};
}

}  // namespace
}  // namespace visionattn_cpu

TORCH_LIBRARY_FRAGMENT(visionattn_cpu, m) {
  m.def(
      "gna_fwd(Tensor q, Tensor k, Tensor v, int[] kernel_size, int[] stride, int[] dilation, int[] is_causal, "
      "Tensor? rpb, float scale, Tensor? additional_keys, Tensor? additional_values) -> (Tensor, Tensor)");
  m.def(
      "gna_bwd(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, int[] kernel_size, "
      "int[] stride, int[] dilation, int[] is_causal, Tensor? rpb, float scale, Tensor? additional_keys, "
      "Tensor? additional_values) -> Tensor[]");
  m.impl("gna_fwd", c10::DispatchKey::CPU, TORCH_FN(visionattn_cpu::gna_fwd));
  m.impl("gna_bwd", c10::DispatchKey::CPU, TORCH_FN(visionattn_cpu::gna_bwd));
}
