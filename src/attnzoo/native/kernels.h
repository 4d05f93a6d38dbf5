// Helpers shared by attnzoo's native kernels: row-major GEMM on torch's BLAS, decay weights,
// input checks and the per-(batch, head) scan driver.
#pragma once

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

extern "C" {
// the Fortran BLAS entry points of the BLAS that torch links (MKL on x86-64 wheels)
void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc);
void dgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b,
            const int* ldb, const double* beta, double* c, const int* ldc);
}

namespace attnzoo {

constexpr double kFlush = -60.0;  // log-weights below this are exact zeros

inline double flush_exp(double log_w) { return log_w > kFlush ? std::exp(log_w) : 0.0; }

inline void gemm_col(char ta, char tb, int m, int n, int k, float alpha, const float* a, int lda,
                     const float* b, int ldb, float beta, float* c, int ldc) {
  sgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}

inline void gemm_col(char ta, char tb, int m, int n, int k, double alpha, const double* a,
                     int lda, const double* b, int ldb, double beta, double* c, int ldc) {
  dgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}

// Row-major C[m, n] = alpha op(A)[m, k] op(B)[k, n] + beta C (column-major BLAS on C^T).
template <typename T>
inline void gemm_rm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
                    int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  gemm_col(tb ? 'T' : 'N', ta ? 'T' : 'N', static_cast<int>(n), static_cast<int>(m),
           static_cast<int>(k), alpha, b, static_cast<int>(ldb), a, static_cast<int>(lda), beta,
           c, static_cast<int>(ldc));
}

// exp in plain arithmetic that compilers vectorise (a loop of std::exp is not): with
// n = round(x / ln 2) and f = x - n ln 2 in [-ln2/2, ln2/2], exp(x) = 2^n p(f) and
// exp(-x) = 2^-n p(-f), p the degree-7 Taylor polynomial (relative error < 1e-8 on that
// interval, so ~1 ulp in float32) split as p(+-f) = even(f^2) +- f odd(f^2).
// Inputs below kFlush give exactly 0, as flush_exp does (no subnormals); inputs above 88 are
// clamped (callers only pass bounded exponents).
struct ExpParts {
  float even, odd, n, keep;  // p(+-f) = even +- odd; keep = 0 below kFlush
};

inline ExpParts exp_parts(float x) {
  constexpr float kLog2e = 1.44269504088896341f, kLn2Hi = 0.693359375f,
                  kLn2Lo = -2.12194440e-4f;
  constexpr float kLow = static_cast<float>(kFlush);
  const float keep = x > kLow ? 1.0f : 0.0f;
  x = x > kLow ? (x < 88.0f ? x : 88.0f) : kLow;
  // round to nearest by the 1.5 * 2^23 trick (plain adds, so it vectorises without SSE4.1)
  constexpr float kRound = 12582912.0f;
  const float n = (x * kLog2e + kRound) - kRound;
  const float f = x - n * kLn2Hi - n * kLn2Lo;
  const float f2 = f * f;
  const float even = ((f2 * (1.0f / 720.0f) + 1.0f / 24.0f) * f2 + 0.5f) * f2 + 1.0f;
  const float odd = ((f2 * (1.0f / 5040.0f) + 1.0f / 120.0f) * f2 + 1.0f / 6.0f) * f2 + 1.0f;
  return {even, f * odd, n, keep};
}

// 2^n for an integral n in [-126, 127]
inline float pow2(float n) {
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}

inline float fast_exp(float x) {
  const ExpParts p = exp_parts(x);
  return (p.even + p.odd) * pow2(p.n) * p.keep;
}

inline double fast_exp(double x) { return flush_exp(x); }

// e = exp(x) and inv = exp(-x) from one range reduction (no division); below kFlush e = 0 and
// inv = exp(60).
inline void fast_exp_pair(float x, float& e, float& inv) {
  const ExpParts p = exp_parts(x);
  e = (p.even + p.odd) * pow2(p.n) * p.keep;
  inv = (p.even - p.odd) * pow2(-p.n);
}

inline void fast_exp_pair(double x, double& e, double& inv) {
  e = flush_exp(x);
  inv = std::exp(-(x > kFlush ? x : kFlush));
}

// A [B, T, H, D] CPU input whose rows (one token of one head) are unit-stride and do not overlap:
// the kernels hand them to BLAS with the token stride as leading dimension.
inline void check_rows(const torch::Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() == 4, name, " must be [B, T, H, D], got ", x.dim(), " dims");
  TORCH_CHECK(x.device().is_cpu(), name, " must be on the CPU");
  TORCH_CHECK(x.stride(3) == 1 && x.stride(1) >= x.size(3),
              name, ": rows must be unit-stride and not overlap, got strides ", x.strides());
}

// The first element of (batch b, head h) of a [B, T, H, D] tensor.
template <typename T>
inline T* head_ptr(const torch::Tensor& x, int64_t b, int64_t h) {
  return x.data_ptr<T>() + b * x.stride(0) + h * x.stride(2);
}

// Runs one Scan per (batch, head) on torch's threads. A thread advances all its heads chunk by
// chunk (their rows of one chunk share memory pages), sharing one Scratch(C, K) among them.
// `make(b, h)` builds a head's Scan, which has `chunks()` and `chunk(step, scratch)`.
template <typename Scan, typename Scratch, typename Make>
void scan_heads(int64_t B, int64_t H, int64_t C, int64_t K, const Make& make) {
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    Scratch scratch(C, K);
    std::vector<Scan> heads;
    heads.reserve(end - begin);
    for (int64_t bh = begin; bh < end; ++bh) heads.push_back(make(bh / H, bh % H));
    const int64_t n_chunks = heads.front().chunks();
    for (int64_t step = 0; step < n_chunks; ++step) {
      for (auto& head : heads) head.chunk(step, scratch);
    }
  });
}

}  // namespace attnzoo
