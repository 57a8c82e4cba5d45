// CPU kernels of svgd_step and svgd_step_backward: one SVGD step for every task's particle set at
// once (RBF kernel, median bandwidth, Stein direction, the update) and its exact vector-Jacobian
// product, so a meta-gradient through SVGD steps stays second order.
//
// Per task, with particles x_a (a = 0..M-1, each the concatenation of its slices of all tensors),
// scores grad log p(x_a) = s g_a (s = score_scale), S_ab = |x_a - x_b|^2,
// h = max(med(sqrt S_ab, a < b)^2 / log M, 1e-12) (h = 1 for M = 1; no gradient through h),
// K_ab = exp(-S_ab / h), c = 2 / h, r_a = sum_b K_ab, and step size e:
//   out_a = x_a + e phi_a,   phi_a = 1/M sum_b K_ab (s g_b + c (x_a - x_b)).
// Backward, given P = dL/dout:
//   dL/dg_b = e s/M sum_a K_ab P_a,
//   Kbar_ab = e/M <P_a, s g_b + c (x_a - x_b)>  (a != b; K_aa = 1 is constant),
//   B_ab = -(Kbar_ab + Kbar_ba) K_ab / h       (dL/dS, symmetrised),
//   dL/dx_a = P_a + e c/M (r_a P_a - sum_b K_ab P_b) + 2 sum_b B_ab (x_a - x_b).
// Tasks are independent and each is computed by one thread in a fixed order: results do not
// depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "svgd/svgd.h"

namespace maml_ext::svgd {
namespace {

// Row pointers of one task's particle block [M, D_i] in each tensor.
template <typename scalar_t>
struct TaskView {
  std::vector<const scalar_t*> ptr;
  std::vector<int64_t> dim;
};

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

// The row loops below (distances, dot products, the axpy combinations) are the whole cost; they
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

// Reductions over a row split into kLanes independent partial sums (vectorisable without
// reassociation), combined in a fixed order: the result does not depend on threads or alignment.
constexpr int64_t kLanes = 16;

template <typename scalar_t, typename F>
[[gnu::always_inline]] inline double lane_sum(int64_t n, F term) {
  using op_t = at::opmath_type<scalar_t>;
  op_t lanes[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
#pragma GCC unroll 16
    for (int64_t l = 0; l < kLanes; ++l) lanes[l] += term(j + l);
  }
  double total = 0;
  for (; j < n; ++j) total += static_cast<double>(term(j));
  for (int64_t l = 0; l < kLanes; ++l) total += static_cast<double>(lanes[l]);
  return total;
}

template <typename scalar_t>
[[gnu::always_inline]] inline double sq_dist_impl(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b, int64_t n) {
  using op_t = at::opmath_type<scalar_t>;
  return lane_sum<scalar_t>(n, [&](int64_t j) {
    const op_t d = static_cast<op_t>(a[j]) - static_cast<op_t>(b[j]);
    return d * d;
  });
}

template <typename scalar_t>
[[gnu::always_inline]] inline double dot_impl(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b, int64_t n) {
  using op_t = at::opmath_type<scalar_t>;
  return lane_sum<scalar_t>(n, [&](int64_t j) { return static_cast<op_t>(a[j]) * static_cast<op_t>(b[j]); });
}

MAML_EXT_SVGD_CLONES double sq_dist(const float* a, const float* b, int64_t n) { return sq_dist_impl(a, b, n); }
MAML_EXT_SVGD_CLONES double sq_dist(const double* a, const double* b, int64_t n) { return sq_dist_impl(a, b, n); }
MAML_EXT_SVGD_CLONES double dot(const float* a, const float* b, int64_t n) { return dot_impl(a, b, n); }
MAML_EXT_SVGD_CLONES double dot(const double* a, const double* b, int64_t n) { return dot_impl(a, b, n); }

double median_bandwidth(const std::vector<double>& sq, int64_t m) {
  if (m == 1) return 1.0;
  std::vector<double> d;
  d.reserve(m * (m - 1) / 2);
  for (int64_t a = 0; a < m; ++a)
    for (int64_t b = a + 1; b < m; ++b) d.push_back(std::sqrt(sq[a * m + b]));
  const size_t n = d.size(), mid = n / 2;
  std::nth_element(d.begin(), d.begin() + mid, d.end());
  double med = d[mid];
  if (n % 2 == 0) med = (med + *std::max_element(d.begin(), d.begin() + mid)) / 2;
  return std::max(med * med / std::log(static_cast<double>(m)), 1e-12);
}

// out[j] = su * u_a[j] + sx * x_a[j] + sum_b (w[b] u_b[j] + v[b] x_b[j]) over the M rows of one
// tensor block (u_a, x_a: row a): the axpy form of the direction and both backward outputs.
template <typename scalar_t>
[[gnu::always_inline]] inline void combine_rows_impl(const double* w, const scalar_t* u, const double* v,
                                                     const scalar_t* x, double su, double sx, int64_t a,
                                                     int64_t m, int64_t d, at::opmath_type<scalar_t>* acc_buf,
                                                     scalar_t* out) {
  using op_t = at::opmath_type<scalar_t>;
  op_t* __restrict__ acc = acc_buf;
  const op_t u_w = static_cast<op_t>(su), x_w = static_cast<op_t>(sx);
  const scalar_t* __restrict__ ua = u + a * d;
  const scalar_t* __restrict__ xa = x + a * d;
  for (int64_t j = 0; j < d; ++j) acc[j] = u_w * static_cast<op_t>(ua[j]) + x_w * static_cast<op_t>(xa[j]);
  for (int64_t b = 0; b < m; ++b) {
    const op_t wb = static_cast<op_t>(w[b]), vb = static_cast<op_t>(v[b]);
    const scalar_t* __restrict__ ub = u + b * d;
    const scalar_t* __restrict__ xb = x + b * d;
    for (int64_t j = 0; j < d; ++j) acc[j] += wb * static_cast<op_t>(ub[j]) + vb * static_cast<op_t>(xb[j]);
  }
  scalar_t* __restrict__ o = out;
  for (int64_t j = 0; j < d; ++j) o[j] = static_cast<scalar_t>(acc[j]);
}

MAML_EXT_SVGD_CLONES void combine_rows(const double* w, const float* u, const double* v, const float* x, double su,
                                       double sx, int64_t a, int64_t m, int64_t d, std::vector<float>& acc,
                                       float* out) {
  combine_rows_impl(w, u, v, x, su, sx, a, m, d, acc.data(), out);
}
MAML_EXT_SVGD_CLONES void combine_rows(const double* w, const double* u, const double* v, const double* x, double su,
                                       double sx, int64_t a, int64_t m, int64_t d, std::vector<double>& acc,
                                       double* out) {
  combine_rows_impl(w, u, v, x, su, sx, a, m, d, acc.data(), out);
}

template <typename scalar_t>
int64_t max_dim(const TaskView<scalar_t>& v) {
  return v.dim.empty() ? 0 : *std::max_element(v.dim.begin(), v.dim.end());
}

template <typename scalar_t>
void forward_kernel(const std::vector<at::Tensor>& xs, const std::vector<at::Tensor>& gs, double s,
                    double e, const std::vector<at::Tensor>& outs, at::Tensor& kernel,
                    at::Tensor& bandwidth) {
  const int64_t tasks = xs[0].size(0), m = xs[0].size(1);
  scalar_t* k_out = kernel.data_ptr<scalar_t>();
  scalar_t* h_out = bandwidth.data_ptr<scalar_t>();
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> sq(m * m), k(m * m), w(m), v(m);
    std::vector<at::opmath_type<scalar_t>> acc;
    for (int64_t t = begin; t < end; ++t) {
      const auto x = view_task<scalar_t>(xs, t, m);
      const auto g = view_task<scalar_t>(gs, t, m);
      acc.resize(max_dim(x));
      std::fill(sq.begin(), sq.end(), 0.0);
      for (size_t i = 0; i < x.ptr.size(); ++i)
        for (int64_t a = 0; a < m; ++a)
          for (int64_t b = a + 1; b < m; ++b)
            sq[a * m + b] += sq_dist(x.ptr[i] + a * x.dim[i], x.ptr[i] + b * x.dim[i], x.dim[i]);
      const double h = median_bandwidth(sq, m);
      const double c = 2.0 / h, inv_m = 1.0 / static_cast<double>(m);
      for (int64_t a = 0; a < m; ++a)
        for (int64_t b = 0; b < m; ++b) {
          const double s = a < b ? sq[a * m + b] : sq[b * m + a];
          k[a * m + b] = a == b ? 1.0 : std::exp(-s / h);
          k_out[(t * m + a) * m + b] = static_cast<scalar_t>(k[a * m + b]);
        }
      h_out[t] = static_cast<scalar_t>(h);
      // out_a = (1 + e c r_a / M) x_a + e/M sum_b K_ab (s g_b - c x_b).
      for (int64_t a = 0; a < m; ++a) {
        double r = 0;
        for (int64_t b = 0; b < m; ++b) {
          r += k[a * m + b];
          w[b] = e * s * inv_m * k[a * m + b];
          v[b] = -e * c * inv_m * k[a * m + b];
        }
        for (size_t i = 0; i < x.ptr.size(); ++i) {
          const int64_t d = x.dim[i];
          combine_rows(w.data(), g.ptr[i], v.data(), x.ptr[i], 0.0, 1.0 + e * c * inv_m * r, a, m, d,
                       acc, outs[i].data_ptr<scalar_t>() + (t * m + a) * d);
        }
      }
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
    std::vector<double> k(m * m), pg(m * m), px(m * m), b_mat(m * m), w(m), v(m);
    std::vector<at::opmath_type<scalar_t>> acc;
    for (int64_t t = begin; t < end; ++t) {
      const auto x = view_task<scalar_t>(xs, t, m);
      const auto g = view_task<scalar_t>(gs, t, m);
      const auto p = view_task<scalar_t>(ps, t, m);
      acc.resize(max_dim(x));
      for (int64_t e = 0; e < m * m; ++e) k[e] = static_cast<double>(k_in[t * m * m + e]);
      const double h = static_cast<double>(h_in[t]);
      const double c = 2.0 / h, inv_m = 1.0 / static_cast<double>(m);
      // <P_a, g_b> and <P_a, x_b>, summed over tensors.
      std::fill(pg.begin(), pg.end(), 0.0);
      std::fill(px.begin(), px.end(), 0.0);
      for (size_t i = 0; i < x.ptr.size(); ++i) {
        const int64_t d = x.dim[i];
        for (int64_t a = 0; a < m; ++a)
          for (int64_t b = 0; b < m; ++b) {
            pg[a * m + b] += dot(p.ptr[i] + a * d, g.ptr[i] + b * d, d);
            px[a * m + b] += dot(p.ptr[i] + a * d, x.ptr[i] + b * d, d);
          }
      }
      // Kbar_ab = e/M (s <P_a, g_b> + c (<P_a, x_a> - <P_a, x_b>)), B = -(Kbar + Kbar^T) K / h.
      for (int64_t a = 0; a < m; ++a)
        for (int64_t b = 0; b < m; ++b) {
          if (a == b) {
            b_mat[a * m + b] = 0;
            continue;
          }
          const double kab = e * inv_m * (s * pg[a * m + b] + c * (px[a * m + a] - px[a * m + b]));
          const double kba = e * inv_m * (s * pg[b * m + a] + c * (px[b * m + b] - px[b * m + a]));
          b_mat[a * m + b] = -(kab + kba) * k[a * m + b] / h;
        }
      for (int64_t a = 0; a < m; ++a) {
        // dg_a = e s/M sum_b K_ab P_b.
        for (int64_t b = 0; b < m; ++b) {
          w[b] = e * s * inv_m * k[a * m + b];
          v[b] = 0;
        }
        for (size_t i = 0; i < x.ptr.size(); ++i) {
          const int64_t d = x.dim[i];
          combine_rows(w.data(), p.ptr[i], v.data(), x.ptr[i], 0.0, 0.0, a, m, d, acc,
                       dgs[i].data_ptr<scalar_t>() + (t * m + a) * d);
        }
        // dx_a = (1 + e c r_a/M) P_a - e c/M sum_b K_ab P_b + 2 (sum_b B_ab) x_a - 2 sum_b B_ab x_b.
        double r = 0, b_sum = 0;
        for (int64_t b = 0; b < m; ++b) {
          r += k[a * m + b];
          b_sum += b_mat[a * m + b];
          w[b] = -e * c * inv_m * k[a * m + b];
          v[b] = -2.0 * b_mat[a * m + b];
        }
        for (size_t i = 0; i < x.ptr.size(); ++i) {
          const int64_t d = x.dim[i];
          combine_rows(w.data(), p.ptr[i], v.data(), x.ptr[i], 1.0 + e * c * inv_m * r, 2.0 * b_sum, a, m, d,
                       acc, dxs[i].data_ptr<scalar_t>() + (t * m + a) * d);
        }
      }
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
