#include <ATen/ATen.h>

#include <cmath>

#include "inner_update/inner_update.h"

namespace maml_ext::inner_update {

std::vector<at::Tensor> check_and_select_lrs(at::TensorList params, at::TensorList grads,
                                             at::TensorList lrs, double lr, int64_t step,
                                             bool in_place) {
  TORCH_CHECK_VALUE(params.size() == grads.size(), "grads: expected one gradient per parameter (",
                    params.size(), "), got ", grads.size());
  TORCH_CHECK_VALUE(lrs.empty() || lrs.size() == params.size(),
                    "lrs: expected an empty list (use lr) or one learning rate per parameter (",
                    params.size(), "), got ", lrs.size());
  TORCH_CHECK_VALUE(std::isfinite(lr) && lr >= 0, "lr: expected a finite value >= 0, got ", lr);
  TORCH_CHECK_VALUE(step >= -1, "step: expected -1 (no step dimension) or a step index, got ", step);
  std::vector<at::Tensor> selected(params.size());
  int64_t tasks = -1;
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& p = params[i];
    const auto& g = grads[i];
    TORCH_CHECK(g.device() == p.device(), "grads[", i, "]: expected device ", p.device(), ", got ",
                g.device());
    TORCH_CHECK_TYPE(g.scalar_type() == p.scalar_type(), "grads[", i, "]: expected dtype ",
                     p.scalar_type(), ", got ", g.scalar_type());
    TORCH_CHECK_TYPE(at::isFloatingType(p.scalar_type()), "params[", i,
                     "]: expected a floating-point tensor, got ", p.scalar_type());
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
    if (in_place) {
      TORCH_CHECK_VALUE(p.is_contiguous(), "params[", i, "]: in-place update needs a contiguous tensor");
    }
    if (lrs.empty()) continue;
    at::Tensor a = lrs[i];
    TORCH_CHECK(a.device() == p.device(), "lrs[", i, "]: expected device ", p.device(), ", got ",
                a.device());
    TORCH_CHECK_TYPE(a.scalar_type() == p.scalar_type(), "lrs[", i, "]: expected dtype ",
                     p.scalar_type(), ", got ", a.scalar_type());
    if (step >= 0) {
      TORCH_CHECK_VALUE(a.dim() >= 1 && step < a.size(0), "lrs[", i, "]: step ", step,
                        " needs a leading step dimension longer than ", step, ", got shape ",
                        a.sizes());
      a = a.select(0, step);
    }
    // An elementwise rate matches the trailing dims of the update (it is shared by all tasks).
    const bool trailing = a.dim() <= g.dim() && g.sizes().slice(g.dim() - a.dim()) == a.sizes();
    TORCH_CHECK_VALUE(a.numel() == 1 || trailing, "lrs[", i,
                      "]: expected a scalar or the parameter's shape ", p.sizes(), ", got ",
                      a.sizes());
    selected[i] = a;
  }
  return selected;
}

}  // namespace maml_ext::inner_update
