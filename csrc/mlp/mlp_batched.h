// Device-generic implementation of the MLP ops with batched ATen calls (bmm/baddbmm over the task
// dimension, so cuBLAS batched GEMMs on a GPU). It is the CUDA implementation (registered in
// mlp_cuda.cu); on the CPU it is registered as the private ops maml_ext::_mlp_*_batched so that
// the same code is tested against the reference on machines without a GPU.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <c10/util/string_view.h>
#include <tuple>
#include <vector>

namespace maml_ext::mlp::batched {

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> mlp_hvp(
    at::TensorList params, const at::Tensor& x, const at::Tensor& y, at::TensorList direction,
    const std::optional<at::Tensor>& sample_weight, c10::string_view activation,
    c10::string_view loss);

std::tuple<at::Tensor, std::vector<at::Tensor>, at::Tensor, at::Tensor> mlp_maml(
    at::TensorList params, at::TensorList lrs, double lr, bool per_step, const at::Tensor& x_support,
    const at::Tensor& y_support, const std::optional<at::Tensor>& w_support,
    const at::Tensor& x_query, const at::Tensor& y_query, const std::optional<at::Tensor>& w_query,
    int64_t steps, c10::string_view activation, c10::string_view loss, bool first_order,
    int64_t checkpoint_every, bool save_for_backward);

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> mlp_maml_backward(
    const at::Tensor& grad_loss, at::TensorList grad_adapted, at::TensorList params,
    at::TensorList lrs, double lr, bool per_step, const at::Tensor& x_support,
    const at::Tensor& y_support, const std::optional<at::Tensor>& w_support,
    const at::Tensor& checkpoints, const at::Tensor& query_grad, int64_t steps,
    c10::string_view activation, c10::string_view loss, bool first_order, int64_t checkpoint_every,
    bool need_lr_grad);

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> mlp_maml_grad(
    at::TensorList params, at::TensorList lrs, double lr, bool per_step, const at::Tensor& x_support,
    const at::Tensor& y_support, const std::optional<at::Tensor>& w_support,
    const at::Tensor& x_query, const at::Tensor& y_query, const std::optional<at::Tensor>& w_query,
    int64_t steps, c10::string_view activation, c10::string_view loss, bool first_order,
    const at::Tensor& loss_weight);

}  // namespace maml_ext::mlp::batched
