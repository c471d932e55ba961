// Fused CPU block-sparse attention forward and backward (visionattn.ops.block_sparse semantics).
//
// query [B, Nq, Tq, H, D], key [B, Nk, Tk, H, D], value [B, Nk, Tk, H, Dv] contiguous fp32/fp64; index int64
// [B, H, Nq, topk] (validated in range by the Python wrapper); optional bias [B, H, Nq, topk] and key mask uint8
// [B, Nk, Tk]. Each query reads its keys through the index list, never gathering K/V: the listed blocks form one
// softmax, a block listed twice contributes its keys twice, masked keys are skipped, and a query with no key gets a
// zero output (lse -inf) and zero gradients. Forward threads over (batch, head, query block), backward over
// (batch, head) so that dK/dV are accumulated without races.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <vector>

#include "common.h"

namespace visionattn_cpu {
namespace {

struct BsaShape {
  int64_t B, Nq, Tq, H, D, Nk, Tk, Dv, K;
};

// keys of query block (b, h, n): row offsets (token index within batch b) and slot of each; returns the count
inline int64_t bsa_keys(const BsaShape& s, const int64_t* idx, const uint8_t* kmask, int64_t b, int64_t h, int64_t n,
                        int64_t* tok, int64_t* slot) {
  const int64_t* li = idx + ((b * s.H + h) * s.Nq + n) * s.K;
  int64_t c = 0;
  for (int64_t j = 0; j < s.K; ++j) {
    const int64_t m = li[j];
    const uint8_t* km = kmask ? kmask + (b * s.Nk + m) * s.Tk : nullptr;
    for (int64_t t = 0; t < s.Tk; ++t) {
      if (km && !km[t]) continue;
      tok[c] = m * s.Tk + t;
      slot[c] = j;
      ++c;
    }
  }
  return c;
}

template <typename T>
void bsa_fwd_kernel(const BsaShape& s, const T* q, const T* k, const T* v, const int64_t* idx, const T* bias,
                    const uint8_t* kmask, T scale, T* out, T* lse) {
  const int64_t H = s.H, D = s.D, Dv = s.Dv;
  at::parallel_for(0, s.B * H * s.Nq, 1, [&](int64_t begin, int64_t end) {
    const int64_t W = s.K * s.Tk;
    std::vector<int64_t> tok(W), slot(W);
    std::vector<const T*> krow(W), vrow(W);
    std::vector<T> sc(W), acc(Dv), kb(W);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task % s.Nq, h = (task / s.Nq) % H, b = task / (s.Nq * H);
      const int64_t m = bsa_keys(s, idx, kmask, b, h, n, tok.data(), slot.data());
      const T* bl = bias ? bias + ((b * H + h) * s.Nq + n) * s.K : nullptr;
      for (int64_t j = 0; j < m; ++j) {
        krow[j] = k + ((b * s.Nk * s.Tk + tok[j]) * H + h) * D;
        vrow[j] = v + ((b * s.Nk * s.Tk + tok[j]) * H + h) * Dv;
        kb[j] = bl ? bl[slot[j]] : T(0);
      }
      for (int64_t t = 0; t < s.Tq; ++t) {
        const int64_t row = ((b * s.Nq + n) * s.Tq + t) * H + h;
        T* o = out + row * Dv;
        T* l = lse + ((b * H + h) * s.Nq + n) * s.Tq + t;
        if (m == 0) {
          std::fill(o, o + Dv, T(0));
          *l = -std::numeric_limits<T>::infinity();
          continue;
        }
        dots<T>(q + row * D, krow.data(), m, D, sc.data());
        T mx = -std::numeric_limits<T>::infinity();
        for (int64_t j = 0; j < m; ++j) {
          sc[j] = sc[j] * scale + kb[j];
          mx = std::max(mx, sc[j]);
        }
        const T sum = exp_sub_sum<T>(sc.data(), m, mx);
        weighted_sum<T>(sc.data(), vrow.data(), m, Dv, T(1) / sum, acc.data(), o);
        *l = mx + std::log(sum);
      }
    }
  });
}

template <typename T>
void bsa_bwd_kernel(const BsaShape& s, const T* dout, const T* q, const T* k, const T* v, const T* out, const T* lse,
                    const int64_t* idx, const T* bias, const uint8_t* kmask, T scale, T* dq, T* dk, T* dv,
                    T* dbias) {
  const int64_t H = s.H, D = s.D, Dv = s.Dv;
  at::parallel_for(0, s.B * H, 1, [&](int64_t begin, int64_t end) {
    const int64_t W = s.K * s.Tk;
    std::vector<int64_t> tok(W), slot(W);
    std::vector<const T*> krow(W), vrow(W);
    std::vector<T*> dkrow(W), dvrow(W);
    std::vector<T> sc(W), dp(W), kb(W), dqa(D), dsl(s.K);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t h = task % H, b = task / H;
      for (int64_t n = 0; n < s.Nq; ++n) {
        const int64_t m = bsa_keys(s, idx, kmask, b, h, n, tok.data(), slot.data());
        const T* bl = bias ? bias + ((b * H + h) * s.Nq + n) * s.K : nullptr;
        T* dbl = dbias + ((b * H + h) * s.Nq + n) * s.K;
        std::fill(dsl.begin(), dsl.end(), T(0));
        for (int64_t j = 0; j < m; ++j) {
          const int64_t r = (b * s.Nk * s.Tk + tok[j]) * H + h;
          krow[j] = k + r * D;
          vrow[j] = v + r * Dv;
          dkrow[j] = dk + r * D;
          dvrow[j] = dv + r * Dv;
          kb[j] = bl ? bl[slot[j]] : T(0);
        }
        for (int64_t t = 0; t < s.Tq; ++t) {
          const int64_t row = ((b * s.Nq + n) * s.Tq + t) * H + h;
          T* dqr = dq + row * D;
          if (m == 0) {
            std::fill(dqr, dqr + D, T(0));
            continue;
          }
          const T* qr = q + row * D;
          const T* gor = dout + row * Dv;
          const T l = lse[((b * H + h) * s.Nq + n) * s.Tq + t];
          const T di = dot<T>(gor, out + row * Dv, Dv);
          dots<T>(qr, krow.data(), m, D, sc.data());
          dots<T>(gor, vrow.data(), m, Dv, dp.data());
          for (int64_t j = 0; j < m; ++j) sc[j] = sc[j] * scale + kb[j] - l;
          exp_sub_sum<T>(sc.data(), m, T(0));
          std::fill(dqa.begin(), dqa.end(), T(0));
          for (int64_t j = 0; j < m; ++j) {
            const T p = sc[j], ds = p * (dp[j] - di);
            axpy<T>(dvrow[j], p, gor, Dv);
            axpy<T>(dkrow[j], ds * scale, qr, D);
            axpy<T>(dqa.data(), ds * scale, krow[j], D);
            dsl[slot[j]] += ds;
          }
          std::copy(dqa.begin(), dqa.end(), dqr);
        }
        std::copy(dsl.begin(), dsl.end(), dbl);
      }
    }
  });
}

BsaShape bsa_shape(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& idx) {
  TORCH_CHECK(q.dim() == 5 && k.dim() == 5 && v.dim() == 5 && idx.dim() == 4, "bsa_cpu: ranks");
  TORCH_CHECK(q.is_contiguous() && k.is_contiguous() && v.is_contiguous() && idx.is_contiguous(),
              "bsa_cpu: inputs must be contiguous");
  TORCH_CHECK(idx.scalar_type() == torch::kInt64, "bsa_cpu: index must be int64");
  BsaShape s{q.size(0), q.size(1), q.size(2), q.size(3), q.size(4), k.size(1), k.size(2), v.size(4), idx.size(3)};
  TORCH_CHECK(idx.size(0) == s.B && idx.size(1) == s.H && idx.size(2) == s.Nq, "bsa_cpu: index shape");
  return s;
}

std::tuple<torch::Tensor, torch::Tensor> bsa_fwd(const torch::Tensor& q, const torch::Tensor& k,
                                                 const torch::Tensor& v, const torch::Tensor& idx,
                                                 const c10::optional<torch::Tensor>& bias,
                                                 const c10::optional<torch::Tensor>& key_mask, double scale) {
  BsaShape s = bsa_shape(q, k, v, idx);
  auto out = torch::empty({s.B, s.Nq, s.Tq, s.H, s.Dv}, q.options());
  auto lse = torch::empty({s.B, s.H, s.Nq, s.Tq}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "bsa_cpu_fwd", [&] {
    bsa_fwd_kernel<scalar_t>(s, q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                             idx.data_ptr<int64_t>(), bias.has_value() ? bias->data_ptr<scalar_t>() : nullptr,
                             key_mask.has_value() ? key_mask->data_ptr<uint8_t>() : nullptr,
                             static_cast<scalar_t>(scale), out.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>());
  });
  return {out, lse};
}

std::vector<torch::Tensor> bsa_bwd(const torch::Tensor& dout, const torch::Tensor& q, const torch::Tensor& k,
                                   const torch::Tensor& v, const torch::Tensor& out, const torch::Tensor& lse,
                                   const torch::Tensor& idx, const c10::optional<torch::Tensor>& bias,
                                   const c10::optional<torch::Tensor>& key_mask, double scale) {
  BsaShape s = bsa_shape(q, k, v, idx);
  TORCH_CHECK(dout.is_contiguous() && out.is_contiguous() && lse.is_contiguous(), "bsa_cpu: contiguous");
  auto dq = torch::empty_like(q);
  auto dk = torch::zeros_like(k);
  auto dv = torch::zeros_like(v);
  auto dbias = torch::empty({s.B, s.H, s.Nq, s.K}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "bsa_cpu_bwd", [&] {
    bsa_bwd_kernel<scalar_t>(s, dout.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
                             v.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(),
                             idx.data_ptr<int64_t>(), bias.has_value() ? bias->data_ptr<scalar_t>() : nullptr,
                             key_mask.has_value() ? key_mask->data_ptr<uint8_t>() : nullptr,
                             static_cast<scalar_t>(scale), dq.data_ptr<scalar_t>(), dk.data_ptr<scalar_t>(),
                             dv.data_ptr<scalar_t>(), dbias.data_ptr<scalar_t>());
  });
  return {dq, dk, dv, dbias};
}

}  // namespace
}  // namespace visionattn_cpu

TORCH_LIBRARY_FRAGMENT(visionattn_cpu, m) {
  m.def(
      "bsa_fwd(Tensor q, Tensor k, Tensor v, Tensor index, Tensor? bias, Tensor? key_mask, float scale) -> "
      "(Tensor, Tensor)");
  m.def(
      "bsa_bwd(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor index, Tensor? bias, "
      "Tensor? key_mask, float scale) -> Tensor[]");
  m.impl("bsa_fwd", c10::DispatchKey::CPU, TORCH_FN(visionattn_cpu::bsa_fwd));
  m.impl("bsa_bwd", c10::DispatchKey::CPU, TORCH_FN(visionattn_cpu::bsa_bwd));
}
