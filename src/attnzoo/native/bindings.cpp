// Python bindings of attnzoo's native kernels (one module, several translation units).
#include <torch/extension.h>

torch::Tensor linear_chunk_forward(const torch::Tensor& q, const torch::Tensor& k,
                                   const torch::Tensor& v, const torch::Tensor& logd,
                                   double scale, int64_t chunk, bool reverse);
torch::Tensor gla_chunk_forward(const torch::Tensor& q, const torch::Tensor& k,
                                const torch::Tensor& v, const torch::Tensor& g, double scale,
                                int64_t chunk);
std::vector<torch::Tensor> gla_chunk_backward(const torch::Tensor& q, const torch::Tensor& k,
                                              const torch::Tensor& v, const torch::Tensor& g,
                                              const torch::Tensor& dout, double scale,
                                              int64_t chunk);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("linear_chunk_forward", &linear_chunk_forward,
        "chunked (anti-)causal linear attention with a per-head scalar decay");
  m.def("gla_chunk_forward", &gla_chunk_forward, "chunked causal gated linear attention");
  m.def("gla_chunk_backward", &gla_chunk_backward,
        "gradients of chunked causal gated linear attention: dq, dk, dv, dg");
}
