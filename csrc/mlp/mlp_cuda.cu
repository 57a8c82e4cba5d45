// CUDA implementation of the MLP ops: the batched formulation (csrc/mlp/mlp_batched.cpp), whose
// per-layer products are cuBLAS batched GEMMs over the task dimension and whose elementwise
// steps are fused ATen kernels; all of it runs on the current stream of the inputs' device.
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "mlp/mlp_batched.h"

namespace maml_ext::mlp {
namespace {

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> mlp_hvp_cuda(
    at::TensorList params, const at::Tensor& x, const at::Tensor& y, at::TensorList direction,
    const std::optional<at::Tensor>& sample_weight, c10::string_view activation,
    c10::string_view loss) {
  const c10::cuda::CUDAGuard guard(x.device());
  return batched::mlp_hvp(params, x, y, direction, sample_weight, activation, loss);
}

std::tuple<at::Tensor, std::vector<at::Tensor>, at::Tensor, at::Tensor> mlp_maml_cuda(
    at::TensorList params, at::TensorList lrs, double lr, bool per_step, const at::Tensor& x_support,
    const at::Tensor& y_support, const std::optional<at::Tensor>& w_support,
    const at::Tensor& x_query, const at::Tensor& y_query, const std::optional<at::Tensor>& w_query,
    int64_t steps, c10::string_view activation, c10::string_view loss, bool first_order,
    int64_t checkpoint_every, bool save_for_backward) {
  const c10::cuda::CUDAGuard guard(x_support.device());
  return batched::mlp_maml(params, lrs, lr, per_step, x_support, y_support, w_support, x_query,
                           y_query, w_query, steps, activation, loss, first_order,
                           checkpoint_every, save_for_backward);
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> mlp_maml_backward_cuda(
    const at::Tensor& grad_loss, at::TensorList grad_adapted, at::TensorList params,
    at::TensorList lrs, double lr, bool per_step, const at::Tensor& x_support,
    const at::Tensor& y_support, const std::optional<at::Tensor>& w_support,
    const at::Tensor& checkpoints, const at::Tensor& query_grad, int64_t steps,
    c10::string_view activation, c10::string_view loss, bool first_order, int64_t checkpoint_every,
    bool need_lr_grad) {
  const c10::cuda::CUDAGuard guard(x_support.device());
  return batched::mlp_maml_backward(grad_loss, grad_adapted, params, lrs, lr, per_step, x_support,
                                    y_support, w_support, checkpoints, query_grad, steps,
                                    activation, loss, first_order, checkpoint_every, need_lr_grad);
}

}  // namespace

TORCH_LIBRARY_IMPL(maml_ext, CUDA, m) {
  m.impl("mlp_hvp", &mlp_hvp_cuda);
  m.impl("mlp_maml", &mlp_maml_cuda);
  m.impl("mlp_maml_backward", &mlp_maml_backward_cuda);
}

}  // namespace maml_ext::mlp
