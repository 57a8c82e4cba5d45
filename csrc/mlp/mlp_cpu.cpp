// CPU implementations of maml_ext::mlp_hvp, mlp_maml and mlp_maml_backward: argument checks and
// packing here, the arithmetic in the capability-specific engine, tasks spread over threads with
// at::parallel_for (so torch.set_num_threads applies and no second OpenMP runtime is linked).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "mlp/mlp_common.h"
#include "mlp/mlp_engine.h"

namespace maml_ext::mlp {
namespace {

template <typename T>
Batch<T> make_batch(const at::Tensor& x, const at::Tensor& y, const std::optional<at::Tensor>& w,
                    Loss loss) {
  Batch<T> b;
  b.x = x.data_ptr<T>();
  if (loss == Loss::CrossEntropy) {
    b.labels = y.data_ptr<int64_t>();
  } else {
    b.y = y.data_ptr<T>();
  }
  b.weight = w.has_value() ? w->data_ptr<T>() : nullptr;
  b.k = x.size(1);
  return b;
}

std::optional<at::Tensor> contiguous(const std::optional<at::Tensor>& t) {
  if (!t.has_value()) return std::nullopt;
  return t->contiguous();
}

void check_labels(const Layout& L, const at::Tensor& y, const char* what) {
  if (L.loss != Loss::CrossEntropy || y.numel() == 0) return;
  const int64_t classes = L.dim[L.layers];
  const auto lo = y.min().item<int64_t>();
  const auto hi = y.max().item<int64_t>();
  TORCH_CHECK_VALUE(lo >= 0 && hi < classes, what, " y: class labels must lie in [0, ", classes,
                    "), got values in [", lo, ", ", hi, "]");
}

void check_lrs(at::TensorList lrs, double lr) {
  TORCH_CHECK_VALUE(std::isfinite(lr) && lr >= 0, "lr: expected a finite value >= 0, got ", lr);
  for (size_t i = 0; i < lrs.size(); ++i) {
    const at::Tensor a = lrs[i].contiguous();
    AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "check_lrs", [&] {
      const scalar_t* p = a.const_data_ptr<scalar_t>();
      for (int64_t j = 0; j < a.numel(); ++j)
        TORCH_CHECK_VALUE(std::isfinite(p[j]) && p[j] >= 0, "lrs[", i,
                          "]: learning rates must be finite and >= 0, got ", p[j]);
    });
  }
}

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> mlp_hvp_cpu(
    at::TensorList params, const at::Tensor& x, const at::Tensor& y, at::TensorList direction,
    const std::optional<at::Tensor>& sample_weight, c10::string_view activation,
    c10::string_view loss) {
  TORCH_CHECK_VALUE(x.dim() == 3, "x: expected [T, K, in], got shape ", x.sizes());
  const int64_t tasks = x.size(0);
  const Layout L = layout_from_params(params, true, tasks, std::string(activation),
                                      std::string(loss));
  check_batch(L, "support", x, y, sample_weight, tasks, params[0]);
  check_labels(L, y, "support");
  TORCH_CHECK_VALUE(direction.size() == params.size(), "direction: expected ", params.size(),
                    " tensors like params, got ", direction.size());
  for (size_t i = 0; i < params.size(); ++i) {
    TORCH_CHECK_VALUE(direction[i].sizes() == params[i].sizes(), "direction[", i,
                      "]: expected shape ", params[i].sizes(), ", got ", direction[i].sizes());
    TORCH_CHECK_TYPE(direction[i].scalar_type() == params[i].scalar_type() &&
                         direction[i].device() == params[i].device(),
                     "direction[", i, "]: expected dtype/device of params[", i, "]");
  }
  const at::Tensor theta = pack(params, true);
  const at::Tensor v = pack(direction, true);
  const at::Tensor xc = x.contiguous(), yc = y.contiguous();
  const auto wc = contiguous(sample_weight);
  at::Tensor loss_out = at::empty({tasks}, theta.options());
  at::Tensor grad = at::empty_like(theta);
  at::Tensor hv = at::empty_like(theta);
  AT_DISPATCH_FLOATING_TYPES(theta.scalar_type(), "mlp_hvp_cpu", [&] {
    HvpArgs<scalar_t> a{&L,
                        theta.data_ptr<scalar_t>(),
                        v.data_ptr<scalar_t>(),
                        make_batch<scalar_t>(xc, yc, wc, L.loss),
                        loss_out.data_ptr<scalar_t>(),
                        grad.data_ptr<scalar_t>(),
                        hv.data_ptr<scalar_t>()};
    const auto fn = engine<scalar_t>().hvp_tasks;
    at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) { fn(a, t0, t1); });
  });
  return {loss_out, unpack(grad, params, true, tasks), unpack(hv, params, true, tasks)};
}

struct MamlInputs {
  Layout layout;
  int64_t tasks;
  at::Tensor theta0, alpha, xs, ys, xq, yq;
  std::optional<at::Tensor> ws, wq;
};

MamlInputs prepare_maml(at::TensorList params, at::TensorList lrs, double lr, bool per_step,
                        const at::Tensor& x_support, const at::Tensor& y_support,
                        const std::optional<at::Tensor>& w_support, const at::Tensor* x_query,
                        const at::Tensor* y_query, const std::optional<at::Tensor>& w_query,
                        int64_t steps, c10::string_view activation, c10::string_view loss,
                        int64_t checkpoint_every) {
  TORCH_CHECK_VALUE(steps >= 1, "steps: expected >= 1, got ", steps);
  TORCH_CHECK_VALUE(checkpoint_every >= 1, "checkpoint_every: expected >= 1, got ", checkpoint_every);
  TORCH_CHECK_VALUE(x_support.dim() == 3, "x_support: expected [T, K, in], got shape ",
                    x_support.sizes());
  MamlInputs in;
  in.tasks = x_support.size(0);
  in.layout = layout_from_params(params, false, in.tasks, std::string(activation), std::string(loss));
  check_batch(in.layout, "support", x_support, y_support, w_support, in.tasks, params[0]);
  check_labels(in.layout, y_support, "support");
  if (x_query) {
    check_batch(in.layout, "query", *x_query, *y_query, w_query, in.tasks, params[0]);
    check_labels(in.layout, *y_query, "query");
    in.xq = x_query->contiguous();
    in.yq = y_query->contiguous();
    in.wq = contiguous(w_query);
  }
  in.theta0 = pack(params, false);
  in.alpha = expand_lrs(lrs, lr, per_step, steps, params, in.theta0);
  check_lrs(lrs, lr);
  in.xs = x_support.contiguous();
  in.ys = y_support.contiguous();
  in.ws = contiguous(w_support);
  return in;
}

template <typename T>
MamlArgs<T> maml_args(const MamlInputs& in, int64_t steps, int64_t checkpoint_every) {
  MamlArgs<T> a{};
  a.layout = &in.layout;
  a.tasks = in.tasks;
  a.theta0 = in.theta0.data_ptr<T>();
  a.alpha = in.alpha.data_ptr<T>();
  a.alpha_rows = in.alpha.size(0);
  a.steps = steps;
  a.checkpoint_every = checkpoint_every;
  a.support = make_batch<T>(in.xs, in.ys, in.ws, in.layout.loss);
  if (in.xq.defined()) a.query = make_batch<T>(in.xq, in.yq, in.wq, in.layout.loss);
  return a;
}

std::tuple<at::Tensor, std::vector<at::Tensor>, at::Tensor, at::Tensor> mlp_maml_cpu(
    at::TensorList params, at::TensorList lrs, double lr, bool per_step, const at::Tensor& x_support,
    const at::Tensor& y_support, const std::optional<at::Tensor>& w_support,
    const at::Tensor& x_query, const at::Tensor& y_query, const std::optional<at::Tensor>& w_query,
    int64_t steps, c10::string_view activation, c10::string_view loss, bool first_order,
    int64_t checkpoint_every, bool save_for_backward) {
  (void)first_order;  // only the backward needs it; part of the schema so autograd can see it
  const MamlInputs in = prepare_maml(params, lrs, lr, per_step, x_support, y_support, w_support,
                                     &x_query, &y_query, w_query, steps, activation, loss,
                                     checkpoint_every);
  const int64_t T = in.tasks, P = in.layout.numel;
  const auto opts = in.theta0.options();
  at::Tensor query_loss = at::empty({T}, opts);
  at::Tensor adapted = at::empty({T, P}, opts);
  at::Tensor checkpoints =
      at::empty({save_for_backward ? num_checkpoints(steps, checkpoint_every) : 0, T, P}, opts);
  at::Tensor query_grad = at::empty({save_for_backward ? T : 0, P}, opts);
  AT_DISPATCH_FLOATING_TYPES(in.theta0.scalar_type(), "mlp_maml_cpu", [&] {
    auto a = maml_args<scalar_t>(in, steps, checkpoint_every);
    a.query_loss = query_loss.data_ptr<scalar_t>();
    a.adapted = adapted.data_ptr<scalar_t>();
    a.checkpoints = checkpoints.numel() ? checkpoints.data_ptr<scalar_t>() : nullptr;
    a.query_grad = save_for_backward ? query_grad.data_ptr<scalar_t>() : nullptr;
    const auto fn = engine<scalar_t>().maml_forward_tasks;
    at::parallel_for(0, T, 1, [&](int64_t t0, int64_t t1) { fn(a, t0, t1); });
  });
  return {query_loss, unpack(adapted, params, false, T), checkpoints, query_grad};
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> mlp_maml_backward_cpu(
    const at::Tensor& grad_loss, at::TensorList grad_adapted, at::TensorList params,
    at::TensorList lrs, double lr, bool per_step, const at::Tensor& x_support,
    const at::Tensor& y_support, const std::optional<at::Tensor>& w_support,
    const at::Tensor& checkpoints, const at::Tensor& query_grad, int64_t steps,
    c10::string_view activation, c10::string_view loss, bool first_order, int64_t checkpoint_every,
    bool need_lr_grad) {
  const MamlInputs in = prepare_maml(params, lrs, lr, per_step, x_support, y_support, w_support,
                                     nullptr, nullptr, std::nullopt, steps, activation, loss,
                                     checkpoint_every);
  const int64_t T = in.tasks, P = in.layout.numel;
  TORCH_CHECK_VALUE(query_grad.dim() == 2 && query_grad.size(0) == T && query_grad.size(1) == P,
                    "query_grad: expected [", T, ", ", P, "] saved by mlp_maml, got ",
                    query_grad.sizes());
  TORCH_CHECK_VALUE(checkpoints.dim() == 3 &&
                        checkpoints.size(0) == num_checkpoints(steps, checkpoint_every),
                    "checkpoints: expected the tensor saved by mlp_maml with the same steps and "
                    "checkpoint_every, got shape ", checkpoints.sizes());
  TORCH_CHECK_VALUE(grad_loss.numel() == T, "grad_loss: expected [", T, "], got ", grad_loss.sizes());
  const bool lr_grad = need_lr_grad && !lrs.empty();
  const at::Tensor g_loss = grad_loss.to(in.theta0.scalar_type()).contiguous();
  const at::Tensor g_adapted = grad_adapted.empty() ? at::Tensor() : pack(grad_adapted, true);
  const at::Tensor ckpt = checkpoints.contiguous(), qgrad = query_grad.contiguous();
  at::Tensor grad_theta = at::empty({T, P}, in.theta0.options());
  const int64_t threads = at::get_num_threads();
  at::Tensor grad_alpha = lr_grad ? at::zeros({threads, in.alpha.size(0), P}, in.theta0.options())
                                  : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(in.theta0.scalar_type(), "mlp_maml_backward_cpu", [&] {
    auto a = maml_args<scalar_t>(in, steps, checkpoint_every);
    a.checkpoints = ckpt.numel() ? ckpt.data_ptr<scalar_t>() : nullptr;
    a.query_grad = qgrad.data_ptr<scalar_t>();
    a.grad_loss = g_loss.data_ptr<scalar_t>();
    a.grad_adapted = g_adapted.defined() ? g_adapted.data_ptr<scalar_t>() : nullptr;
    a.first_order = first_order;
    a.grad_theta = grad_theta.data_ptr<scalar_t>();
    a.grad_alpha = lr_grad ? grad_alpha.data_ptr<scalar_t>() : nullptr;
    const auto fn = engine<scalar_t>().maml_backward_tasks;
    at::parallel_for(0, T, 1, [&](int64_t t0, int64_t t1) {
      fn(a, t0, t1, at::get_thread_num());
    });
  });
  std::vector<at::Tensor> lr_grads;
  if (lr_grad) lr_grads = reduce_lr_grads(grad_alpha.sum(0), lrs, params);
  return {unpack(grad_theta.sum(0), params, false, T), lr_grads};
}

}  // namespace

TORCH_LIBRARY_IMPL(maml_ext, CPU, m) {
  m.impl("mlp_hvp", &mlp_hvp_cpu);
  m.impl("mlp_maml", &mlp_maml_cpu);
  m.impl("mlp_maml_backward", &mlp_maml_backward_cpu);
}

}  // namespace maml_ext::mlp
