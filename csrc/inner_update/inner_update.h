// The registered ops inner_update / inner_update_ of every device, built from its ApplyFn.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

namespace maml_ext::inner_update {

// The registered ops take `int? step`; a device's ApplyFn receives kNoStep when it is absent.
constexpr int64_t kNoStep = -1;
// Checks every input (before any work; `in_place`: grads must have exactly the params' shapes)
// and returns the step index, or kNoStep.
int64_t check_inputs(at::TensorList params, at::TensorList grads, at::TensorList lrs, double lr,
                     std::optional<int64_t> step, bool in_place);
// Per parameter, the learning-rate tensor of this step (undefined when the scalar `lr` applies),
// from checked inputs.
std::vector<at::Tensor> select_lrs(at::TensorList lrs, int64_t step, size_t count);

// A device's update: writes theta - alpha * g for every tensor into `outs`.
using ApplyFn = void (*)(at::TensorList params, at::TensorList grads, at::TensorList lrs, double lr,
                         int64_t step, at::TensorList outs, bool in_place);

// The two registered ops of one device, built from its ApplyFn.
template <ApplyFn apply>
std::vector<at::Tensor> functional(at::TensorList params, at::TensorList grads, at::TensorList lrs,
                                   double lr, std::optional<int64_t> step) {
  const int64_t s = check_inputs(params, grads, lrs, lr, step, false);
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
  const int64_t s = check_inputs(params, grads, lrs, lr, step, true);
  std::vector<at::Tensor> outs;
  outs.reserve(params.size());
  for (const auto& p : params) outs.push_back(p.is_contiguous() ? p : at::empty(p.sizes(), p.options()));
  apply(params, grads, lrs, lr, s, outs, true);
  for (size_t i = 0; i < params.size(); ++i) {
    if (!outs[i].is_same(params[i])) params[i].copy_(outs[i]);
  }
}

}  // namespace maml_ext::inner_update
