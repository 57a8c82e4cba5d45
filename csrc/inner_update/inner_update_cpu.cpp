// CPU kernels of inner_update (functional) and inner_update_ (in place): one call updates every
// parameter tensor of every task, theta'_t = theta(_t) - alpha * g_t.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "inner_update/inner_update.h"

namespace maml_ext::inner_update {
namespace {

constexpr int64_t kGrain = 32768;

// out[j] = theta[j % n_theta] - alpha[j % n_alpha] * g[j] over the n elements of g.
template <typename scalar_t>
void update(const scalar_t* theta, int64_t n_theta, const scalar_t* alpha, int64_t n_alpha,
            double lr, const scalar_t* g, scalar_t* out, int64_t n) {
  using opmath_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j) {
      const opmath_t a = alpha ? static_cast<opmath_t>(alpha[j % n_alpha]) : static_cast<opmath_t>(lr);
      out[j] = static_cast<scalar_t>(static_cast<opmath_t>(theta[j % n_theta]) -
                                     a * static_cast<opmath_t>(g[j]));
    }
  });
}

void apply(at::TensorList params, at::TensorList grads, at::TensorList lrs, double lr, int64_t step,
           at::TensorList outs, bool in_place) {
  const auto alphas = select_lrs(lrs, step, params.size());  // inputs checked by check_inputs
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor p = params[i].contiguous();
    const at::Tensor g = grads[i].contiguous();
    const at::Tensor a = alphas[i].defined() ? alphas[i].contiguous() : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "inner_update_cpu", [&] {
      update<scalar_t>(p.data_ptr<scalar_t>(), std::max<int64_t>(p.numel(), 1),
                       a.defined() ? a.data_ptr<scalar_t>() : nullptr,
                       a.defined() ? a.numel() : 1, lr, g.data_ptr<scalar_t>(),
                       outs[i].data_ptr<scalar_t>(), g.numel());
    });
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(maml_ext, CPU, m) {
  m.impl("inner_update", &functional<apply>);
  m.impl("inner_update_", &in_place<apply>);
}

}  // namespace maml_ext::inner_update
