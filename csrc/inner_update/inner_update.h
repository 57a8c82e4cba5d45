// Checks shared by the CPU and CUDA kernels of inner_update / inner_update_.
#pragma once

#include <ATen/core/Tensor.h>

namespace maml_ext::inner_update {

// Validates the lists and returns, per parameter, the learning-rate tensor for this step
// (undefined when the scalar `lr` applies). `in_place`: params are updated in place, so grads
// must have exactly their shape.
std::vector<at::Tensor> check_and_select_lrs(at::TensorList params, at::TensorList grads,
                                             at::TensorList lrs, double lr, int64_t step,
                                             bool in_place);

}  // namespace maml_ext::inner_update
