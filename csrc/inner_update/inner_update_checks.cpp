#include <ATen/ATen.h>

#include <cmath>

#include "inner_update/inner_update.h"
#include "mlp/mlp_common.h"

namespace maml_ext::inner_update {

using mlp::dtype_name;

int64_t step_index(std::optional<int64_t> step) {
  if (!step.has_value()) return kNoStep;
  TORCH_CHECK_VALUE(*step >= 0, "step: expected None (no step dimension) or a step index >= 0, got ",
                    *step);
  return *step;
}

std::vector<at::Tensor> check_and_select_lrs(at::TensorList params, at::TensorList grads,
                                             at::TensorList lrs, double lr, int64_t step,
                                             bool in_place) {
  TORCH_CHECK_VALUE(params.size() == grads.size(), "grads: expected one gradient per parameter (",
                    params.size(), "), got ", grads.size());
  TORCH_CHECK_VALUE(lrs.empty() || lrs.size() == params.size(),
                    "lrs: expected an empty list (use lr) or one learning rate per parameter (",
                    params.size(), "), got ", lrs.size());
  TORCH_CHECK_VALUE(std::isfinite(lr), "lr: expected a finite value, got ", lr);
  std::vector<at::Tensor> selected(params.size());
  int64_t tasks = -1;
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& p = params[i];
    const auto& g = grads[i];
    TORCH_CHECK(g.device() == p.device(), "grads[", i, "]: expected device ", p.device(), ", got ",
                g.device());
    TORCH_CHECK_TYPE(g.scalar_type() == p.scalar_type(), "grads[", i, "]: expected dtype ",
                     dtype_name(p.scalar_type()), ", got ", dtype_name(g.scalar_type()));
    TORCH_CHECK_TYPE(at::isFloatingType(p.scalar_type()), "params[", i,
                     "]: expected a floating-point tensor, got ", dtype_name(p.scalar_type()));
    const bool same = g.sizes() == p.sizes();
    const bool per_task = g.dim() == p.dim() + 1 && g.sizes().slice(1) == p.sizes();
    TORCH_CHECK_VALUE(same || (!in_place && per_task), "grads[", i, "]: expected shape ", p.sizes(),
                      in_place ? "" : " or [T, *that shape] for a shared parameter", ", got ",
                      g.sizes());
    if (per_task) {
      TORCH_CHECK_VALUE(tasks < 0 || tasks == g.size(0), "grads[", i, "]: expected T=", tasks,
                        " tasks like the other gradients, got ", g.size(0));
      tasks = g.size(0);
    }
    if (lrs.empty()) continue;
    at::Tensor a = lrs[i];
    TORCH_CHECK(a.device() == p.device(), "lrs[", i, "]: expected device ", p.device(), ", got ",
                a.device());
    TORCH_CHECK_TYPE(a.scalar_type() == p.scalar_type(), "lrs[", i, "]: expected dtype ",
                     dtype_name(p.scalar_type()), ", got ", dtype_name(a.scalar_type()));
    if (step != kNoStep) {
      TORCH_CHECK_VALUE(a.dim() >= 1 && step < a.size(0), "lrs[", i, "]: step ", step,
                        " needs a leading step dimension longer than ", step, ", got shape ",
                        a.sizes());
      a = a.select(0, step);
    }
    // An elementwise rate has the parameter's shape, or its trailing dims for a per-task
    // parameter [T, ...] (shared by all tasks); never a task dimension of its own.
    const bool trailing = a.dim() <= p.dim() && p.sizes().slice(p.dim() - a.dim()) == a.sizes();
    TORCH_CHECK_VALUE(a.numel() == 1 || trailing, "lrs[", i,
                      "]: expected a scalar or the parameter's shape ", p.sizes(), ", got ",
                      a.sizes());
    selected[i] = a;
  }
  return selected;
}

}  // namespace maml_ext::inner_update
