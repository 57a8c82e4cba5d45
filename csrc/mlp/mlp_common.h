// ATen-side helpers shared by the CPU and CUDA implementations of the MLP ops: the checked inputs
// (the checks are generated from maml_ext/reference/_checks.py, see maml_ext_checks.h), packing
// of parameter lists into one flat [T, P] matrix and back.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include <string>
#include <vector>

#include "mlp/mlp_layout.h"

namespace maml_ext::mlp {

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

struct HvpInputs {
  Layout layout;
  int64_t tasks;
  at::Tensor theta, direction, x, y;  // theta, direction packed [T, P]; direction undefined: no HVP
  std::optional<at::Tensor> weight;
};

// Checks every input of mlp_hvp (checks::check_hvp, labels) and packs params and direction.
HvpInputs prepare_hvp(at::TensorList params, const at::Tensor& x, const at::Tensor& y,
                      at::TensorList direction, const std::optional<at::Tensor>& sample_weight,
                      c10::string_view activation, c10::string_view loss);

struct MamlInputs {
  Layout layout;
  int64_t tasks;
  at::Tensor theta0, alpha, xs, ys, xq, yq;
  std::optional<at::Tensor> ws, wq;
};

// Checks every input of mlp_maml / mlp_maml_backward (checks::check_maml, labels; query tensors
// may be null) and packs them.
MamlInputs prepare_maml(at::TensorList params, at::TensorList lrs, double lr, bool per_step,
                        const at::Tensor& x_support, const at::Tensor& y_support,
                        const std::optional<at::Tensor>& w_support, const at::Tensor* x_query,
                        const at::Tensor* y_query, const std::optional<at::Tensor>& w_query,
                        int64_t steps, c10::string_view activation, c10::string_view loss,
                        int64_t checkpoint_every);

std::optional<at::Tensor> contiguous(const std::optional<at::Tensor>& t);
// Class labels within [0, classes) (cross-entropy, CPU only: reading values on a device would
// synchronise with it).
void check_labels(const Layout& L, const at::Tensor& y, const char* what);

}  // namespace maml_ext::mlp
