#include "mlp/mlp_fused_call.h"

#include "maml_ext_checks.h"  // generated from maml_ext/reference/_checks.py

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace maml_ext::mlp::fused {

bool supported(const Layout& L) { return L.layers <= kMaxLayers; }

Call prepare(at::TensorList params, at::TensorList lrs, double lr, bool per_step,
             const at::Tensor& x_support, const at::Tensor& y_support,
             const std::optional<at::Tensor>& w_support, const at::Tensor& x_query,
             const at::Tensor& y_query, const std::optional<at::Tensor>& w_query, int64_t steps,
             c10::string_view activation, c10::string_view loss, bool first_order,
             const at::Tensor& loss_weight) {
  Call c;
  c.in = prepare_maml(params, lrs, lr, per_step, x_support, y_support, w_support, &x_query,
                      &y_query, w_query, steps, activation, loss, 1);
  const Layout& L = c.in.layout;
  const int64_t T = c.in.tasks, P = L.numel;
  checks::check_loss_weight(loss_weight, c.in.theta0, T);
  TORCH_CHECK(supported(L), "the fused MLP kernel handles at most ", kMaxLayers, " layers, got ",
              L.layers);
  c.layout.act = static_cast<int>(L.act);
  c.layout.loss = static_cast<int>(L.loss);
  c.layout.layers = L.layers;
  for (int l = 0; l <= L.layers; ++l) {
    c.layout.dim[l] = L.dim[l];
    c.layout.w_off[l] = L.w_off[l];
    c.layout.b_off[l] = L.b_off[l];
  }
  c.layout.log_std_off = L.log_std_off;
  c.layout.numel = P;
  c.ws = make_workspace(c.layout, std::max(c.in.xs.size(1), c.in.xq.size(1)));
  c.first_order = first_order;
  const auto opts = c.in.theta0.options();
  c.loss_weight = loss_weight.contiguous();
  c.query_loss = at::empty({T}, opts);
  c.grad_theta = at::empty({T, P}, opts);
  if (!lrs.empty()) c.grad_alpha = at::zeros({T, c.in.alpha.size(0), P}, opts);
  c.thetas = at::empty({T, steps, P}, opts);
  return c;
}

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> finish(
    const Call& c, at::TensorList params, at::TensorList lrs) {
  std::vector<at::Tensor> lr_grads;
  if (c.grad_alpha.defined()) lr_grads = reduce_lr_grads(c.grad_alpha.sum(0), lrs, params);
  return {c.query_loss, unpack(c.grad_theta.sum(0), params, false, c.in.tasks), lr_grads};
}

namespace {

// The fused body run task after task by one sequential "group": the arithmetic of the CUDA
// kernel, checked on machines without a GPU.
std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> mlp_maml_grad_emulated(
    at::TensorList params, at::TensorList lrs, double lr, bool per_step, const at::Tensor& x_support,
    const at::Tensor& y_support, const std::optional<at::Tensor>& w_support,
    const at::Tensor& x_query, const at::Tensor& y_query, const std::optional<at::Tensor>& w_query,
    int64_t steps, c10::string_view activation, c10::string_view loss, bool first_order,
    const at::Tensor& loss_weight) {
  const Call c = prepare(params, lrs, lr, per_step, x_support, y_support, w_support, x_query,
                         y_query, w_query, steps, activation, loss, first_order, loss_weight);
  AT_DISPATCH_FLOATING_TYPES(c.in.theta0.scalar_type(), "mlp_maml_grad_emulated", [&] {
    const FusedArgs<scalar_t> a = args<scalar_t>(c);
    std::vector<scalar_t> workspace(a.ws.size);
    for (int64_t t = 0; t < c.in.tasks; ++t)
      maml_grad_task(a, t, workspace.data(), SequentialGroup{});
  });
  return finish(c, params, lrs);
}

}  // namespace

TORCH_LIBRARY_IMPL(maml_ext, CPU, m) {
  m.impl("_mlp_maml_grad_emulated", &mlp_maml_grad_emulated);
}

}  // namespace maml_ext::mlp::fused
