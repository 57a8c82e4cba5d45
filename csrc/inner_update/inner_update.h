// Checks shared by the CPU and CUDA kernels of inner_update / inner_update_.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

namespace maml_ext::inner_update {

// Validates the lists and returns, per parameter, the learning-rate tensor for this step
// (undefined when the scalar `lr` applies). `in_place`: params are updated in place, so grads
// must have exactly their shape.
std::vector<at::Tensor> check_and_select_lrs(at::TensorList params, at::TensorList grads,
                                             at::TensorList lrs, double lr, int64_t step,
                                             bool in_place);

// The registered ops take `int? step`; a device's ApplyFn receives kNoStep when it is absent.
constexpr int64_t kNoStep = -1;
int64_t step_index(std::optional<int64_t> step);

// A device's update: writes theta - alpha * g for every tensor into `outs`.
using ApplyFn = void (*)(at::TensorList params, at::TensorList grads, at::TensorList lrs, double lr,
                         int64_t step, at::TensorList outs, bool in_place);

// The two registered ops of one device, built from its ApplyFn.
template <ApplyFn apply>
std::vector<at::Tensor> functional(at::TensorList params, at::TensorList grads, at::TensorList lrs,
                                   double lr, std::optional<int64_t> step) {
  const int64_t s = step_index(step);
  std::vector<at::Tensor> outs;
  outs.reserve(grads.size());
  for (const auto& g : grads) outs.push_back(at::empty(g.sizes(), g.options()));
  apply(params, grads, lrs, lr, s, outs, false);
  return outs;
}

// Kernels write contiguous memory: a non-contiguous parameter is updated through a contiguous
// buffer that is copied back (the reference's in-place sub_ accepts any strides too).
template <ApplyFn apply>
void in_place(at::TensorList params, at::TensorList grads, at::TensorList lrs, double lr,
              std::optional<int64_t> step) {
  const int64_t s = step_index(step);
  std::vector<at::Tensor> outs;
  outs.reserve(params.size());
  for (const auto& p : params) outs.push_back(p.is_contiguous() ? p : at::empty(p.sizes(), p.options()));
  apply(params, grads, lrs, lr, s, outs, true);
  for (size_t i = 0; i < params.size(); ++i) {
    if (!outs[i].is_same(params[i])) params[i].copy_(outs[i]);
  }
}

}  // namespace maml_ext::inner_update
