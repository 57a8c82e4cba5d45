// CPU kernel of adam_step_: one op call updates every parameter tensor (torch's _fused_adam_ is one
// kernel launch with its own checks, dispatch and parallel loop per tensor, which costs more than
// the arithmetic for the few small tensors of a meta-learned MLP).
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <torch/library.h>

#include <algorithm>
#include <string>

#include "optim/adam.h"

namespace maml_ext::optim {
namespace {

enum class Capability { Default, Avx2, Avx512 };

// The capability torch's own CPU kernels use (ATEN_CPU_CAPABILITY honoured), when this build has
// it: the same vector width as torch's fused Adam, hence the same rounding.
Capability capability() {
  static const Capability value = [] {
    const std::string torch_cap = at::get_cpu_capability();
#ifdef MAML_EXT_HAVE_AVX512
    if (torch_cap == "AVX512") return Capability::Avx512;
#endif
#ifdef MAML_EXT_HAVE_AVX2
    if (torch_cap == "AVX2" || torch_cap == "AVX512") return Capability::Avx2;
#endif
    return Capability::Default;
  }();
  return value;
}

template <typename T>
void update(T* param, const T* grad, T* exp_avg, T* exp_avg_sq, int64_t n, const AdamCoefs& c) {
  switch (capability()) {
#ifdef MAML_EXT_HAVE_AVX512
    case Capability::Avx512:
      return AVX512::adam_update(param, grad, exp_avg, exp_avg_sq, n, c);
#endif
#ifdef MAML_EXT_HAVE_AVX2
    case Capability::Avx2:
      return AVX2::adam_update(param, grad, exp_avg, exp_avg_sq, n, c);
#endif
    default:
      return DEFAULT::adam_update(param, grad, exp_avg, exp_avg_sq, n, c);
  }
}

// Large tensors are split over threads in whole 64-byte units, as torch splits them: every piece
// but the last is a multiple of the vector width, so the split does not change the rounding.
constexpr int64_t kGrainUnits = 1 << 12;

void adam_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                   at::TensorList exp_avg_sqs, at::TensorList state_steps, double lr, double beta1,
                   double beta2, double weight_decay, double eps, bool maximize) {
  check_adam(params, grads, exp_avgs, exp_avg_sqs, state_steps, lr, beta1, beta2, weight_decay, eps);
  for (size_t i = 0; i < params.size(); ++i) {
    const double step = *state_steps[i].const_data_ptr<float>();
    const AdamCoefs c = adam_coefs(step, lr, beta1, beta2, weight_decay, eps, maximize);
    AT_DISPATCH_FLOATING_TYPES(params[i].scalar_type(), "adam_step_cpu", [&] {
      scalar_t* p = params[i].mutable_data_ptr<scalar_t>();
      const scalar_t* g = grads[i].const_data_ptr<scalar_t>();
      scalar_t* m = exp_avgs[i].mutable_data_ptr<scalar_t>();
      scalar_t* v = exp_avg_sqs[i].mutable_data_ptr<scalar_t>();
      const int64_t n = params[i].numel(), unit = 64 / sizeof(scalar_t);
      at::parallel_for(0, (n + unit - 1) / unit, kGrainUnits, [&](int64_t u0, int64_t u1) {
        const int64_t b = u0 * unit, e = std::min(n, u1 * unit);
        update<scalar_t>(p + b, g + b, m + b, v + b, e - b, c);
      });
    });
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(maml_ext, CPU, m) { m.impl("adam_step_", &adam_step_cpu); }

}  // namespace maml_ext::optim
