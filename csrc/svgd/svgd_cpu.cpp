// CPU kernels of svgd_step and svgd_step_backward: one SVGD step for every task's particle set at
// once (RBF kernel, median bandwidth, Stein direction, the update) and its exact vector-Jacobian
// product, so a meta-gradient through SVGD steps stays second order. The per-task arithmetic and
// its formulas are in svgd_task.h (shared with the MLP engine's BMAML op); here the tensors are
// cut into tasks, and tasks are spread over threads, each computed by one thread in a fixed
// order: results do not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "svgd/svgd.h"
#include "svgd/svgd_task.h"

namespace maml_ext::svgd {
namespace {

template <typename scalar_t>
TaskView<scalar_t> view_task(const std::vector<at::Tensor>& ts, int64_t t, int64_t m) {
  TaskView<scalar_t> v;
  for (const auto& x : ts) {
    const int64_t d = x.numel() / (x.size(0) * m);
    v.ptr.push_back(x.data_ptr<scalar_t>() + t * m * d);
    v.dim.push_back(d);
  }
  return v;
}

// Task t's [M, D_i] output block in each tensor.
template <typename scalar_t>
std::vector<scalar_t*> out_task(const std::vector<at::Tensor>& ts, int64_t t) {
  std::vector<scalar_t*> out;
  for (const auto& x : ts) out.push_back(x.data_ptr<scalar_t>() + t * (x.numel() / x.size(0)));
  return out;
}

// The row loops (distances, dot products, the axpy combinations) are the whole cost; they
// are compiled per instruction set (AVX2, AVX-512F, baseline) and picked at load time by
// target_clones, since the rest of this file is built for the baseline x86-64 only. Each clone
// keeps the fixed order of operations, so results do not depend on the thread count (clones may
// differ from each other in the last bits where the compiler contracts to FMA).
// Elsewhere (no x86-64, no ifunc support in the C library, compilers without target_clones) one
// baseline build.
#if defined(__x86_64__) && defined(__GLIBC__) && defined(__GNUC__) && (!defined(__clang__) || __clang_major__ >= 14)
#define MAML_EXT_SVGD_CLONES __attribute__((target_clones("default", "avx2", "avx512f")))
#else
#define MAML_EXT_SVGD_CLONES
#endif

MAML_EXT_SVGD_CLONES double sq_dist(const float* a, const float* b, int64_t n) { return sq_dist_impl(a, b, n); }
MAML_EXT_SVGD_CLONES double sq_dist(const double* a, const double* b, int64_t n) { return sq_dist_impl(a, b, n); }
MAML_EXT_SVGD_CLONES double dot(const float* a, const float* b, int64_t n) { return dot_impl(a, b, n); }
MAML_EXT_SVGD_CLONES double dot(const double* a, const double* b, int64_t n) { return dot_impl(a, b, n); }
MAML_EXT_SVGD_CLONES void combine(int64_t m, int64_t d, const float* w, const float* u, const float* v,
                                  const float* x, float* out) {
  combine_impl(m, d, w, u, v, x, out);
}
MAML_EXT_SVGD_CLONES void combine(int64_t m, int64_t d, const double* w, const double* u, const double* v,
                                  const double* x, double* out) {
  combine_impl(m, d, w, u, v, x, out);
}

struct ClonedRows {
  template <typename scalar_t>
  static double sq_dist(const scalar_t* a, const scalar_t* b, int64_t n) { return svgd::sq_dist(a, b, n); }
  template <typename scalar_t>
  static double dot(const scalar_t* a, const scalar_t* b, int64_t n) { return svgd::dot(a, b, n); }
  template <typename scalar_t>
  static void combine(int64_t m, int64_t d, const scalar_t* w, const scalar_t* u, const scalar_t* v,
                      const scalar_t* x, scalar_t* out) {
    svgd::combine(m, d, w, u, v, x, out);
  }
};

template <typename scalar_t>
void forward_kernel(const std::vector<at::Tensor>& xs, const std::vector<at::Tensor>& gs, double s,
                    double e, const std::vector<at::Tensor>& outs, at::Tensor& kernel,
                    at::Tensor& bandwidth) {
  const int64_t tasks = xs[0].size(0), m = xs[0].size(1);
  scalar_t* k_out = kernel.data_ptr<scalar_t>();
  scalar_t* h_out = bandwidth.data_ptr<scalar_t>();
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    Scratch<scalar_t> sc;
    std::vector<double> k(m * m);
    for (int64_t t = begin; t < end; ++t) {
      const auto out = out_task<scalar_t>(outs, t);
      const double h = forward_task<ClonedRows>(view_task<scalar_t>(xs, t, m), view_task<scalar_t>(gs, t, m), m, s,
                                                e, out.data(), k.data(), sc);
      for (int64_t i = 0; i < m * m; ++i) k_out[t * m * m + i] = static_cast<scalar_t>(k[i]);
      h_out[t] = static_cast<scalar_t>(h);
    }
  });
}

template <typename scalar_t>
void backward_kernel(const std::vector<at::Tensor>& ps, const std::vector<at::Tensor>& xs,
                     const std::vector<at::Tensor>& gs, double s, double e,
                     const at::Tensor& kernel, const at::Tensor& bandwidth,
                     const std::vector<at::Tensor>& dxs,
                     const std::vector<at::Tensor>& dgs) {
  const int64_t tasks = xs[0].size(0), m = xs[0].size(1);
  const scalar_t* k_in = kernel.data_ptr<scalar_t>();
  const scalar_t* h_in = bandwidth.data_ptr<scalar_t>();
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    Scratch<scalar_t> sc;
    std::vector<double> k(m * m);
    for (int64_t t = begin; t < end; ++t) {
      for (int64_t i = 0; i < m * m; ++i) k[i] = static_cast<double>(k_in[t * m * m + i]);
      const auto dx = out_task<scalar_t>(dxs, t);
      const auto dg = out_task<scalar_t>(dgs, t);
      backward_task<ClonedRows>(view_task<scalar_t>(ps, t, m), view_task<scalar_t>(xs, t, m),
                                view_task<scalar_t>(gs, t, m), m, s, e, k.data(), static_cast<double>(h_in[t]),
                                dx.data(), dg.data(), sc);
    }
  });
}

std::vector<at::Tensor> contiguous(at::TensorList ts) {
  std::vector<at::Tensor> out;
  out.reserve(ts.size());
  for (const auto& t : ts) out.push_back(t.contiguous());
  return out;
}

std::vector<at::Tensor> empty_like_all(const std::vector<at::Tensor>& ts) {
  std::vector<at::Tensor> out;
  out.reserve(ts.size());
  for (const auto& t : ts) out.push_back(at::empty(t.sizes(), t.options()));
  return out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor, at::Tensor> step_cpu(at::TensorList particles,
                                                                     at::TensorList scores,
                                                                     double score_scale,
                                                                     double step_size) {
  check_inputs(particles, scores, "scores", score_scale, step_size);
  const auto xs = contiguous(particles);
  const auto gs = contiguous(scores);
  auto outs = empty_like_all(xs);
  const int64_t tasks = xs[0].size(0), m = xs[0].size(1);
  at::Tensor kernel = at::empty({tasks, m, m}, xs[0].options());
  at::Tensor bandwidth = at::empty({tasks}, xs[0].options());
  AT_DISPATCH_FLOATING_TYPES(xs[0].scalar_type(), "svgd_step_cpu", [&] {
    forward_kernel<scalar_t>(xs, gs, score_scale, step_size, outs, kernel, bandwidth);
  });
  return {outs, kernel, bandwidth};
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> step_backward_cpu(
    at::TensorList grad_out, at::TensorList particles, at::TensorList scores, double score_scale,
    double step_size, const at::Tensor& kernel, const at::Tensor& bandwidth) {
  check_inputs(particles, scores, "scores", score_scale, step_size);
  check_inputs(particles, grad_out, "grad_out", score_scale, step_size);
  const int64_t tasks = particles[0].size(0), m = particles[0].size(1);
  TORCH_CHECK_VALUE(kernel.sizes() == at::IntArrayRef({tasks, m, m}) && bandwidth.sizes() == at::IntArrayRef({tasks}),
                    "kernel, bandwidth: expected [", tasks, ", ", m, ", ", m, "] and [", tasks,
                    "], got ", kernel.sizes(), " and ", bandwidth.sizes());
  TORCH_CHECK_TYPE(kernel.scalar_type() == particles[0].scalar_type() &&
                       bandwidth.scalar_type() == particles[0].scalar_type(),
                   "kernel, bandwidth: expected dtype ", particles[0].scalar_type());
  const auto ps = contiguous(grad_out);
  const auto xs = contiguous(particles);
  const auto gs = contiguous(scores);
  auto dxs = empty_like_all(xs);
  auto dgs = empty_like_all(xs);
  const at::Tensor k = kernel.contiguous(), h = bandwidth.contiguous();
  AT_DISPATCH_FLOATING_TYPES(xs[0].scalar_type(), "svgd_step_backward_cpu", [&] {
    backward_kernel<scalar_t>(ps, xs, gs, score_scale, step_size, k, h, dxs, dgs);
  });
  return {dxs, dgs};
}

}  // namespace

TORCH_LIBRARY_IMPL(maml_ext, CPU, m) {
  m.impl("svgd_step", &step_cpu);
  m.impl("svgd_step_backward", &step_backward_cpu);
}

}  // namespace maml_ext::svgd
