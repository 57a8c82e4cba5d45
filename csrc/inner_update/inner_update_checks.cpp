// The checks of inner_update / inner_update_ (generated from maml_ext/reference/_checks.py) and
// the per-step selection of the learning rates they validate.
#include <ATen/ATen.h>

#include "inner_update/inner_update.h"
#include "maml_ext_checks.h"

namespace maml_ext::inner_update {

int64_t check_inputs(at::TensorList params, at::TensorList grads, at::TensorList lrs, double lr,
                     std::optional<int64_t> step, bool in_place) {
  checks::check_inner_update(params, grads, lrs, lr, step, in_place);
  return step.value_or(kNoStep);
}

std::vector<at::Tensor> select_lrs(at::TensorList lrs, int64_t step, size_t count) {
  std::vector<at::Tensor> selected(count);
  for (size_t i = 0; i < lrs.size(); ++i) selected[i] = step == kNoStep ? lrs[i] : lrs[i].select(0, step);
  return selected;
}

}  // namespace maml_ext::inner_update
