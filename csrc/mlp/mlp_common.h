// ATen-side helpers shared by the CPU and CUDA implementations of the MLP ops: input checks,
// packing of parameter lists into one flat [T, P] matrix and back.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <string>
#include <vector>

#include "mlp/mlp_layout.h"

namespace maml_ext::mlp {

// Checks the parameter list [W1, b1, ..., WL, bL, (log_std)] and returns its layout.
// `task_dim`: the tensors carry a leading task dimension of size `tasks`.
Layout layout_from_params(at::TensorList params, bool task_dim, int64_t tasks,
                          const std::string& activation, const std::string& loss);

// Checks x [T, K, d0], the targets and the optional weights against the layout.
void check_batch(const Layout& L, const char* what, const at::Tensor& x, const at::Tensor& y,
                 const std::optional<at::Tensor>& weight, int64_t tasks, const at::Tensor& like);

// [T, P] (or [P] without task dim) with every parameter flattened, in order.
at::Tensor pack(at::TensorList params, bool task_dim);
// Inverse of pack: one contiguous tensor per parameter, shaped like `like` (with task dim `tasks`).
std::vector<at::Tensor> unpack(const at::Tensor& flat, at::TensorList like, bool like_has_task_dim,
                               int64_t tasks);

// The inner learning rates as a flat [A, P] matrix (A = steps when per_step, else 1). Each entry
// of `lrs` is a scalar or shaped like its parameter, with a leading [steps] when per_step. An
// empty list means the constant `lr` everywhere.
at::Tensor expand_lrs(at::TensorList lrs, double lr, bool per_step, int64_t steps,
                      at::TensorList params, const at::Tensor& like);
// Inverse of expand_lrs for gradients: reduce [A, P] back to the shapes of `lrs`.
std::vector<at::Tensor> reduce_lr_grads(const at::Tensor& flat, at::TensorList lrs,
                                        at::TensorList params);

}  // namespace maml_ext::mlp
