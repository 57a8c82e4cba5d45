// Host side of the fused mlp_maml_grad (mlp_fused.h), shared by the CUDA launcher (mlp_cuda.cu)
// and the CPU emulation (_mlp_maml_grad_emulated, mlp_fused_call.cpp): input checks and packing,
// output allocation, the kernel's argument block, and the final reduction over tasks.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>
#include <vector>

#include "mlp/mlp_common.h"
#include "mlp/mlp_fused.h"

namespace maml_ext::mlp::fused {

// Whether the fused body handles this layout at all (the CUDA launcher adds a size limit).
bool supported(const Layout& L);

struct Call {
  MamlInputs in;
  FusedLayout layout;
  Workspace ws;
  bool first_order = false;
  at::Tensor loss_weight;  // [T]
  at::Tensor query_loss;   // [T]
  at::Tensor grad_theta;   // [T, P], one row per task
  at::Tensor grad_alpha;   // [T, A, P] zeros, or undefined for a float lr
  at::Tensor thetas;       // [T, S, P] scratch
};

// Checks every input (as mlp_maml_grad does) and allocates the outputs on the inputs' device.
Call prepare(at::TensorList params, at::TensorList lrs, double lr, bool per_step,
             const at::Tensor& x_support, const at::Tensor& y_support,
             const std::optional<at::Tensor>& w_support, const at::Tensor& x_query,
             const at::Tensor& y_query, const std::optional<at::Tensor>& w_query, int64_t steps,
             c10::string_view activation, c10::string_view loss, bool first_order,
             const at::Tensor& loss_weight);

// mlp_maml_grad's outputs: the per-task rows summed over tasks and unpacked like params / lrs.
std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> finish(
    const Call& c, at::TensorList params, at::TensorList lrs);

template <typename T>
const T* ptr(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}
template <typename T>
const T* ptr(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->const_data_ptr<T>() : nullptr;
}

template <typename T>
FusedArgs<T> args(const Call& c) {
  const MamlInputs& in = c.in;
  const bool ce = in.layout.loss == Loss::CrossEntropy;
  FusedArgs<T> a;
  a.L = c.layout;
  a.ws = c.ws;
  a.steps = c.thetas.size(1);
  a.alpha_rows = in.alpha.size(0);
  a.ks = in.xs.size(1);
  a.kq = in.xq.size(1);
  a.theta0 = ptr<T>(in.theta0);
  a.alpha = ptr<T>(in.alpha);
  a.xs = ptr<T>(in.xs);
  a.xq = ptr<T>(in.xq);
  a.ys = ce ? nullptr : ptr<T>(in.ys);
  a.yq = ce ? nullptr : ptr<T>(in.yq);
  a.ls = ce ? in.ys.const_data_ptr<int64_t>() : nullptr;
  a.lq = ce ? in.yq.const_data_ptr<int64_t>() : nullptr;
  a.wsup = ptr<T>(in.ws);
  a.wq = ptr<T>(in.wq);
  a.loss_weight = ptr<T>(c.loss_weight);
  a.first_order = c.first_order;
  a.query_loss = c.query_loss.data_ptr<T>();
  a.grad_theta = c.grad_theta.data_ptr<T>();
  a.grad_alpha = c.grad_alpha.defined() ? c.grad_alpha.data_ptr<T>() : nullptr;
  a.thetas = c.thetas.data_ptr<T>();
  return a;
}

}  // namespace maml_ext::mlp::fused
