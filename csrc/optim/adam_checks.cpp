#include <cmath>

#include "mlp/mlp_common.h"
#include "optim/adam.h"

namespace maml_ext::optim {

using mlp::dtype_name;

AdamCoefs adam_coefs(double step, double lr, double beta1, double beta2, double weight_decay,
                     double eps, bool maximize) {
  // In double, as torch's fused Adam computes them ("to align with non-fused adam").
  const double bias_correction2 = 1 - std::pow(beta2, step);
  return {lr,        1 - std::pow(beta1, step), std::sqrt(bias_correction2), beta2, 1 - beta1, 1 - beta2,
          eps,       weight_decay,              maximize};
}

void check_adam(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                at::TensorList exp_avg_sqs, at::TensorList state_steps, double lr, double beta1,
                double beta2, double weight_decay, double eps) {
  const size_t n = params.size();
  const std::pair<at::TensorList, const char*> lists[] = {
      {grads, "grads"}, {exp_avgs, "exp_avgs"}, {exp_avg_sqs, "exp_avg_sqs"}, {state_steps, "state_steps"}};
  for (const auto& [list, name] : lists) {
    TORCH_CHECK_VALUE(list.size() == n, name, ": expected one tensor per parameter (", n, "), got ",
                      list.size());
  }
  TORCH_CHECK_VALUE(std::isfinite(lr) && lr >= 0, "lr: expected a finite value >= 0, got ", lr);
  TORCH_CHECK_VALUE(beta1 >= 0 && beta1 < 1, "beta1: expected a value in [0, 1), got ", beta1);
  TORCH_CHECK_VALUE(beta2 >= 0 && beta2 < 1, "beta2: expected a value in [0, 1), got ", beta2);
  TORCH_CHECK_VALUE(std::isfinite(weight_decay) && weight_decay >= 0,
                    "weight_decay: expected a finite value >= 0, got ", weight_decay);
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0, "eps: expected a finite value >= 0, got ", eps);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    TORCH_CHECK_TYPE(p.scalar_type() == at::kFloat || p.scalar_type() == at::kDouble, "params[", i,
                     "]: expected float32 or float64, got ", dtype_name(p.scalar_type()));
    TORCH_CHECK_VALUE(p.is_contiguous(), "params[", i, "]: expected a contiguous tensor");
    for (const auto& [list, name] : lists) {
      const at::Tensor& t = list[i];
      TORCH_CHECK(t.device() == p.device(), name, "[", i, "]: expected device ", p.device(), ", got ",
                  t.device());
      if (list.data() == state_steps.data()) {
        TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, name, "[", i,
                         "]: expected a float32 step count, got ", dtype_name(t.scalar_type()));
        TORCH_CHECK_VALUE(t.numel() == 1, name, "[", i, "]: expected one element, got shape ", t.sizes());
        continue;
      }
      TORCH_CHECK_TYPE(t.scalar_type() == p.scalar_type(), name, "[", i, "]: expected dtype ",
                       dtype_name(p.scalar_type()), ", got ", dtype_name(t.scalar_type()));
      TORCH_CHECK_VALUE(t.sizes() == p.sizes(), name, "[", i, "]: expected shape ", p.sizes(), ", got ",
                        t.sizes());
      TORCH_CHECK_VALUE(t.is_contiguous(), name, "[", i, "]: expected a contiguous tensor");
    }
  }
}

}  // namespace maml_ext::optim
