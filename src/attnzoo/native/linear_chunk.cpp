// Chunked causal linear attention with a per-head scalar decay, fused on the CPU.
//
// For one (batch, head) the sequence is cut into chunks of C tokens. With lambda = exp(logd) and
// rows i, j of one chunk (i, j < c, c <= C):
//
//   forward (causal):       o_i = s [ sum_{j<=i} lambda^(i-j) (q_i.k_j) v_j + lambda^(i+1) q_i S ]
//                           S  <- lambda^c S + sum_j lambda^(c-1-j) k_j^T v_j
//   reverse (anti-causal):  o_i = s [ sum_{j>=i} lambda^(j-i) (q_i.k_j) v_j + lambda^(c-i) q_i S ]
//                           S  <- lambda^c S + sum_j lambda^j k_j^T v_j  (chunks taken last first)
//
// The four products per chunk (q k^T, masked scores @ v, q S, k^T v) are BLAS GEMMs on strided
// row-major views of the [B, T, H, D] inputs, so nothing is copied into a chunk layout; the
// output is written in place into a contiguous [B, T, H, V] tensor. Decay factors below
// exp(-60) are flushed to 0 (as attnzoo.ops.chunks.decay_exp does): subnormal floats make x86
// arithmetic ~100x slower. The reverse form is what the backward pass needs:
//   dq = fwd(do, v, k),  dk = rev(v, do, q),  dv = rev(k, q, do).
// (B, H) pairs run in parallel (attnzoo::scan_heads); each calls single-threaded GEMMs.
#include <vector>

#include "kernels.h"

namespace {

using attnzoo::check_rows;
using attnzoo::flush_exp;
using attnzoo::gemm_rm;
using attnzoo::head_ptr;
using attnzoo::scan_heads;

struct Strides {
  int64_t q, k, v, o;  // elements between consecutive tokens
};

// Scratch shared by the heads one thread runs (reused chunk after chunk).
template <typename T>
struct Scratch {
  std::vector<T> A, qd, kd;  // [C, C] scores, [C, K] decayed q rows, [C, K] decayed k rows
  Scratch(int64_t C, int64_t K) : A(C * C), qd(C * K), kd(C * K) {}
};

// One (batch, head): q, k [T, K], v [T, V], o [T, V], rows `st.*` apart; keeps its state
// between chunks so that a thread can advance all its heads chunk by chunk (their rows of one
// chunk share memory pages, which matters at long T).
template <typename T>
class HeadScan {
 public:
  HeadScan(const T* q, const T* k, const T* v, T* o, int64_t len, int64_t K, int64_t V,
           Strides st, double logd, double scale, int64_t C, bool reverse)
      : q_(q), k_(k), v_(v), o_(o), len_(len), K_(K), V_(V), st_(st), logd_(logd),
        scale_(scale), C_(C), reverse_(reverse), decays_(logd != 0.0), mask_(C * C),
        S_(K * V) {
    for (int64_t i = 0; i < C; ++i) {
      for (int64_t j = 0; j < C; ++j) {
        const int64_t d = reverse ? j - i : i - j;
        mask_[i * C + j] = d >= 0 ? static_cast<T>(scale * flush_exp(logd * d)) : T(0);
      }
    }
  }

  int64_t chunks() const { return (len_ + C_ - 1) / C_; }

  // The `step`-th chunk taken (the last chunk first when reverse).
  void chunk(int64_t step, Scratch<T>& w) {
    const int64_t n_chunks = chunks();
    const int64_t n = reverse_ ? n_chunks - 1 - step : step;
    const int64_t t0 = n * C_, C = C_, K = K_, V = V_;
    const int64_t c = std::min(C, len_ - t0);
    const T* qc = q_ + t0 * st_.q;
    const T* kc = k_ + t0 * st_.k;
    const T* vc = v_ + t0 * st_.v;
    T* oc = o_ + t0 * st_.o;
    T* A = w.A.data();
    T* S = S_.data();
    // intra-chunk: o = (mask * q k^T) v
    gemm_rm<T>(false, true, c, c, K, T(1), qc, st_.q, kc, st_.k, T(0), A, C);
    for (int64_t i = 0; i < c; ++i) {
      T* a_row = A + i * C;
      const T* m_row = mask_.data() + i * C;
      for (int64_t j = 0; j < c; ++j) a_row[j] *= m_row[j];
    }
    gemm_rm<T>(false, false, c, V, c, T(1), A, C, vc, st_.v, T(0), oc, st_.o);
    if (step > 0) {  // inter-chunk: o += s lambda^e(i) q S
      if (!decays_) {
        gemm_rm<T>(false, false, c, V, K, static_cast<T>(scale_), qc, st_.q, S, V, T(1), oc,
                   st_.o);
      } else {
        T* qd = w.qd.data();
        for (int64_t i = 0; i < c; ++i) {
          const T f = static_cast<T>(scale_ * flush_exp(logd_ * (reverse_ ? c - i : i + 1)));
          const T* src = qc + i * st_.q;
          T* dst = qd + i * K;
          for (int64_t d = 0; d < K; ++d) dst[d] = src[d] * f;
        }
        gemm_rm<T>(false, false, c, V, K, T(1), qd, K, S, V, T(1), oc, st_.o);
      }
    }
    if (step + 1 == n_chunks) return;  // the last chunk's state is not needed
    // state: S <- lambda^c S + sum_j lambda^e(j) k_j^T v_j
    const T beta = step == 0 ? T(0) : static_cast<T>(decays_ ? flush_exp(logd_ * c) : 1.0);
    if (!decays_) {
      gemm_rm<T>(true, false, K, V, c, T(1), kc, st_.k, vc, st_.v, beta, S, V);
    } else {
      T* kd = w.kd.data();
      for (int64_t j = 0; j < c; ++j) {
        const T f = static_cast<T>(flush_exp(logd_ * (reverse_ ? j : c - 1 - j)));
        const T* src = kc + j * st_.k;
        T* dst = kd + j * K;
        for (int64_t d = 0; d < K; ++d) dst[d] = src[d] * f;
      }
      gemm_rm<T>(true, false, K, V, c, T(1), kd, K, vc, st_.v, beta, S, V);
    }
  }

 private:
  const T *q_, *k_, *v_;
  T* o_;
  int64_t len_, K_, V_;
  Strides st_;
  double logd_, scale_;
  int64_t C_;
  bool reverse_, decays_;
  std::vector<T> mask_;  // [C, C] scale * lambda^|i-j| on the causal side
  std::vector<T> S_;     // [K, V] state
};

}  // namespace

// q, k [B, T, H, K], v [B, T, H, V] (any strides with unit-stride rows), logd [H] (float64,
// log(lambda) <= 0) -> o [B, T, H, V] contiguous.
torch::Tensor linear_chunk_forward(const torch::Tensor& q, const torch::Tensor& k,
                                   const torch::Tensor& v, const torch::Tensor& logd,
                                   double scale, int64_t chunk, bool reverse) {
  check_rows(q, "q");
  check_rows(k, "k");
  check_rows(v, "v");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
              "q, k, v must share a dtype");
  TORCH_CHECK(q.sizes() == k.sizes(), "q and k must have the same shape");
  const int64_t B = q.size(0), len = q.size(1), H = q.size(2), K = q.size(3), V = v.size(3);
  TORCH_CHECK(v.size(0) == B && v.size(1) == len && v.size(2) == H, "v must be [B, T, H, V]");
  TORCH_CHECK(logd.dim() == 1 && logd.size(0) == H && logd.scalar_type() == torch::kFloat64,
              "logd must be a float64 [H] tensor");
  TORCH_CHECK(chunk > 0, "chunk must be positive");
  auto o = torch::empty({B, len, H, V}, v.options());
  if (len == 0 || B * H == 0) return o;
  const int64_t C = std::min(chunk, len);
  const auto logd_c = logd.contiguous();
  const double* ld = logd_c.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "linear_chunk_forward", [&] {
    using Scan = HeadScan<scalar_t>;
    const Strides st{q.stride(1), k.stride(1), v.stride(1), H * V};
    scalar_t* op = o.data_ptr<scalar_t>();
    scan_heads<Scan, Scratch<scalar_t>>(B, H, C, K, [&](int64_t b, int64_t h) {
      return Scan(head_ptr<scalar_t>(q, b, h), head_ptr<scalar_t>(k, b, h),
                  head_ptr<scalar_t>(v, b, h), op + (b * len * H + h) * V, len, K, V, st, ld[h],
                  scale, C, reverse);
    });
  });
  return o;
}
