// Chunked causal gated linear attention (GLA), fused on the CPU: the forward pass.
//
// For one (batch, head), log gates g_t [K] (<= 0), state S [K, V]:
//   S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t,   o_t = scale * q_t S_t.
// Per chunk of c rows, with b_i = g_0 + ... + g_i (within the chunk, per key channel):
//   o_i = scale [ sum_{j<=i} ((q_i * e^{b_i - b_j}) . k_j) v_j + (q_i * e^{b_i}) S ]
//   S  <- diag(e^{b_{c-1}}) S + sum_j (k_j * e^{b_{c-1} - b_j})^T v_j
// The intra-chunk scores are GEMMs of q_i e^{b_i - r} against k_j e^{r - b_j} for a reference r:
// - a diagonal block whose total gate (its span) is <= 30 uses r = b just before the block, so
//   the factors lie in [e^-30, 1] and [1, e^30]; the upper triangle is then zeroed. r never
//   depends on later rows, so (for one input shape) an output row does not change, not even in
//   its rounding, when later inputs change, unless a later gate changes which blocks are halved;
// - a stronger block is halved: two diagonal halves and the off-diagonal block below them, which
//   uses r = b at the last key row, so both factors are <= 1 (always safe).
// Every other exponent (e^{b_i}, e^{b_{c-1} - b_j}) is <= 0; weights below e^-60 are exact zeros.
// When the whole chunk is one block (span <= 30, the common case; r = 0) the scaled rows also
// give e^{b_i} q_i for the read-out and e^{b_{c-1}} (k_j / e^{b_j}) for the update: c*K
// exponentials per chunk instead of 4*c*K.
// So long sequences with strong gates stay finite. (B, H) pairs run on torch's threads
// (attnzoo::scan_heads).
#include <algorithm>
#include <vector>

#include "kernels.h"

namespace {

using attnzoo::check_rows;
using attnzoo::fast_exp;
using attnzoo::gemm_rm;
using attnzoo::head_ptr;
using attnzoo::scan_heads;

constexpr double kSpanLimit = 30.0;  // largest block span the one-GEMM diagonal form takes
// rows ahead to prefetch; at T = 32k, 8 took 42 ms, 4 took 49, 24 took 72 and none 54
constexpr int64_t kPrefetch = 8;

template <typename T>
struct GlaScratch {
  std::vector<T> b, qt, kt, A;  // [C, K] cumulative gates, [C, K] scaled q, k rows, [C, C]
  std::vector<T> r, e, zero;    // [K] a block's reference point, [K] e^{b_last}, [K] zeros
  GlaScratch(int64_t C, int64_t K)
      : b(C * K), qt(C * K), kt(C * K), A(C * C), r(K), e(K), zero(K) {}
};

struct GlaStrides {
  int64_t q, k, v, g, o;  // elements between consecutive tokens
};

// One row of the gate pass: b = prev + g, qo = q e^b, ko = k e^-b (the factors lie in
// [e^-30, e^30] when the chunk is one block; otherwise these rows are not used). Unaliased
// pointers, so that it vectorises.
template <typename T>
inline void gate_row(const T* __restrict prev, const T* __restrict g, const T* __restrict q,
                     const T* __restrict k, T* __restrict b, T* __restrict qo,
                     T* __restrict ko, int64_t K) {
#pragma omp simd
  for (int64_t d = 0; d < K; ++d) {
    b[d] = prev[d] + g[d];
    T e, inv;
    attnzoo::fast_exp_pair(b[d], e, inv);
    qo[d] = q[d] * e;
    ko[d] = k[d] * inv;
  }
}

// out = x e^{sign (b - r)}
template <typename T>
inline void scale_row(const T* __restrict x, const T* __restrict b, const T* __restrict r, T sign,
                      T* __restrict out, int64_t K) {
#pragma omp simd
  for (int64_t d = 0; d < K; ++d) out[d] = x[d] * fast_exp(sign * (b[d] - r[d]));
}

template <typename T>
class GlaScan {
  static constexpr int64_t kLine = 64 / static_cast<int64_t>(sizeof(T));  // values per cache line

 public:
  GlaScan(const T* q, const T* k, const T* v, const T* g, T* o, int64_t len, int64_t K, int64_t V,
          GlaStrides st, double scale, int64_t C)
      : q_(q), k_(k), v_(v), g_(g), o_(o), len_(len), K_(K), V_(V), st_(st), scale_(scale),
        C_(C), S_(K * V) {}

  int64_t chunks() const { return (len_ + C_ - 1) / C_; }

  void chunk(int64_t step, GlaScratch<T>& w) {
    const int64_t t0 = step * C_, K = K_, V = V_, C = C_;
    const int64_t c = std::min(C, len_ - t0);
    const T* qc = q_ + t0 * st_.q;
    const T* kc = k_ + t0 * st_.k;
    const T* vc = v_ + t0 * st_.v;
    const T* gc = g_ + t0 * st_.g;
    T* oc = o_ + t0 * st_.o;
    T* b = w.b.data();
    T* A = w.A.data();
    T* S = S_.data();
    // One pass builds the cumulative gates b and, for the common case, the scaled rows: the
    // whole chunk's span is <= 30 and its start (r = 0) is the reference point, so
    // Q_i = q_i e^{b_i} serves the scores and the read-out and K_j = k_j / e^{b_j} the scores and
    // (times e^{b_last}) the update: c*K exponentials per chunk instead of 4*c*K. When the span
    // turns out larger, the rows are rebuilt block by block (diag) and these are ignored.
    T* qt = w.qt.data();
    T* kt = w.kt.data();
    for (int64_t i = 0; i < c; ++i) {
      const T* gi = gc + i * st_.g;
      const T* prev = i == 0 ? w.zero.data() : b + (i - 1) * K;
      const T* qs = qc + i * st_.q;
      const T* ks = kc + i * st_.k;
      T* bi = b + i * K;
      T* qo = qt + i * K;
      T* ko = kt + i * K;
      // this pass is the first to touch the chunk's strided rows and was memory-latency bound:
      // ask for the rows kPrefetch ahead (past the tensor's end a prefetch is a no-op)
      for (int64_t line = 0; line < K; line += kLine) {
        __builtin_prefetch(qs + kPrefetch * st_.q + line);
        __builtin_prefetch(ks + kPrefetch * st_.k + line);
        __builtin_prefetch(gi + kPrefetch * st_.g + line);
        __builtin_prefetch(vc + (i + kPrefetch) * st_.v + line);
      }
      gate_row(prev, gi, qs, ks, bi, qo, ko, K);
    }
    const T* last = b + (c - 1) * K;
    T span = 0;
    for (int64_t d = 0; d < K; ++d) span = std::max(span, -last[d]);
    const bool one_block = span <= static_cast<T>(kSpanLimit);
    if (one_block) {
      gemm_rm<T>(false, true, c, c, K, T(1), qt, K, kt, K, T(0), A, C);
      for (int64_t i = 0; i < c; ++i) std::fill(A + i * C + i + 1, A + i * C + c, T(0));
    } else {
      for (int64_t i = 0; i < c; ++i) std::fill(A + i * C, A + i * C + c, T(0));
      diag(0, c, qc, kc, w);
    }
    // intra-chunk: o = scale * (lower-triangular scores) v
    gemm_rm<T>(false, false, c, V, c, static_cast<T>(scale_), A, C, vc, st_.v, T(0), oc, st_.o);
    if (step > 0) {  // inter-chunk: o += scale (q_i * e^{b_i}) S
      if (!one_block) {  // (one block: qt already holds q_i e^{b_i})
        for (int64_t i = 0; i < c; ++i) {
          const T* src = qc + i * st_.q;
          const T* bi = b + i * K;
          T* dst = qt + i * K;
          for (int64_t d = 0; d < K; ++d) dst[d] = src[d] * fast_exp(bi[d]);
        }
      }
      gemm_rm<T>(false, false, c, V, K, static_cast<T>(scale_), qt, K, S, V, T(1), oc, st_.o);
    }
    if (step + 1 == chunks()) return;
    // state: S <- diag(e^{b_last}) S + sum_j (k_j * e^{b_last - b_j})^T v_j
    if (step > 0) {
      for (int64_t d = 0; d < K; ++d) {
        const T f = fast_exp(last[d]);
        T* row = S + d * V;
        for (int64_t e = 0; e < V; ++e) row[e] *= f;
      }
    }
    if (one_block) {
      T* el = w.e.data();
      for (int64_t d = 0; d < K; ++d) el[d] = fast_exp(last[d]);
      for (int64_t j = 0; j < c; ++j) {
        T* row = kt + j * K;
        for (int64_t d = 0; d < K; ++d) row[d] *= el[d];
      }
    } else {
      for (int64_t j = 0; j < c; ++j) {
        const T* src = kc + j * st_.k;
        const T* bj = b + j * K;
        T* dst = kt + j * K;
        for (int64_t d = 0; d < K; ++d) dst[d] = src[d] * fast_exp(last[d] - bj[d]);
      }
    }
    gemm_rm<T>(true, false, K, V, c, T(1), kt, K, vc, st_.v, step > 0 ? T(1) : T(0), S, V);
  }

 private:
  // Scores of rows [lo, hi) against themselves (lower triangle kept).
  void diag(int64_t lo, int64_t hi, const T* qc, const T* kc, GlaScratch<T>& w) {
    const int64_t K = K_, C = C_;
    const T* b = w.b.data();
    const T* last = b + (hi - 1) * K;
    T span = 0;
    for (int64_t d = 0; d < K; ++d) {
      const T before = lo > 0 ? b[(lo - 1) * K + d] : T(0);
      span = std::max(span, before - last[d]);
    }
    if (hi - lo > 1 && span > kSpanLimit) {
      const int64_t mid = (lo + hi) / 2;
      diag(lo, mid, qc, kc, w);
      below(mid, hi, lo, mid, qc, kc, w);
      diag(mid, hi, qc, kc, w);
      return;
    }
    T* r = w.r.data();  // free here: chunk() reads its own r only on the one-block path
    for (int64_t d = 0; d < K; ++d) {
      const T before = lo > 0 ? b[(lo - 1) * K + d] : T(0);
      r[d] = hi - lo == 1 ? last[d] : before;
    }
    scaled_rows(lo, hi, qc, st_.q, r, T(1), w.qt.data(), b);
    scaled_rows(lo, hi, kc, st_.k, r, T(-1), w.kt.data(), b);
    T* A = w.A.data();
    gemm_rm<T>(false, true, hi - lo, hi - lo, K, T(1), w.qt.data() + lo * K, K,
               w.kt.data() + lo * K, K, T(0), A + lo * C + lo, C);
    for (int64_t i = lo; i < hi; ++i) std::fill(A + i * C + i + 1, A + i * C + hi, T(0));
  }

  // Scores of rows [i0, i1) against the earlier rows [j0, j1), j1 <= i0.
  void below(int64_t i0, int64_t i1, int64_t j0, int64_t j1, const T* qc, const T* kc,
             GlaScratch<T>& w) {
    const int64_t K = K_, C = C_;
    const T* b = w.b.data();
    const T* r = b + (j1 - 1) * K;  // both factors <= 1
    scaled_rows(i0, i1, qc, st_.q, r, T(1), w.qt.data(), b);
    scaled_rows(j0, j1, kc, st_.k, r, T(-1), w.kt.data(), b);
    gemm_rm<T>(false, true, i1 - i0, j1 - j0, K, T(1), w.qt.data() + i0 * K, K,
               w.kt.data() + j0 * K, K, T(0), w.A.data() + i0 * C + j0, C);
  }

  // out_i = x_i * e^{sign * (b_i - r)} for rows [lo, hi)
  void scaled_rows(int64_t lo, int64_t hi, const T* x, int64_t stride, const T* r, T sign,
                   T* out, const T* b) const {
    const int64_t K = K_;
    for (int64_t i = lo; i < hi; ++i) scale_row(x + i * stride, b + i * K, r, sign, out + i * K, K);
  }

  const T *q_, *k_, *v_, *g_;
  T* o_;
  int64_t len_, K_, V_;
  GlaStrides st_;
  double scale_;
  int64_t C_;
  std::vector<T> S_;  // [K, V] state
};

}  // namespace

// q, k, g [B, T, H, K], v [B, T, H, V] (unit-stride rows) -> o [B, T, H, V] contiguous.
torch::Tensor gla_chunk_forward(const torch::Tensor& q, const torch::Tensor& k,
                                const torch::Tensor& v, const torch::Tensor& g, double scale,
                                int64_t chunk) {
  check_rows(q, "q");
  check_rows(k, "k");
  check_rows(v, "v");
  check_rows(g, "g");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type() &&
                  q.scalar_type() == g.scalar_type(),
              "q, k, v, g must share a dtype");
  TORCH_CHECK(q.sizes() == k.sizes() && q.sizes() == g.sizes(), "q, k, g must share a shape");
  const int64_t B = q.size(0), len = q.size(1), H = q.size(2), K = q.size(3), V = v.size(3);
  TORCH_CHECK(v.size(0) == B && v.size(1) == len && v.size(2) == H, "v must be [B, T, H, V]");
  TORCH_CHECK(chunk > 0, "chunk must be positive");
  auto o = torch::empty({B, len, H, V}, v.options());
  if (len == 0 || B * H == 0) return o;
  const int64_t C = std::min(chunk, len);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "gla_chunk_forward", [&] {
    using Scan = GlaScan<scalar_t>;
    const GlaStrides st{q.stride(1), k.stride(1), v.stride(1), g.stride(1), H * V};
    scalar_t* op = o.data_ptr<scalar_t>();
    scan_heads<Scan, GlaScratch<scalar_t>>(B, H, C, K, [&](int64_t b, int64_t h) {
      return Scan(head_ptr<scalar_t>(q, b, h), head_ptr<scalar_t>(k, b, h),
                  head_ptr<scalar_t>(v, b, h), head_ptr<scalar_t>(g, b, h),
                  op + (b * len * H + h) * V, len, K, V, st, scale, C);
    });
  });
  return o;
}
