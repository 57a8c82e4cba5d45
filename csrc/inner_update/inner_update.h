// Checks shared by the CPU and CUDA kernels of inner_update / inner_update_.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace maml_ext::inner_update {

// Validates the lists and returns, per parameter, the learning-rate tensor for this step
// (undefined when the scalar `lr` applies). `in_place`: params are updated in place, so grads
// must have exactly their shape.
std::vector<at::Tensor> check_and_select_lrs(at::TensorList params, at::TensorList grads,
                                             at::TensorList lrs, double lr, int64_t step,
                                             bool in_place);

// A device's update: writes theta - alpha * g for every tensor into `outs`.
using ApplyFn = void (*)(at::TensorList params, at::TensorList grads, at::TensorList lrs, double lr,
                         int64_t step, at::TensorList outs, bool in_place);

// The two registered ops of one device, built from its ApplyFn.
template <ApplyFn apply>
std::vector<at::Tensor> functional(at::TensorList params, at::TensorList grads, at::TensorList lrs,
                                   double lr, int64_t step) {
  std::vector<at::Tensor> outs;
  outs.reserve(grads.size());
  for (const auto& g : grads) outs.push_back(at::empty(g.sizes(), g.options()));
  apply(params, grads, lrs, lr, step, outs, false);
  return outs;
}

template <ApplyFn apply>
void in_place(at::TensorList params, at::TensorList grads, at::TensorList lrs, double lr,
              int64_t step) {
  apply(params, grads, lrs, lr, step, params, true);
}

}  // namespace maml_ext::inner_update
