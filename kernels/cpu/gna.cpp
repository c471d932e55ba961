// Fused CPU generalized neighborhood attention (NATTEN >= 0.20 semantics), forward and backward, tiled.
//
// Tensors arrive in the canonical 3-D layout [B, L0, L1, L2, heads, D] (1-D and 2-D calls have leading axes of
// length 1 with kernel 1), contiguous, fp32 or fp64 (the Python wrapper validates and converts).
//
// Query tiles x key tiles: a tile is W queries (one SIMD register of lanes: 16 fp32 with AVX-512, 8 with AVX2 or
// fp64) of one (batch, head, axis-0 position), TA1 x TA2 consecutive queries of one dilation group along axes 1
// and 2 (the shape that minimizes the union of their windows, stride-aware: a k8 s4 tile of 4x4 queries shares one
// window). The union of their key windows is enumerated once; the logits of the whole tile are one small GEMM
// S^T[key][lane] = K . Q^T (register-blocked: 8 keys x W lanes per step, Q^T packed once per tile, K read in place),
// the softmax runs across lanes in registers (max, exp, sum over the tile's keys in L1), and O^T = P^T V is a second
// register-blocked GEMM. Per-lane window membership is a lane bitmask per key (axis-1 mask & axis-2 mask); keys
// whose mask is full (interior tiles of block-sparse strides) skip the select. The forward returns the
// log-sum-exp, from which the backward recomputes P (FlashAttention-2 style): dP^T = V . dO^T, dS = P (dP - D),
// dQ^T = K^T dS^T, and dK/dV/d(rpb)/d(additional KV) as rank-W updates of the tile's keys. Threads: torch's pool
// (at::parallel_for), forward over (batch, head, tile), backward over (batch, head) so that dK/dV/d(rpb) are
// accumulated without races. exp clamps its input at -86 (lanes.h) so masked lanes never produce denormals.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <cstdlib>
#include <vector>

#include "lanes.h"

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

// Where a query/key/value element lies: b * sb + token * st + head * D + c. Heads and channels are dense, the tokens
// of one batch entry share one stride (so q, k and v may be views of one qkv projection, [..., 3, heads, D]).
struct Layout {
  int64_t sb = 0, st = 0;
};

Layout layout_of(const torch::Tensor& t, const char* name) {
  const int64_t H = t.size(4), D = t.size(5);
  TORCH_CHECK((D == 1 || t.stride(5) == 1) && (H == 1 || t.stride(4) == D),
              "gna_cpu: ", name, ": heads and channels must be dense");
  Layout l;
  l.sb = t.stride(0);
  l.st = -1;
  int64_t inner = 1;
  for (int i = 3; i >= 1; --i) {
    if (t.size(i) > 1) {
      TORCH_CHECK(t.stride(i) % inner == 0 && (l.st < 0 || t.stride(i) == l.st * inner),
                  "gna_cpu: ", name, ": the spatial axes must share one token stride");
      l.st = t.stride(i) / inner;
    }
    inner *= t.size(i);
  }
  if (l.st < 0) l.st = H * D;
  TORCH_CHECK(l.st >= H * D, "gna_cpu: ", name, ": tokens overlap");
  TORCH_CHECK(inner * l.st < (int64_t(1) << 31), "gna_cpu: one batch entry must span < 2^31 elements (32-bit lane "
              "offsets)");
  return l;
}

struct Geometry {
  int64_t B, L[3], H, D, Dv, E, R[3], K[3], S[3];
  Axis ax[3];
  Layout lq, lk, lv;
};

Geometry make_geometry(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, at::IntArrayRef ks,
                       at::IntArrayRef st, at::IntArrayRef dil, at::IntArrayRef causal,
                       const c10::optional<torch::Tensor>& ak) {
  TORCH_CHECK(q.dim() == 6 && ks.size() == 3 && st.size() == 3 && dil.size() == 3 && causal.size() == 3,
              "gna_cpu: expects canonical 3-D layout");
  Geometry g;
  g.B = q.size(0);
  g.H = q.size(4);
  g.D = q.size(5);
  g.Dv = v.size(5);
  g.E = ak.has_value() ? ak->size(1) : 0;
  for (int i = 0; i < 3; ++i) {
    g.L[i] = q.size(1 + i);
    g.R[i] = 2 * ks[i] - 1;
    g.K[i] = ks[i];
    g.S[i] = st[i];
    TORCH_CHECK(ks[i] >= 1 && st[i] >= 1 && dil[i] >= 1 && ks[i] * dil[i] <= g.L[i], "gna_cpu: bad geometry");
    g.ax[i] = make_axis(g.L[i], ks[i], st[i], dil[i], causal[i] != 0);
  }
  TORCH_CHECK(g.L[0] * g.L[1] * g.L[2] * g.H * std::max(g.D, g.Dv) < (int64_t(1) << 31),
              "gna_cpu: one batch entry must hold < 2^31 elements (32-bit lane offsets)");
  g.lq = layout_of(q, "query");
  g.lk = layout_of(k, "key");
  g.lv = layout_of(v, "value");
  return g;
}

// The tiles of one axis: TA consecutive queries of one dilation group each (the last tile of a group repeats its
// last query in the lanes past the group, marked invalid); per lane its position and window in the group's
// compressed coordinates (start, count) and its rpb offset.
struct AxisTiles {
  int64_t TA = 1;
  std::vector<int64_t> group;                  // per tile
  std::vector<int64_t> pos, start, cnt, rel;  // per tile * TA + lane
  std::vector<uint8_t> valid;
  int64_t size() const { return static_cast<int64_t>(group.size()); }
};

AxisTiles make_tiles(const Axis& a, int64_t length, int64_t TA) {
  AxisTiles t;
  t.TA = TA;
  const int64_t d = a.dilation;
  for (int64_t g = 0; g < d; ++g) {
    const int64_t lg = (length - g + d - 1) / d;
    for (int64_t cs = 0; cs < lg; cs += TA) {
      t.group.push_back(g);
      for (int64_t i = 0; i < TA; ++i) {
        const int64_t c = std::min(cs + i, lg - 1), p = g + c * d;
        t.pos.push_back(p);
        t.start.push_back((a.first[p] - g) / d);
        t.cnt.push_back(a.count[p]);
        t.rel.push_back(a.rel[p]);
        t.valid.push_back(cs + i < lg);
      }
    }
  }
  return t;
}

// Keys (per lane) of all tiles of one axis summed: the union width of each tile's windows.
int64_t union_sum(const AxisTiles& t) {
  int64_t sum = 0;
  for (int64_t i = 0; i < t.size(); ++i) {
    int64_t lo = INT64_MAX, hi = 0;
    for (int64_t l = i * t.TA; l < (i + 1) * t.TA; ++l) {
      lo = std::min(lo, t.start[l]);
      hi = std::max(hi, t.start[l] + t.cnt[l]);
    }
    sum += hi - lo;
  }
  return sum;
}

// Lanes along axis 1 (the rest along axis 2) minimizing the work of the call: a tile's keys are the product of its
// axis-1 and axis-2 union widths, so the total is the product of the two axes' sums (partial tiles, clamped windows
// at the borders and stride groups included); ties go to fewer tiles.
int64_t choose_ta1(const Geometry& g, int64_t W) {
  if (g.L[1] == 1) return 1;
  int64_t best = 1;
  double best_cost = 1e300;
  for (int64_t ta1 = 1; ta1 <= W; ta1 *= 2) {
    const AxisTiles t1 = make_tiles(g.ax[1], g.L[1], ta1), t2 = make_tiles(g.ax[2], g.L[2], W / ta1);
    const double cost = double(union_sum(t1)) * double(union_sum(t2)) + 1e-3 * double(t1.size() * t2.size());
    if (cost < best_cost) {
      best_cost = cost;
      best = ta1;
    }
  }
  return best;
}

struct Tiling {
  AxisTiles t1, t2;
  int64_t TA1, TA2, ntiles;  // tiles per (batch, head): L0 * |t1| * |t2|
};

Tiling make_tiling(const Geometry& g, int64_t W) {
  Tiling t;
  t.TA1 = choose_ta1(g, W);
  t.TA2 = W / t.TA1;
  t.t1 = make_tiles(g.ax[1], g.L[1], t.TA1);
  t.t2 = make_tiles(g.ax[2], g.L[2], t.TA2);
  t.ntiles = g.L[0] * t.t1.size() * t.t2.size();
  return t;
}

// ---- register-blocked micro-kernels over lanes --------------------------------------------------------------------

// s[j * W + lane] = sum_c qt[c * W + lane] * rows[j][c], j < NK.
template <class V, int NK>
inline void qk_n(const typename V::T* qt, int64_t C, const typename V::T* const* rows, typename V::T* s) {
  using T = typename V::T;
  typename V::R acc[NK];
  const T* r[NK];
  for (int i = 0; i < NK; ++i) {
    acc[i] = V::zero();
    r[i] = rows[i];
  }
  for (int64_t c = 0; c < C; ++c) {
    const auto qv = V::load(qt + c * V::W);
    for (int i = 0; i < NK; ++i) acc[i] = V::fmadd(qv, V::set1(r[i][c]), acc[i]);
  }
  for (int i = 0; i < NK; ++i) V::store(s + i * V::W, acc[i]);
}

template <class V>
void qk(const typename V::T* qt, int64_t C, const typename V::T* const* rows, int64_t n, typename V::T* s) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) qk_n<V, 8>(qt, C, rows + j, s + j * V::W);
  const typename V::T* const* r = rows + j;
  typename V::T* o = s + j * V::W;
  switch (n - j) {
    case 7: qk_n<V, 7>(qt, C, r, o); break;
    case 6: qk_n<V, 6>(qt, C, r, o); break;
    case 5: qk_n<V, 5>(qt, C, r, o); break;
    case 4: qk_n<V, 4>(qt, C, r, o); break;
    case 3: qk_n<V, 3>(qt, C, r, o); break;
    case 2: qk_n<V, 2>(qt, C, r, o); break;
    case 1: qk_n<V, 1>(qt, C, r, o); break;
    default: break;
  }
}

// ot[(c0 + i) * W + lane] += sum_j p[j * W + lane] * rows[j][c0 + i], i < NC.
template <class V, int NC>
inline void pv_n(const typename V::T* p, const typename V::T* const* rows, int64_t n, int64_t c0, typename V::T* ot) {
  typename V::R acc[NC];
  for (int i = 0; i < NC; ++i) acc[i] = V::load(ot + (c0 + i) * V::W);
  for (int64_t j = 0; j < n; ++j) {
    const auto pj = V::load(p + j * V::W);
    const typename V::T* r = rows[j] + c0;
    for (int i = 0; i < NC; ++i) acc[i] = V::fmadd(pj, V::set1(r[i]), acc[i]);
  }
  for (int i = 0; i < NC; ++i) V::store(ot + (c0 + i) * V::W, acc[i]);
}

template <class V>
void pv(const typename V::T* p, const typename V::T* const* rows, int64_t n, int64_t C, typename V::T* ot) {
  int64_t c = 0;
  for (; c + 8 <= C; c += 8) pv_n<V, 8>(p, rows, n, c, ot);
  switch (C - c) {
    case 7: pv_n<V, 7>(p, rows, n, c, ot); break;
    case 6: pv_n<V, 6>(p, rows, n, c, ot); break;
    case 5: pv_n<V, 5>(p, rows, n, c, ot); break;
    case 4: pv_n<V, 4>(p, rows, n, c, ot); break;
    case 3: pv_n<V, 3>(p, rows, n, c, ot); break;
    case 2: pv_n<V, 2>(p, rows, n, c, ot); break;
    case 1: pv_n<V, 1>(p, rows, n, c, ot); break;
    default: break;
  }
}

// dst[j][c + i * W + x] += alpha * sum_lane coef[j * W + lane] * src[lane][c + i * W + x], j < NJ, i < NC: NJ x NC
// accumulators, each source row chunk loaded once per lane for NJ keys.
template <class V, int NJ, int NC>
inline void rank_n(const typename V::T* coef, typename V::T* const* dst, const typename V::T* const* src, int64_t c,
                   typename V::R av) {
  constexpr int W = V::W;
  typename V::R acc[NJ][NC];
  for (int j = 0; j < NJ; ++j)
    for (int i = 0; i < NC; ++i) acc[j][i] = V::zero();
  for (int q = 0; q < W; ++q) {
    typename V::R sv[NC];
    for (int i = 0; i < NC; ++i) sv[i] = V::load(src[q] + c + i * W);
    for (int j = 0; j < NJ; ++j) {
      const auto cf = V::set1(coef[j * W + q]);
      for (int i = 0; i < NC; ++i) acc[j][i] = V::fmadd(cf, sv[i], acc[j][i]);
    }
  }
  for (int j = 0; j < NJ; ++j)
    for (int i = 0; i < NC; ++i) V::store(dst[j] + c + i * W, V::fmadd(acc[j][i], av, V::load(dst[j] + c + i * W)));
}

template <class V, int NJ>
inline void rank_cols(const typename V::T* coef, typename V::T* const* dst, const typename V::T* const* src,
                      int64_t Cv, typename V::R av) {
  constexpr int W = V::W;
  int64_t c = 0;
  for (; c + 2 * W <= Cv; c += 2 * W) rank_n<V, NJ, 2>(coef, dst, src, c, av);
  if (c < Cv) rank_n<V, NJ, 1>(coef, dst, src, c, av);
}

// dst[j][c] += alpha * sum_lane coef[j * W + lane] * src[lane][c] for j < n, c < C (dK, dV of the tile's keys).
template <class V>
void rank_update(const typename V::T* coef, typename V::T* const* dst, int64_t n, const typename V::T* const* src,
                 int64_t C, typename V::T alpha) {
  using T = typename V::T;
  constexpr int W = V::W;
  const int64_t Cv = C - C % W;
  const auto av = V::set1(alpha);
  if (Cv > 0) {
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) rank_cols<V, 4>(coef + j * W, dst + j, src, Cv, av);
    switch (n - j) {
      case 3: rank_cols<V, 3>(coef + j * W, dst + j, src, Cv, av); break;
      case 2: rank_cols<V, 2>(coef + j * W, dst + j, src, Cv, av); break;
      case 1: rank_cols<V, 1>(coef + j * W, dst + j, src, Cv, av); break;
      default: break;
    }
  }
  if (Cv < C) {
    for (int64_t jj = 0; jj < n; ++jj) {
      for (int64_t c = Cv; c < C; ++c) {
        T acc = 0;
        for (int q = 0; q < W; ++q) acc += coef[jj * W + q] * src[q][c];
        dst[jj][c] += alpha * acc;
      }
    }
  }
}

// ---- one tile -----------------------------------------------------------------------------------------------------

template <class V>
struct Tile {
  using T = typename V::T;
  static constexpr int W = V::W;
  // lanes
  int64_t qi[W];              // flat query index (L0, L1, L2)
  int64_t lo1[W], hi1[W], lo2[W], hi2[W], rel1[W], rel2[W];
  uint32_t valid = 0, all = 0;
  int64_t c0 = 0, rel0 = 0, UW1 = 0, UW2 = 0, nwin = 0, n = 0;  // n: keys of the union (+ additional keys)
  std::vector<int64_t> tok;   // window keys of the union: flat token index
  std::vector<uint32_t> mask;  // per key: lanes whose window holds it
  std::vector<uint32_t> m1, m2;

  // Geometry of tile `t` of a (batch, head): lanes, union of windows, per-key lane masks.
  void build(const Geometry& g, const Tiling& tl, int64_t t) {
    const int64_t n2 = tl.t2.size(), n1 = tl.t1.size();
    const int64_t it2 = t % n2, it1 = (t / n2) % n1, i0 = t / (n2 * n1);
    const AxisTiles &A1 = tl.t1, &A2 = tl.t2;
    const int64_t g1 = A1.group[it1], g2 = A2.group[it2];
    const int64_t d0 = g.ax[0].dilation, d1 = g.ax[1].dilation, d2 = g.ax[2].dilation;
    int64_t s1 = INT64_MAX, e1 = 0, s2 = INT64_MAX, e2 = 0;
    valid = 0;
    all = W == 32 ? 0xffffffffu : ((1u << W) - 1u);
    for (int q = 0; q < W; ++q) {
      const int64_t a1 = it1 * tl.TA1 + q / tl.TA2, a2 = it2 * tl.TA2 + q % tl.TA2;
      qi[q] = (i0 * g.L[1] + A1.pos[a1]) * g.L[2] + A2.pos[a2];
      lo1[q] = A1.start[a1];
      hi1[q] = A1.start[a1] + A1.cnt[a1];
      lo2[q] = A2.start[a2];
      hi2[q] = A2.start[a2] + A2.cnt[a2];
      rel1[q] = A1.rel[a1];
      rel2[q] = A2.rel[a2];
      if (A1.valid[a1] && A2.valid[a2]) valid |= 1u << q;
      s1 = std::min(s1, lo1[q]);
      e1 = std::max(e1, hi1[q]);
      s2 = std::min(s2, lo2[q]);
      e2 = std::max(e2, hi2[q]);
    }
    UW1 = e1 - s1;
    UW2 = e2 - s2;
    for (int q = 0; q < W; ++q) {
      lo1[q] -= s1;
      hi1[q] -= s1;
      lo2[q] -= s2;
      hi2[q] -= s2;
    }
    m1.assign(UW1, 0u);
    m2.assign(UW2, 0u);
    for (int q = 0; q < W; ++q) {
      for (int64_t u = lo1[q]; u < hi1[q]; ++u) m1[u] |= 1u << q;
      for (int64_t u = lo2[q]; u < hi2[q]; ++u) m2[u] |= 1u << q;
    }
    const Axis& a0 = g.ax[0];
    c0 = a0.count[i0];
    rel0 = a0.rel[i0];
    nwin = c0 * UW1 * UW2;
    n = nwin + g.E;
    tok.resize(nwin);
    mask.resize(n);
    int64_t j = 0;
    for (int64_t t0 = 0; t0 < c0; ++t0) {
      const int64_t p0 = a0.first[i0] + t0 * d0;
      for (int64_t u1 = 0; u1 < UW1; ++u1) {
        const int64_t base = (p0 * g.L[1] + g1 + (s1 + u1) * d1) * g.L[2] + g2 + s2 * d2;
        for (int64_t u2 = 0; u2 < UW2; ++u2, ++j) {
          tok[j] = base + u2 * d2;
          mask[j] = m1[u1] & m2[u2];
        }
      }
    }
    for (int64_t e = 0; e < g.E; ++e) mask[nwin + e] = all;
  }

  // What the rpb of the tile's keys depends on (besides the head): interior tiles share it.
  void signature(std::vector<int64_t>& sig) const {
    sig.assign({c0, rel0, UW1, UW2});
    for (int q = 0; q < W; ++q) sig.insert(sig.end(), {lo1[q], hi1[q], lo2[q], hi2[q], rel1[q], rel2[q]});
  }

  // Calls f(lane, key index j, rpb index) over each lane's window (rpb flat index within a head).
  template <class F>
  void for_window(const Geometry& g, uint32_t lanes, F&& f) const {
    for (int q = 0; q < W; ++q) {
      if (!((lanes >> q) & 1u)) continue;
      const int64_t c1 = hi1[q] - lo1[q], c2 = hi2[q] - lo2[q];
      for (int64_t t0 = 0; t0 < c0; ++t0) {
        for (int64_t t1 = 0; t1 < c1; ++t1) {
          const int64_t j = (t0 * UW1 + lo1[q] + t1) * UW2 + lo2[q];
          const int64_t r = ((rel0 + t0) * g.R[1] + rel1[q] + t1) * g.R[2] + rel2[q];
          for (int64_t t2 = 0; t2 < c2; ++t2) f(q, j + t2, r + t2);
        }
      }
    }
  }
};

// The tiles of a call, built once and shared by every (batch, head) when their index lists stay small (64 MiB at
// most; VISIONATTN_GNA_TILE_BYTES overrides the bound, for tests); else each thread builds its tile per task.
inline int64_t max_tile_bytes() {
  const char* env = std::getenv("VISIONATTN_GNA_TILE_BYTES");
  return env && *env ? std::atoll(env) : int64_t(64) << 20;
}

template <class V>
struct TileSet {
  std::vector<Tile<V>> tiles;
  TileSet(const Geometry& g, const Tiling& tl) {
    int64_t per = g.K[0] + g.E;  // bound of one tile's keys: k0 x (k + TA + s) per axis
    per *= (g.K[1] + tl.TA1 + g.S[1]) * (g.K[2] + tl.TA2 + g.S[2]);
    if (tl.ntiles * per * int64_t(sizeof(int64_t) + sizeof(uint32_t)) > max_tile_bytes()) return;
    tiles.resize(tl.ntiles);
    at::parallel_for(0, tl.ntiles, 16, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) tiles[t].build(g, tl, t);
    });
  }
  const Tile<V>& get(const Geometry& g, const Tiling& tl, int64_t t, Tile<V>& scratch) const {
    if (!tiles.empty()) return tiles[t];
    scratch.build(g, tl, t);
    return scratch;
  }
};

// rpb of a tile as a [key][lane] block, rebuilt only when the tile geometry or the head changes.
template <class V>
struct BiasCache {
  int64_t h = -1;
  std::vector<int64_t> sig, cur;
  std::vector<typename V::T> val;
};

template <class V>
void add_bias(const Geometry& g, const Tile<V>& tile, const typename V::T* rb, int64_t h, BiasCache<V>& c,
              typename V::T* s) {
  constexpr int W = V::W;
  tile.signature(c.cur);
  if (h != c.h || c.cur != c.sig) {
    c.h = h;
    c.sig = c.cur;
    c.val.assign(tile.nwin * W, typename V::T(0));
    typename V::T* bv = c.val.data();
    tile.for_window(g, tile.all, [&](int l, int64_t j, int64_t r) { bv[j * W + l] = rb[r]; });
  }
  const typename V::T* bv = c.val.data();
  for (int64_t j = 0; j < tile.nwin; ++j) V::store(s + j * W, V::add(V::load(s + j * W), V::load(bv + j * W)));
}

// d(rpb) of a run of tiles of one geometry, summed as a [key][lane] block (lanes outside a window hold zeros).
template <class V>
struct BiasGrad {
  std::vector<int64_t> sig;
  Tile<V> tile;
  typename V::T* drb = nullptr;
  std::vector<typename V::T> acc;
  void flush(const Geometry& g) {
    if (!drb) return;
    const typename V::T* a = acc.data();
    typename V::T* d = drb;
    tile.for_window(g, tile.all, [&](int l, int64_t j, int64_t r) { d[r] += a[j * V::W + l]; });
    drb = nullptr;
  }
};

template <class V>
void fwd_kernel(const Geometry& g, const typename V::T* q, const typename V::T* k, const typename V::T* v,
                const typename V::T* rpb, const typename V::T* ak, const typename V::T* av, typename V::T scale,
                typename V::T* out, typename V::T* lse) {
  using T = typename V::T;
  constexpr int W = V::W;
  const int64_t H = g.H, D = g.D, Dv = g.Dv, E = g.E;
  const int64_t N = g.L[0] * g.L[1] * g.L[2];
  const int64_t RV = g.R[0] * g.R[1] * g.R[2];
  const Tiling tl = make_tiling(g, W);
  const int64_t tasks = g.B * H * tl.ntiles;
  const TileSet<V> tset(g, tl);
  at::parallel_for(0, tasks, 4, [&](int64_t begin, int64_t end) {
    Tile<V> scratch;
    BiasCache<V> bias;
    std::vector<T> qt(D * W), ot(Dv * W), s;
    std::vector<const T*> krow, vrow;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t t = task % tl.ntiles, bh = task / tl.ntiles, h = bh % H, b = bh / H;
      const Tile<V>& tile = tset.get(g, tl, t, scratch);
      const int64_t n = tile.n, nwin = tile.nwin;
      krow.resize(n);
      vrow.resize(n);
      s.resize(n * W);
      const T* kb = k + b * g.lk.sb + h * D;
      const T* vb = v + b * g.lv.sb + h * Dv;
      for (int64_t j = 0; j < nwin; ++j) {
        krow[j] = kb + tile.tok[j] * g.lk.st;
        vrow[j] = vb + tile.tok[j] * g.lv.st;
      }
      for (int64_t e = 0; e < E; ++e) {
        krow[nwin + e] = ak + ((b * E + e) * H + h) * D;
        vrow[nwin + e] = av + ((b * E + e) * H + h) * Dv;
      }
      alignas(64) int32_t qoff[W], ooff[W];  // lane rows relative to the (batch, head) base
      for (int l = 0; l < W; ++l) {
        qoff[l] = static_cast<int32_t>(tile.qi[l] * g.lq.st);
        ooff[l] = static_cast<int32_t>(tile.qi[l] * H * Dv);
      }
      const T* qb = q + b * g.lq.sb + h * D;
      const auto sv = V::set1(scale);
      to_lanes<V>(qb, qoff, D, sv, qt.data());
      qk<V>(qt.data(), D, krow.data(), n, s.data());
      if (rpb) add_bias<V>(g, tile, rpb + h * RV, h, bias, s.data());
      const auto ninf = V::set1(-std::numeric_limits<T>::infinity());
      auto mx = ninf;
      for (int64_t j = 0; j < n; ++j) {
        auto x = V::load(s.data() + j * W);
        if (tile.mask[j] != tile.all) {
          x = V::select(tile.mask[j], x, ninf);
          V::store(s.data() + j * W, x);
        }
        mx = V::max(mx, x);
      }
      auto sum = V::zero();
      const auto zero = V::zero();
      for (int64_t j = 0; j < n; ++j) {
        auto p = V::exp(V::sub(V::load(s.data() + j * W), mx));
        if (tile.mask[j] != tile.all) p = V::select(tile.mask[j], p, zero);
        V::store(s.data() + j * W, p);
        sum = V::add(sum, p);
      }
      std::fill(ot.begin(), ot.end(), T(0));
      pv<V>(s.data(), vrow.data(), n, Dv, ot.data());
      alignas(64) T m_[W], l_[W];
      V::store(m_, mx);
      V::store(l_, sum);
      const auto inv = V::div(V::set1(T(1)), sum);
      T* ob = out + b * N * H * Dv + h * Dv;
      from_lanes<V>(ot.data(), inv, Dv, ob, ooff, tile.valid);
      for (int l = 0; l < W; ++l) {
        if ((tile.valid >> l) & 1u) lse[(b * H + h) * N + tile.qi[l]] = m_[l] + std::log(l_[l]);
      }
    }
  });
}

template <class V>
void bwd_kernel(const Geometry& g, const typename V::T* dout, const typename V::T* q, const typename V::T* k,
                const typename V::T* v, const typename V::T* out, const typename V::T* lse, const typename V::T* rpb,
                const typename V::T* ak, const typename V::T* av, typename V::T scale, typename V::T* dq,
                typename V::T* dk, typename V::T* dv, typename V::T* drpb, typename V::T* dak, typename V::T* dav) {
  using T = typename V::T;
  constexpr int W = V::W;
  const int64_t H = g.H, D = g.D, Dv = g.Dv, E = g.E;
  const int64_t N = g.L[0] * g.L[1] * g.L[2];
  const int64_t RV = g.R[0] * g.R[1] * g.R[2];
  const Tiling tl = make_tiling(g, W);
  const TileSet<V> tset(g, tl);
  at::parallel_for(0, g.B * H, 1, [&](int64_t begin, int64_t end) {
    Tile<V> scratch;
    BiasCache<V> bias;
    BiasGrad<V> dbias;
    std::vector<T> qt(D * W), dot_(Dv * W), ot(Dv * W), dqt(D * W), s, dp;
    std::vector<const T*> krow, vrow, qrow(W), dorow(W);
    std::vector<T*> dkrow, dvrow;
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t h = bh % H, b = bh / H;
      const T* kb = k + b * g.lk.sb + h * D;
      const T* vb = v + b * g.lv.sb + h * Dv;
      T* dkb = dk + b * N * H * D + h * D;
      T* dvb = dv + b * N * H * Dv + h * Dv;
      const T* rb = rpb ? rpb + h * RV : nullptr;
      T* drb = drpb ? drpb + (b * H + h) * RV : nullptr;
      for (int64_t t = 0; t < tl.ntiles; ++t) {
        const Tile<V>& tile = tset.get(g, tl, t, scratch);
        const int64_t n = tile.n, nwin = tile.nwin;
        const uint32_t valid = tile.valid;
        krow.resize(n);
        vrow.resize(n);
        dkrow.resize(n);
        dvrow.resize(n);
        s.resize(n * W);
        dp.resize(n * W);
        for (int64_t j = 0; j < nwin; ++j) {
          krow[j] = kb + tile.tok[j] * g.lk.st;
          vrow[j] = vb + tile.tok[j] * g.lv.st;
          dkrow[j] = dkb + tile.tok[j] * H * D;
          dvrow[j] = dvb + tile.tok[j] * H * Dv;
        }
        for (int64_t e = 0; e < E; ++e) {
          const int64_t er = (b * E + e) * H + h;
          krow[nwin + e] = ak + er * D;
          vrow[nwin + e] = av + er * Dv;
          dkrow[nwin + e] = dak + er * D;
          dvrow[nwin + e] = dav + er * Dv;
        }
        alignas(64) T lse_[W];
        alignas(64) int32_t qoff[W], dqoff[W], ooff[W];
        for (int l = 0; l < W; ++l) {
          const int64_t row = (b * N + tile.qi[l]) * H + h;
          qrow[l] = q + b * g.lq.sb + tile.qi[l] * g.lq.st + h * D;
          dorow[l] = dout + row * Dv;
          qoff[l] = static_cast<int32_t>(tile.qi[l] * g.lq.st);
          dqoff[l] = static_cast<int32_t>(tile.qi[l] * H * D);
          ooff[l] = static_cast<int32_t>(tile.qi[l] * H * Dv);
          lse_[l] = lse[(b * H + h) * N + tile.qi[l]];
        }
        const T* qb = q + b * g.lq.sb + h * D;
        const T* gb = dout + b * N * H * Dv + h * Dv;
        const T* ob = out + b * N * H * Dv + h * Dv;
        const auto sv = V::set1(scale);
        const auto one = V::set1(T(1));
        to_lanes<V>(qb, qoff, D, sv, qt.data());
        to_lanes<V>(gb, ooff, Dv, one, dot_.data());
        to_lanes<V>(ob, ooff, Dv, one, ot.data());
        auto di = V::zero();
        for (int64_t c = 0; c < Dv; ++c) di = V::fmadd(V::load(dot_.data() + c * W), V::load(ot.data() + c * W), di);
        qk<V>(qt.data(), D, krow.data(), n, s.data());
        qk<V>(dot_.data(), Dv, vrow.data(), n, dp.data());
        if (rb) add_bias<V>(g, tile, rb, h, bias, s.data());
        const auto lv = V::load(lse_), dv_ = di, zero = V::zero();
        for (int64_t j = 0; j < n; ++j) {
          const uint32_t m = tile.mask[j] & valid;
          auto p = V::exp(V::sub(V::load(s.data() + j * W), lv));
          if (m != tile.all) p = V::select(m, p, zero);
          V::store(s.data() + j * W, p);
          V::store(dp.data() + j * W, V::mul(p, V::sub(V::load(dp.data() + j * W), dv_)));
        }
        if (drb) {  // dS summed per tile geometry; scattered into d(rpb) when the geometry changes
          if (dbias.drb != drb || bias.sig != dbias.sig) {
            dbias.flush(g);
            dbias.sig = bias.sig;
            dbias.tile = tile;
            dbias.drb = drb;
            dbias.acc.assign(n * W, T(0));
          }
          T* da = dbias.acc.data();
          const T* dsp = dp.data();
          for (int64_t j = 0; j < nwin; ++j) V::store(da + j * W, V::add(V::load(da + j * W), V::load(dsp + j * W)));
        }
        std::fill(dqt.begin(), dqt.end(), T(0));
        pv<V>(dp.data(), krow.data(), n, D, dqt.data());
        T* dqb = dq + b * N * H * D + h * D;
        from_lanes<V>(dqt.data(), sv, D, dqb, dqoff, valid);
        rank_update<V>(dp.data(), dkrow.data(), n, qrow.data(), D, scale);
        rank_update<V>(s.data(), dvrow.data(), n, dorow.data(), Dv, T(1));
      }
    }
    dbias.flush(g);
  });
}

template <typename T>
struct Lanes {
  using type = VecG<T, 8>;
};
#if defined(__AVX512F__)
template <>
struct Lanes<float> {
  using type = VecF16;
};
template <>
struct Lanes<double> {
  using type = VecD8;
};
#elif defined(__AVX2__)
template <>
struct Lanes<float> {
  using type = VecF8;
};
#endif

std::tuple<torch::Tensor, torch::Tensor> gna_fwd(const torch::Tensor& q, const torch::Tensor& k,
                                                 const torch::Tensor& v, at::IntArrayRef ks, at::IntArrayRef st,
                                                 at::IntArrayRef dil, at::IntArrayRef causal,
                                                 const c10::optional<torch::Tensor>& rpb, double scale,
                                                 const c10::optional<torch::Tensor>& ak,
                                                 const c10::optional<torch::Tensor>& av) {
  // q, k, v: any token stride (layout_of); everything else contiguous
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(), "gna_cpu: dtypes differ");
  TORCH_CHECK(q.sizes() == k.sizes() && v.dim() == 6, "gna_cpu: shapes");
  Geometry g = make_geometry(q, k, v, ks, st, dil, causal, ak);
  auto out = torch::empty({g.B, g.L[0], g.L[1], g.L[2], g.H, g.Dv}, q.options());
  auto lse = torch::empty({g.B, g.H, g.L[0] * g.L[1] * g.L[2]}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "gna_cpu_fwd", [&] {
    using Vec = typename Lanes<scalar_t>::type;
    fwd_kernel<Vec>(g, q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
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
  TORCH_CHECK(dout.is_contiguous() && out.is_contiguous() && lse.is_contiguous(),
              "gna_cpu: grad_out, out and lse must be contiguous");
  Geometry g = make_geometry(q, k, v, ks, st, dil, causal, ak);
  auto dq = torch::empty(q.sizes(), q.options());  // contiguous whatever the inputs' strides
  auto dk = torch::zeros(k.sizes(), k.options());
  auto dv = torch::zeros(v.sizes(), v.options());
  const int64_t RV = g.R[0] * g.R[1] * g.R[2];
  torch::Tensor drpb_part = rpb.has_value() ? torch::zeros({g.B, g.H, RV}, q.options()) : torch::Tensor();
  torch::Tensor dak = ak.has_value() ? torch::zeros_like(*ak) : torch::Tensor();
  torch::Tensor dav = av.has_value() ? torch::zeros_like(*av) : torch::Tensor();
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "gna_cpu_bwd", [&] {
    using Vec = typename Lanes<scalar_t>::type;
    bwd_kernel<Vec>(g, dout.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
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
