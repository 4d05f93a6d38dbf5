// Chunked causal gated linear attention (GLA), fused on the CPU: the backward pass.
//
// With o_t = s sum_{j<=t} sum_d q_t[d] k_j[d] e^{B_t[d] - B_j[d]} v_j (B the cumulative log
// gates over the whole sequence) and do the output's gradient:
//   dq_t = s sum_{j<=t} e^{B_t - B_j} k_j (do_t . v_j)       (causal, gated on the output)
//   dk_j = s sum_{t>=j} e^{B_t - B_j} q_t (do_t . v_j)       (anti-causal, gated on the output)
//   dv_j = s sum_{t>=j} (q_t e^{B_t - B_j} . k_j) do_t       (anti-causal, the forward's scores)
//   dg_t = sum_{u>=t} (q_u dq_u - k_u dk_u)                  (reverse cumulative sum)
// (the last: B_u moves e^{B_u - B_j} for every key j <= u and e^{B_t - B_u} for every query
// t >= u, and g_t moves every B_u with u >= t).
// Each (batch, head) makes two scans over its chunks. Forward, carrying the forward's state S:
//   dq_i = s [ e^{b_i} (do_i S^T) + sum_{j<=i} e^{b_i - b_j} k_j P_ij ],   P = tril(do v^T);
// backward (last chunk first), carrying R = sum over later rows u of (q_u e^{B_u - B_end})^T do_u:
//   dv_j = s [ (A^T do)_j + (k_j e^{b_last - b_j}) R ],                     A the forward's scores
//   dk_j = s [ e^{b_last - b_j} (v_j R^T) + sum_{i>=j} e^{b_i - b_j} q_i P_ij ]
//   R   <- diag(e^{b_last}) R + sum_i (q_i e^{b_i})^T do_i.
// The products with e^{b_i - b_j} factors run over the leaves of gla.h (factors <= e^30, the
// reference point per leaf), every other exponent is <= 0; the common one-leaf chunk uses the
// gate pass's rows and fuses its products into one GEMM chain. Strong gates stay finite.
#include "gla.h"

namespace attnzoo::gla {
namespace {

// acc += q dq - k dk; dg = acc (one row of the reverse cumulative sum)
template <typename T>
inline void gate_grad_row(const T* __restrict q, const T* __restrict dq, const T* __restrict k,
                          const T* __restrict dk, T* __restrict acc, T* __restrict dg, int64_t K) {
#pragma omp simd
  for (int64_t d = 0; d < K; ++d) {
    acc[d] += q[d] * dq[d] - k[d] * dk[d];
    dg[d] = acc[d];
  }
}

template <typename T>
class GlaGrad {
 public:
  struct In {
    Rows<const T> q, k, v, g, dout;  // [T, K] x 3, [T, V], [T, V]
  };
  struct Out {
    Rows<T> dq, dk, dv, dg;  // [T, K], [T, K], [T, V], [T, K]
  };

  GlaGrad(In in, Out out, int64_t len, int64_t K, int64_t V, double scale, int64_t C)
      : in_(in), out_(out), len_(len), K_(K), V_(V), s_(static_cast<T>(scale)), C_(C),
        S_(K * V), R_(K * V), acc_(K) {}

  // every chunk twice: forward for dq, then last first for dk, dv, dg (which read dq)
  int64_t chunks() const { return 2 * count(); }

  void chunk(int64_t step, Scratch<T>& w) {
    const int64_t n = count();
    if (step < n) {
      dq_chunk(step, w);
    } else {
      dkv_chunk(2 * n - 1 - step, w);
    }
  }

 private:
  int64_t count() const { return (len_ + C_ - 1) / C_; }

  // P = tril(do v^T) for the chunk's rows [c, c]
  void output_scores(Rows<const T> dout, Rows<const T> v, int64_t c, Scratch<T>& w) const {
    gemm_rm<T>(false, true, c, c, V_, T(1), dout.p, dout.ld, v.p, v.ld, T(0), w.P.data(), C_);
    zero_upper(w.P.data(), C_, 0, c);
  }

  void dq_chunk(int64_t n, Scratch<T>& w) {
    const int64_t t0 = n * C_, K = K_, V = V_, C = C_;
    const int64_t c = std::min(C, len_ - t0);
    const auto k = in_.k.from(t0), v = in_.v.from(t0), g = in_.g.from(t0);
    const auto dout = in_.dout.from(t0);
    const auto dq = out_.dq.from(t0);
    // qe = e^b, ke = k e^-b; dq's rows are fetched too, as if read: the writes below then
    // find them cached (the rows are 2 per page at H*K = 512, too sparse for the hardware's
    // prefetcher): 9% of the backward's time at T = 8k
    gate_pass<T>({nullptr, 0}, k, g, c, K, false, {v, dout, dq.as_const()}, w);
    const bool one_leaf = split_chunk<T>(c, K, w);
    output_scores(dout, v, c, w);
    T* X = w.x.data();
    const T* P = w.P.data();
    if (n > 0) {  // X = do S^T
      gemm_rm<T>(false, true, c, K, V, T(1), dout.p, dout.ld, S_.data(), V, T(0), X, K);
    } else {
      std::fill(X, X + c * K, T(0));
    }
    if (one_leaf)  // X += P (k e^-b)
      gemm_rm<T>(false, false, c, K, c, T(1), P, C, w.ke.data(), K, T(1), X, K);
    for (int64_t i = 0; i < c; ++i) mul_row<T>(X + i * K, w.qe.data() + i * K, s_, dq.row(i), K);
    if (!one_leaf) {
      for (const Leaf& leaf : w.leaves) {  // dq_I += s e^{b_I - r} P_IJ (k_J e^{r - b_J})
        const T* r = reference(leaf, K, w);
        scaled_rows(k, leaf.j0, leaf.j1, r, T(-1), K, w, w.kr.data());
        gemm_rm<T>(false, false, leaf.i1 - leaf.i0, K, leaf.j1 - leaf.j0, T(1),
                   P + leaf.i0 * C + leaf.j0, C, w.kr.data() + leaf.j0 * K, K, T(0),
                   X + leaf.i0 * K, K);
        for (int64_t i = leaf.i0; i < leaf.i1; ++i)
          scale_row<T>(X + i * K, w.b.data() + i * K, r, T(1), s_, true, dq.row(i), K);
      }
    }
    if (n + 1 < count()) update_state<T>(k, v, c, K, V, one_leaf, n == 0, w, S_.data());
  }

  void dkv_chunk(int64_t n, Scratch<T>& w) {
    const int64_t t0 = n * C_, K = K_, V = V_, C = C_;
    const int64_t c = std::min(C, len_ - t0);
    const bool first = n + 1 == count();  // the last chunk: R = 0
    const auto q = in_.q.from(t0), k = in_.k.from(t0), v = in_.v.from(t0), g = in_.g.from(t0),
               dout = in_.dout.from(t0);
    const auto dk = out_.dk.from(t0), dv = out_.dv.from(t0), dg = out_.dg.from(t0);
    const auto dq = out_.dq.from(t0).as_const();
    // qe = q e^b, ke = k e^-b, inv = e^-b; the output rows fetched ahead as in dq_chunk
    gate_pass<T>(q, k, g, c, K, true, {v, dout, dq, dk.as_const(), dg.as_const(), dv.as_const()},
                 w);
    const bool one_leaf = split_chunk<T>(c, K, w);
    scores<T>(q, k, c, C, K, one_leaf, w);
    output_scores(dout, v, c, w);
    T* X = w.x.data();
    T* R = R_.data();
    const T* P = w.P.data();
    const T* el = w.last.data();
    // dv = s A^T do (+ s (k e^{b_last - b}) R below)
    gemm_rm<T>(true, false, c, V, c, s_, w.A.data(), C, dout.p, dout.ld, T(0), dv.p, dv.ld);
    bool r_scaled = false;  // whether R already holds diag(e^{b_last}) R
    if (first) std::fill(acc_.begin(), acc_.end(), T(0));
    if (one_leaf) {
      if (!first) {  // with R~ = diag(e^{b_last}) R: dv += s (k e^-b) R~, X = v R~^T
        scale_state(R, el, K, V);
        r_scaled = true;
        gemm_rm<T>(false, false, c, V, K, s_, w.ke.data(), K, R, V, T(1), dv.p, dv.ld);
        gemm_rm<T>(false, true, c, K, V, T(1), v.p, v.ld, R, V, T(0), X, K);
      }
      // X += P^T (q e^b); dk = s e^-b X, in the same row pass as the gate gradient
      gemm_rm<T>(true, false, c, K, c, T(1), P, C, w.qe.data(), K, first ? T(0) : T(1), X, K);
      for (int64_t j = c - 1; j >= 0; --j) {
        mul_row<T>(X + j * K, w.inv.data() + j * K, s_, dk.row(j), K);
        gate_grad_row<T>(q.row(j), dq.row(j), k.row(j), dk.row(j), acc_.data(), dg.row(j), K);
      }
    } else {
      const T* last = w.b.data() + (c - 1) * K;
      if (!first) {  // exponents b_last - b <= 0 taken whole: e^-b alone may be clamped here
        scaled_rows(k, 0, c, last, T(-1), K, w, w.kr.data());
        gemm_rm<T>(false, false, c, V, K, s_, w.kr.data(), K, R, V, T(1), dv.p, dv.ld);
        gemm_rm<T>(false, true, c, K, V, T(1), v.p, v.ld, R, V, T(0), X, K);
        for (int64_t j = 0; j < c; ++j)
          scale_row<T>(X + j * K, w.b.data() + j * K, last, T(-1), s_, false, dk.row(j), K);
      } else {
        for (int64_t j = 0; j < c; ++j) std::fill(dk.row(j), dk.row(j) + K, T(0));
      }
      for (const Leaf& leaf : w.leaves) {  // dk_J += s e^{r - b_J} P_IJ^T (q_I e^{b_I - r})
        const T* r = reference(leaf, K, w);
        scaled_rows(q, leaf.i0, leaf.i1, r, T(1), K, w, w.qr.data());
        gemm_rm<T>(true, false, leaf.j1 - leaf.j0, K, leaf.i1 - leaf.i0, T(1),
                   P + leaf.i0 * C + leaf.j0, C, w.qr.data() + leaf.i0 * K, K, T(0),
                   X + leaf.j0 * K, K);
        for (int64_t j = leaf.j0; j < leaf.j1; ++j)
          scale_row<T>(X + j * K, w.b.data() + j * K, r, T(-1), s_, true, dk.row(j), K);
      }
    }
    if (n > 0) {  // R <- diag(e^{b_last}) R + (q e^b)^T do   (qe: factors <= 1)
      if (!first && !r_scaled) scale_state(R, el, K, V);
      gemm_rm<T>(true, false, K, V, c, T(1), w.qe.data(), K, dout.p, dout.ld,
                 first ? T(0) : T(1), R, V);
    }
    if (!one_leaf) {  // the gate gradient (the one-leaf path made it with dk)
      for (int64_t i = c - 1; i >= 0; --i)
        gate_grad_row<T>(q.row(i), dq.row(i), k.row(i), dk.row(i), acc_.data(), dg.row(i), K);
    }
  }

  In in_;
  Out out_;
  int64_t len_, K_, V_;
  T s_;
  int64_t C_;
  std::vector<T> S_, R_;  // [K, V] forward state, [K, V] backward state
  std::vector<T> acc_;    // [K] the gate gradient's running sum
};

}  // namespace
}  // namespace attnzoo::gla

// q, k, g [B, T, H, K], v, dout [B, T, H, V] (unit-stride rows)
//   -> dq, dk [B, T, H, K], dv [B, T, H, V], dg [B, T, H, K], contiguous.
std::vector<torch::Tensor> gla_chunk_backward(const torch::Tensor& q, const torch::Tensor& k,
                                              const torch::Tensor& v, const torch::Tensor& g,
                                              const torch::Tensor& dout, double scale,
                                              int64_t chunk) {
  attnzoo::gla::check_gla(q, k, v, g);
  attnzoo::check_rows(dout, "do");
  TORCH_CHECK(dout.sizes() == v.sizes() && dout.scalar_type() == v.scalar_type(),
              "do must match v's shape and dtype");
  TORCH_CHECK(chunk > 0, "chunk must be positive");
  const int64_t B = q.size(0), len = q.size(1), H = q.size(2), K = q.size(3), V = v.size(3);
  auto dq = torch::empty({B, len, H, K}, q.options());
  auto dk = torch::empty({B, len, H, K}, q.options());
  auto dv = torch::empty({B, len, H, V}, q.options());
  auto dg = torch::empty({B, len, H, K}, q.options());
  if (len == 0 || B * H == 0) return {dq, dk, dv, dg};
  const int64_t C = std::min(chunk, len);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "gla_chunk_backward", [&] {
    using T = scalar_t;
    using namespace attnzoo::gla;
    using Grad = GlaGrad<T>;
    auto in = [](const torch::Tensor& x, int64_t b, int64_t h) {
      return head_rows<const T>(x, b, h);
    };
    auto out = [](const torch::Tensor& x, int64_t b, int64_t h) { return head_rows<T>(x, b, h); };
    attnzoo::scan_heads<Grad, Scratch<T>>(B, H, C, K, [&](int64_t b, int64_t h) {
      return Grad({in(q, b, h), in(k, b, h), in(v, b, h), in(g, b, h), in(dout, b, h)},
                  {out(dq, b, h), out(dk, b, h), out(dv, b, h), out(dg, b, h)}, len, K, V,
                  scale, C);
    });
  });
  return {dq, dk, dv, dg};
}
