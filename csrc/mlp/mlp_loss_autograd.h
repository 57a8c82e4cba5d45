// The engine-free `.backward()` of mlp_maml_loss's output (csrc/mlp/mlp_loss_autograd.cpp).
#pragma once

#include <ATen/core/Tensor.h>

namespace maml_ext::mlp {
// Stores the meta-gradient of `loss` (an output of mlp_maml_loss) into its parameters' .grad and
// frees its graph, exactly as a plain `loss.backward()` would, when torch's engine would do
// nothing more; returns false, having done nothing, otherwise (see the .cpp).
bool backward_alone(const at::Tensor& loss);
}  // namespace maml_ext::mlp
