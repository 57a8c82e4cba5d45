// CPU kernels of svgd_direction and svgd_direction_backward: one SVGD step's direction for every
// task's particle set at once (RBF kernel, median bandwidth, Stein direction) and its exact
// vector-Jacobian product, so a meta-gradient through SVGD steps stays second order.
//
// Per task, with particles x_a (a = 0..M-1, each the concatenation of its slices of all tensors),
// scores g_a = grad log p(x_a), S_ab = |x_a - x_b|^2, h = max(med(sqrt S_ab, a < b)^2 / log M, 1e-12)
// (h = 1 for M = 1; no gradient through h), K_ab = exp(-S_ab / h), c = 2 / h:
//   phi_a = 1/M sum_b K_ab (g_b + c (x_a - x_b)).
// Backward, given P = dL/dphi:
//   dL/dg_b = 1/M sum_a K_ab P_a,
//   Kbar_ab = 1/M <P_a, g_b + c (x_a - x_b)>  (a != b; K_aa = 1 is constant),
//   B_ab = -(Kbar_ab + Kbar_ba) K_ab / h      (dL/dS, symmetrised),
//   dL/dx_a = sum_b [c/M K_ab (P_a - P_b) + 2 B_ab (x_a - x_b)].
// Tasks are independent and each is computed by one thread in a fixed order: results do not
// depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
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

template <typename acc_t>
acc_t median_bandwidth(const std::vector<acc_t>& sq, int64_t m) {
  if (m == 1) return acc_t(1);
  std::vector<acc_t> d;
  d.reserve(m * (m - 1) / 2);
  for (int64_t a = 0; a < m; ++a)
    for (int64_t b = a + 1; b < m; ++b) d.push_back(std::sqrt(sq[a * m + b]));
  const size_t n = d.size(), mid = n / 2;
  std::nth_element(d.begin(), d.begin() + mid, d.end());
  acc_t med = d[mid];
  if (n % 2 == 0) med = (med + *std::max_element(d.begin(), d.begin() + mid)) / 2;
  return std::max(med * med / static_cast<acc_t>(std::log(static_cast<double>(m))), acc_t(1e-12));
}

template <typename scalar_t>
void forward_kernel(const std::vector<at::Tensor>& xs, const std::vector<at::Tensor>& gs,
                    const std::vector<at::Tensor>& phis, at::Tensor& kernel, at::Tensor& bandwidth) {
  using acc_t = at::acc_type<scalar_t, false>;
  const int64_t tasks = xs[0].size(0), m = xs[0].size(1);
  scalar_t* k_out = kernel.data_ptr<scalar_t>();
  scalar_t* h_out = bandwidth.data_ptr<scalar_t>();
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> sq(m * m), k(m * m);
    for (int64_t t = begin; t < end; ++t) {
      const auto x = view_task<scalar_t>(xs, t, m);
      const auto g = view_task<scalar_t>(gs, t, m);
      std::fill(sq.begin(), sq.end(), acc_t(0));
      for (size_t i = 0; i < x.ptr.size(); ++i) {
        const int64_t d = x.dim[i];
        for (int64_t a = 0; a < m; ++a)
          for (int64_t b = a + 1; b < m; ++b) {
            const scalar_t* xa = x.ptr[i] + a * d;
            const scalar_t* xb = x.ptr[i] + b * d;
            acc_t s = 0;
            for (int64_t j = 0; j < d; ++j) {
              const acc_t diff = static_cast<acc_t>(xa[j]) - static_cast<acc_t>(xb[j]);
              s += diff * diff;
            }
            sq[a * m + b] += s;
          }
      }
      for (int64_t a = 0; a < m; ++a)
        for (int64_t b = 0; b < a; ++b) sq[a * m + b] = sq[b * m + a];
      const acc_t h = median_bandwidth(sq, m);
      const acc_t c = acc_t(2) / h, inv_m = acc_t(1) / static_cast<acc_t>(m);
      for (int64_t a = 0; a < m; ++a)
        for (int64_t b = 0; b < m; ++b) {
          k[a * m + b] = a == b ? acc_t(1) : std::exp(-sq[a * m + b] / h);
          k_out[(t * m + a) * m + b] = static_cast<scalar_t>(k[a * m + b]);
        }
      h_out[t] = static_cast<scalar_t>(h);
      for (size_t i = 0; i < x.ptr.size(); ++i) {
        const int64_t d = x.dim[i];
        scalar_t* out = phis[i].data_ptr<scalar_t>() + t * m * d;
        for (int64_t a = 0; a < m; ++a) {
          const scalar_t* xa = x.ptr[i] + a * d;
          for (int64_t j = 0; j < d; ++j) {
            acc_t s = 0;
            for (int64_t b = 0; b < m; ++b) {
              const acc_t kab = k[a * m + b];
              s += kab * (static_cast<acc_t>(g.ptr[i][b * d + j]) +
                          c * (static_cast<acc_t>(xa[j]) - static_cast<acc_t>(x.ptr[i][b * d + j])));
            }
            out[a * d + j] = static_cast<scalar_t>(s * inv_m);
          }
        }
      }
    }
  });
}

template <typename scalar_t>
void backward_kernel(const std::vector<at::Tensor>& ps, const std::vector<at::Tensor>& xs,
                     const std::vector<at::Tensor>& gs, const at::Tensor& kernel,
                     const at::Tensor& bandwidth, const std::vector<at::Tensor>& dxs,
                     const std::vector<at::Tensor>& dgs) {
  using acc_t = at::acc_type<scalar_t, false>;
  const int64_t tasks = xs[0].size(0), m = xs[0].size(1);
  const scalar_t* k_in = kernel.data_ptr<scalar_t>();
  const scalar_t* h_in = bandwidth.data_ptr<scalar_t>();
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> k(m * m), kbar(m * m), b_mat(m * m);
    for (int64_t t = begin; t < end; ++t) {
      const auto x = view_task<scalar_t>(xs, t, m);
      const auto g = view_task<scalar_t>(gs, t, m);
      const auto p = view_task<scalar_t>(ps, t, m);
      for (int64_t e = 0; e < m * m; ++e) k[e] = static_cast<acc_t>(k_in[t * m * m + e]);
      const acc_t h = static_cast<acc_t>(h_in[t]);
      const acc_t c = acc_t(2) / h, inv_m = acc_t(1) / static_cast<acc_t>(m);
      std::fill(kbar.begin(), kbar.end(), acc_t(0));
      for (size_t i = 0; i < x.ptr.size(); ++i) {
        const int64_t d = x.dim[i];
        for (int64_t a = 0; a < m; ++a)
          for (int64_t b = 0; b < m; ++b) {
            if (a == b) continue;
            const scalar_t* pa = p.ptr[i] + a * d;
            const scalar_t* xa = x.ptr[i] + a * d;
            const scalar_t* xb = x.ptr[i] + b * d;
            const scalar_t* gb = g.ptr[i] + b * d;
            acc_t s = 0;
            for (int64_t j = 0; j < d; ++j)
              s += static_cast<acc_t>(pa[j]) *
                   (static_cast<acc_t>(gb[j]) + c * (static_cast<acc_t>(xa[j]) - static_cast<acc_t>(xb[j])));
            kbar[a * m + b] += s * inv_m;
          }
      }
      for (int64_t a = 0; a < m; ++a)
        for (int64_t b = 0; b < m; ++b)
          b_mat[a * m + b] = a == b ? acc_t(0) : -(kbar[a * m + b] + kbar[b * m + a]) * k[a * m + b] / h;
      for (size_t i = 0; i < x.ptr.size(); ++i) {
        const int64_t d = x.dim[i];
        scalar_t* dx = dxs[i].data_ptr<scalar_t>() + t * m * d;
        scalar_t* dg = dgs[i].data_ptr<scalar_t>() + t * m * d;
        for (int64_t a = 0; a < m; ++a)
          for (int64_t j = 0; j < d; ++j) {
            const acc_t pa = static_cast<acc_t>(p.ptr[i][a * d + j]);
            const acc_t xa = static_cast<acc_t>(x.ptr[i][a * d + j]);
            acc_t sx = 0, sg = 0;
            for (int64_t b = 0; b < m; ++b) {
              const acc_t kab = k[a * m + b];
              const acc_t pb = static_cast<acc_t>(p.ptr[i][b * d + j]);
              sg += kab * pb;
              sx += c * inv_m * kab * (pa - pb) +
                    2 * b_mat[a * m + b] * (xa - static_cast<acc_t>(x.ptr[i][b * d + j]));
            }
            dg[a * d + j] = static_cast<scalar_t>(sg * inv_m);
            dx[a * d + j] = static_cast<scalar_t>(sx);
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

std::tuple<std::vector<at::Tensor>, at::Tensor, at::Tensor> direction_cpu(at::TensorList particles,
                                                                          at::TensorList log_p_grads) {
  check_inputs(particles, log_p_grads, "log_p_grads");
  const auto xs = contiguous(particles);
  const auto gs = contiguous(log_p_grads);
  auto phis = empty_like_all(xs);
  const int64_t tasks = xs[0].size(0), m = xs[0].size(1);
  at::Tensor kernel = at::empty({tasks, m, m}, xs[0].options());
  at::Tensor bandwidth = at::empty({tasks}, xs[0].options());
  AT_DISPATCH_FLOATING_TYPES(xs[0].scalar_type(), "svgd_direction_cpu", [&] {
    forward_kernel<scalar_t>(xs, gs, phis, kernel, bandwidth);
  });
  return {phis, kernel, bandwidth};
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> direction_backward_cpu(
    at::TensorList grad_phi, at::TensorList particles, at::TensorList log_p_grads,
    const at::Tensor& kernel, const at::Tensor& bandwidth) {
  check_inputs(particles, log_p_grads, "log_p_grads");
  check_inputs(particles, grad_phi, "grad_phi");
  const int64_t tasks = particles[0].size(0), m = particles[0].size(1);
  TORCH_CHECK_VALUE(kernel.sizes() == at::IntArrayRef({tasks, m, m}) && bandwidth.sizes() == at::IntArrayRef({tasks}),
                    "kernel, bandwidth: expected [", tasks, ", ", m, ", ", m, "] and [", tasks,
                    "], got ", kernel.sizes(), " and ", bandwidth.sizes());
  TORCH_CHECK_VALUE(kernel.scalar_type() == particles[0].scalar_type() &&
                        bandwidth.scalar_type() == particles[0].scalar_type(),
                    "kernel, bandwidth: expected dtype ", particles[0].scalar_type());
  const auto ps = contiguous(grad_phi);
  const auto xs = contiguous(particles);
  const auto gs = contiguous(log_p_grads);
  auto dxs = empty_like_all(xs);
  auto dgs = empty_like_all(xs);
  const at::Tensor k = kernel.contiguous(), h = bandwidth.contiguous();
  AT_DISPATCH_FLOATING_TYPES(xs[0].scalar_type(), "svgd_direction_backward_cpu", [&] {
    backward_kernel<scalar_t>(ps, xs, gs, k, h, dxs, dgs);
  });
  return {dxs, dgs};
}

}  // namespace

TORCH_LIBRARY_IMPL(maml_ext, CPU, m) {
  m.impl("svgd_direction", &direction_cpu);
  m.impl("svgd_direction_backward", &direction_backward_cpu);
}

}  // namespace maml_ext::svgd
