// Chunked causal gated linear attention (GLA), fused on the CPU: the forward pass.
//
// For one (batch, head), log gates g_t [K] (<= 0), state S [K, V]:
//   S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t,   o_t = scale * q_t S_t.
// Per chunk of c rows, with b_i = g_0 + ... + g_i (within the chunk, per key channel):
//   o_i = scale [ sum_{j<=i} ((q_i * e^{b_i - b_j}) . k_j) v_j + (q_i * e^{b_i}) S ]
//   S  <- diag(e^{b_{c-1}}) S + sum_j (k_j * e^{b_{c-1} - b_j})^T v_j
// The intra-chunk scores are GEMMs over the leaves of gla.h (factors <= e^30, halving blocks
// whose gates are stronger), every other exponent is <= 0, so long sequences with strong gates
// stay finite. One gate pass builds the cumulative gates and the rows q e^{b}, k e^{-b}, which on
// the common one-leaf chunk serve the scores, the read-out and (times e^{b_last}) the update: c*K
// exponential pairs per chunk. (B, H) pairs run on torch's threads (attnzoo::scan_heads).
#include "gla.h"

namespace attnzoo::gla {
namespace {

template <typename T>
class GlaScan {
 public:
  // q, k, g [T, K], v [T, V], o [T, V]: one head's rows
  GlaScan(Rows<const T> q, Rows<const T> k, Rows<const T> v, Rows<const T> g, Rows<T> o,
          int64_t len, int64_t K, int64_t V, double scale, int64_t C)
      : q_(q), k_(k), v_(v), g_(g), o_(o), len_(len), K_(K), V_(V), scale_(scale), C_(C),
        S_(K * V) {}

  int64_t chunks() const { return (len_ + C_ - 1) / C_; }

  void chunk(int64_t step, Scratch<T>& w) {
    const int64_t t0 = step * C_, K = K_, V = V_, C = C_;
    const int64_t c = std::min(C, len_ - t0);
    const auto q = q_.from(t0), k = k_.from(t0), v = v_.from(t0), g = g_.from(t0);
    const auto o = o_.from(t0);
    gate_pass<T>(q, k, g, c, K, false, {v}, w);
    const bool one_leaf = split_chunk<T>(c, K, w);
    scores<T>(q, k, c, C, K, one_leaf, w);
    const T s = static_cast<T>(scale_);
    // intra-chunk: o = scale * (lower-triangular scores) v
    gemm_rm<T>(false, false, c, V, c, s, w.A.data(), C, v.p, v.ld, T(0), o.p, o.ld);
    if (step > 0)  // inter-chunk: o += scale (q_i * e^{b_i}) S   (qe: factors <= 1)
      gemm_rm<T>(false, false, c, V, K, s, w.qe.data(), K, S_.data(), V, T(1), o.p, o.ld);
    if (step + 1 < chunks()) update_state<T>(k, v, c, K, V, one_leaf, step == 0, w, S_.data());
  }

 private:
  Rows<const T> q_, k_, v_, g_;
  Rows<T> o_;
  int64_t len_, K_, V_;
  double scale_;
  int64_t C_;
  std::vector<T> S_;  // [K, V] state
};

}  // namespace
}  // namespace attnzoo::gla

// q, k, g [B, T, H, K], v [B, T, H, V] (unit-stride rows) -> o [B, T, H, V] contiguous.
torch::Tensor gla_chunk_forward(const torch::Tensor& q, const torch::Tensor& k,
                                const torch::Tensor& v, const torch::Tensor& g, double scale,
                                int64_t chunk) {
  attnzoo::gla::check_gla(q, k, v, g);
  TORCH_CHECK(chunk > 0, "chunk must be positive");
  const int64_t B = q.size(0), len = q.size(1), H = q.size(2), K = q.size(3), V = v.size(3);
  auto o = torch::empty({B, len, H, V}, v.options());
  if (len == 0 || B * H == 0) return o;
  const int64_t C = std::min(chunk, len);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "gla_chunk_forward", [&] {
    using T = scalar_t;
    using namespace attnzoo::gla;
    attnzoo::scan_heads<GlaScan<T>, Scratch<T>>(B, H, C, K, [&](int64_t b, int64_t h) {
      return GlaScan<T>(head_rows<const T>(q, b, h), head_rows<const T>(k, b, h),
                        head_rows<const T>(v, b, h), head_rows<const T>(g, b, h),
                        head_rows<T>(o, b, h), len, K, V, scale, C);
    });
  });
  return o;
}
