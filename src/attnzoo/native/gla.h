// Pieces shared by the GLA forward (gla_chunk.cpp) and backward (gla_grad.cpp) kernels.
//
// One chunk of c rows of one (batch, head); log gates g [c, K] (<= 0), b_i = g_0 + ... + g_i the
// chunk-local cumulative gates. Every weight is e^{b_i - b_j} (i >= j), per key channel. The
// intra-chunk scores sum_d q_i[d] k_j[d] e^{b_i[d] - b_j[d]} are GEMMs of q_i e^{b_i - r} against
// k_j e^{r - b_j} for a reference r, over a partition of the lower triangle into leaves:
// - a diagonal block whose total gate (its span) is <= 30 uses r = b just before the block, so
//   the factors lie in [e^-30, 1] and [1, e^30] (the upper triangle is then zeroed). r never
//   depends on later rows, so (for one input shape) an output row does not change, not even in
//   its rounding, when later inputs change, unless a later gate changes the partition;
// - a stronger block is halved: two diagonal halves and the off-diagonal block below them, which
//   uses r = b at its last key row, so both factors are <= 1 (always safe).
// The common case is one leaf, the whole chunk with r = 0 (the chunk start): then the gate pass's
// rows q e^{b} and k e^{-b} are the leaf's scaled rows. Weights below e^-60 are exact zeros.
#pragma once

#include <algorithm>
#include <initializer_list>
#include <type_traits>
#include <vector>

#include "kernels.h"

namespace attnzoo::gla {

constexpr double kSpanLimit = 30.0;  // largest block span a diagonal leaf takes
// rows ahead to prefetch in the gate pass (the first pass to touch a chunk's strided rows); at
// T = 32k, 8 took 42 ms, 4 took 49, 24 took 72 and none 54
constexpr int64_t kPrefetch = 8;

// Rows [i0, i1) against rows [j0, j1) (the same rows for a diagonal leaf, else j1 <= i0), with
// reference row r of b (-1: the chunk start, where b = 0).
struct Leaf {
  int64_t i0, i1, j0, j1, r;
  bool diagonal() const { return i0 == j0; }
};

// Per-thread buffers, reused chunk after chunk (C: chunk length, K: key width).
template <typename T>
struct Scratch {
  std::vector<T> b, qe, ke, inv;  // [C, K] cumulative gates, q e^b (or e^b), k e^-b, e^-b
  std::vector<T> qr, kr, x;       // [C, K] a leaf's scaled rows, a product
  std::vector<T> A, P;            // [C, C] scores, do.v scores (backward)
  std::vector<T> last, zero;      // [K] e^{b_last}, zeros
  std::vector<Leaf> leaves;
  Scratch(int64_t C, int64_t K)
      : b(C * K), qe(C * K), ke(C * K), inv(C * K), qr(C * K), kr(C * K), x(C * K), A(C * C),
        P(C * C), last(K), zero(K) {}
};

// A row-major view: row i at p + i * ld.
template <typename T>
struct Rows {
  T* p;
  int64_t ld;
  T* row(int64_t i) const { return p + i * ld; }
  Rows from(int64_t t0) const { return {row(t0), ld}; }  // the rows from token t0 on
  Rows<const std::remove_const_t<T>> as_const() const { return {p, ld}; }
};

// The rows of (batch b, head h) of a [B, T, H, D] tensor (U: T, or const T for an input).
template <typename U>
Rows<U> head_rows(const torch::Tensor& x, int64_t b, int64_t h) {
  return {head_ptr<std::remove_const_t<U>>(x, b, h), x.stride(1)};
}

// S [K, V] <- diag(f) S
template <typename T>
void scale_state(T* S, const T* f, int64_t K, int64_t V) {
  for (int64_t d = 0; d < K; ++d) {
    T* row = S + d * V;
#pragma omp simd
    for (int64_t e = 0; e < V; ++e) row[e] *= f[d];
  }
}

// One row of the gate pass: b = prev + g, qe = q e^b (e^b itself without q), ke = k e^-b, and
// inv = e^-b with kInv. The factors lie in [e^-30, e^30] on one-leaf chunks; other chunks use
// only b and qe (whose factors are <= 1). Unaliased pointers, so that it vectorises.
template <typename T, bool kQ, bool kInv>
inline void gate_row_as(const T* __restrict prev, const T* __restrict g, const T* __restrict q,
                        const T* __restrict k, T* __restrict b, T* __restrict qe,
                        T* __restrict ke, T* __restrict inv, int64_t K) {
#pragma omp simd
  for (int64_t d = 0; d < K; ++d) {
    b[d] = prev[d] + g[d];
    T e, i;
    fast_exp_pair(b[d], e, i);
    qe[d] = kQ ? q[d] * e : e;
    ke[d] = k[d] * i;
    if (kInv) inv[d] = i;
  }
}

// gate_row_as for a q (or null) and an inv (or null)
template <typename T>
inline void gate_row(const T* prev, const T* g, const T* q, const T* k, T* b, T* qe, T* ke,
                     T* inv, int64_t K) {
  if (q == nullptr) {
    gate_row_as<T, false, false>(prev, g, q, k, b, qe, ke, inv, K);
  } else if (inv == nullptr) {
    gate_row_as<T, true, false>(prev, g, q, k, b, qe, ke, inv, K);
  } else {
    gate_row_as<T, true, true>(prev, g, q, k, b, qe, ke, inv, K);
  }
}

// out = alpha x e^{sign (b - r)}, or out += that when accumulate.
template <typename T>
inline void scale_row(const T* __restrict x, const T* __restrict b, const T* __restrict r, T sign,
                      T alpha, bool accumulate, T* __restrict out, int64_t K) {
  if (accumulate) {
#pragma omp simd
    for (int64_t d = 0; d < K; ++d) out[d] += alpha * x[d] * fast_exp(sign * (b[d] - r[d]));
  } else {
#pragma omp simd
    for (int64_t d = 0; d < K; ++d) out[d] = alpha * x[d] * fast_exp(sign * (b[d] - r[d]));
  }
}

// out = alpha x f (elementwise)
template <typename T>
inline void mul_row(const T* __restrict x, const T* __restrict f, T alpha, T* __restrict out,
                    int64_t K) {
#pragma omp simd
  for (int64_t d = 0; d < K; ++d) out[d] = alpha * x[d] * f[d];
}

// The gate pass over a chunk's c rows: b, qe, ke (and inv) as gate_row, then e^{b_last}.
// `ahead` lists further [c, *] inputs (base, row stride) whose rows to prefetch.
template <typename T>
void gate_pass(Rows<const T> q, Rows<const T> k, Rows<const T> g, int64_t c, int64_t K,
               bool with_inv, std::initializer_list<Rows<const T>> ahead, Scratch<T>& w) {
  constexpr int64_t kLine = 64 / static_cast<int64_t>(sizeof(T));  // values per cache line
  for (int64_t i = 0; i < c; ++i) {
    for (int64_t line = 0; line < K; line += kLine) {  // past a tensor's end, a no-op
      if (q.p != nullptr) __builtin_prefetch(q.row(i + kPrefetch) + line);
      __builtin_prefetch(k.row(i + kPrefetch) + line);
      __builtin_prefetch(g.row(i + kPrefetch) + line);
      for (const auto& x : ahead) __builtin_prefetch(x.row(i + kPrefetch) + line);
    }
    gate_row<T>(i == 0 ? w.zero.data() : w.b.data() + (i - 1) * K, g.row(i),
                q.p == nullptr ? nullptr : q.row(i), k.row(i), w.b.data() + i * K,
                w.qe.data() + i * K, w.ke.data() + i * K,
                with_inv ? w.inv.data() + i * K : nullptr, K);
  }
  const T* last = w.b.data() + (c - 1) * K;
  for (int64_t d = 0; d < K; ++d) w.last[d] = fast_exp(last[d]);
}

// Appends the leaves of rows [lo, hi) of the chunk (see the file comment).
template <typename T>
void split(const T* b, int64_t K, int64_t lo, int64_t hi, std::vector<Leaf>& out) {
  const T* last = b + (hi - 1) * K;
  T span = 0;
  for (int64_t d = 0; d < K; ++d) {
    span = std::max(span, (lo > 0 ? b[(lo - 1) * K + d] : T(0)) - last[d]);
  }
  if (hi - lo > 1 && span > static_cast<T>(kSpanLimit)) {
    const int64_t mid = (lo + hi) / 2;
    split(b, K, lo, mid, out);
    out.push_back({mid, hi, lo, mid, mid - 1});
    split(b, K, mid, hi, out);
    return;
  }
  out.push_back({lo, hi, lo, hi, hi - lo == 1 ? lo : lo - 1});
}

// Fills w.leaves for a chunk of c rows; true when it is the one leaf with r = 0.
template <typename T>
bool split_chunk(int64_t c, int64_t K, Scratch<T>& w) {
  w.leaves.clear();
  split(w.b.data(), K, 0, c, w.leaves);
  return w.leaves.size() == 1 && w.leaves[0].r < 0;
}

// A leaf's reference point ([K]).
template <typename T>
const T* reference(const Leaf& leaf, int64_t K, const Scratch<T>& w) {
  return leaf.r < 0 ? w.zero.data() : w.b.data() + leaf.r * K;
}

// x_i e^{sign (b_i - r)} for rows [lo, hi) of x into out (row stride K).
template <typename T>
void scaled_rows(Rows<const T> x, int64_t lo, int64_t hi, const T* r, T sign, int64_t K,
                 const Scratch<T>& w, T* out) {
  for (int64_t i = lo; i < hi; ++i)
    scale_row<T>(x.row(i), w.b.data() + i * K, r, sign, T(1), false, out + i * K, K);
}

// Zeroes the strict upper triangle of rows [lo, hi) x columns [lo, hi) of a [C, C] matrix.
template <typename T>
void zero_upper(T* A, int64_t C, int64_t lo, int64_t hi) {
  for (int64_t i = lo; i < hi; ++i) std::fill(A + i * C + i + 1, A + i * C + hi, T(0));
}

// The chunk's gated scores A[i, j] = sum_d q_i[d] k_j[d] e^{b_i[d] - b_j[d]}, j <= i, else 0.
template <typename T>
void scores(Rows<const T> q, Rows<const T> k, int64_t c, int64_t C, int64_t K, bool one_leaf,
            Scratch<T>& w) {
  T* A = w.A.data();
  if (one_leaf) {
    gemm_rm<T>(false, true, c, c, K, T(1), w.qe.data(), K, w.ke.data(), K, T(0), A, C);
    zero_upper(A, C, 0, c);
    return;
  }
  for (int64_t i = 0; i < c; ++i) std::fill(A + i * C, A + i * C + c, T(0));
  for (const Leaf& leaf : w.leaves) {
    const T* r = reference(leaf, K, w);
    scaled_rows(q, leaf.i0, leaf.i1, r, T(1), K, w, w.qr.data());
    scaled_rows(k, leaf.j0, leaf.j1, r, T(-1), K, w, w.kr.data());
    gemm_rm<T>(false, true, leaf.i1 - leaf.i0, leaf.j1 - leaf.j0, K, T(1),
               w.qr.data() + leaf.i0 * K, K, w.kr.data() + leaf.j0 * K, K, T(0),
               A + leaf.i0 * C + leaf.j0, C);
    if (leaf.diagonal()) zero_upper(A, C, leaf.i0, leaf.i1);
  }
}

// S [K, V] <- diag(e^{b_last}) S + sum_j (k_j e^{b_last - b_j})^T v_j (S = that sum when first).
// Uses (and overwrites) w.ke on one-leaf chunks.
template <typename T>
void update_state(Rows<const T> k, Rows<const T> v, int64_t c, int64_t K, int64_t V,
                  bool one_leaf, bool first, Scratch<T>& w, T* S) {
  const T* el = w.last.data();
  T* kd = w.ke.data();
  if (one_leaf) {  // ke = k e^-b, whose factors are <= e^30 here
    for (int64_t j = 0; j < c; ++j) {
      T* row = kd + j * K;
#pragma omp simd
      for (int64_t d = 0; d < K; ++d) row[d] *= el[d];
    }
  } else {  // ke may hold clamped factors: from k again, with exponents <= 0
    const T* last = w.b.data() + (c - 1) * K;
    scaled_rows(k, 0, c, last, T(-1), K, w, kd);
  }
  if (!first) scale_state(S, el, K, V);
  gemm_rm<T>(true, false, K, V, c, T(1), kd, K, v.p, v.ld, first ? T(0) : T(1), S, V);
}

// The shape and dtype checks of both GLA kernels' entry points.
inline void check_gla(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                      const torch::Tensor& g) {
  check_rows(q, "q");
  check_rows(k, "k");
  check_rows(v, "v");
  check_rows(g, "g");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type() &&
                  q.scalar_type() == g.scalar_type(),
              "q, k, v, g must share a dtype");
  TORCH_CHECK(q.sizes() == k.sizes() && q.sizes() == g.sizes(), "q, k, g must share a shape");
  TORCH_CHECK(v.size(0) == q.size(0) && v.size(1) == q.size(1) && v.size(2) == q.size(2),
              "v must be [B, T, H, V]");
}

}  // namespace attnzoo::gla
