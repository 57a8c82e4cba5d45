// CPU implementations of maml_ext::mlp_hvp, mlp_maml and mlp_maml_backward: argument checks and
// packing here, the arithmetic in the capability-specific engine, tasks spread over threads with
// at::parallel_for (torch's OpenMP backend: this file is compiled with -fopenmp and linked to the
// libgomp torch loads, so torch.set_num_threads applies and no second OpenMP runtime is loaded).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "maml_ext_checks.h"  // generated from maml_ext/reference/_checks.py
#include "mlp/mlp_adam.h"
#include "mlp/mlp_common.h"
#include "mlp/mlp_cpu_tasks.h"
#include "mlp/mlp_engine.h"

namespace maml_ext::mlp {
namespace {

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> mlp_hvp_cpu(
    at::TensorList params, const at::Tensor& x, const at::Tensor& y, at::TensorList direction,
    const std::optional<at::Tensor>& sample_weight, c10::string_view activation,
    c10::string_view loss) {
  const HvpInputs in = prepare_hvp(params, x, y, direction, sample_weight, activation, loss);
  const Layout& L = in.layout;
  const int64_t tasks = in.tasks;
  const at::Tensor &theta = in.theta, &v = in.direction, &xc = in.x, &yc = in.y;
  const auto& wc = in.weight;
  at::Tensor loss_out = at::empty({tasks}, theta.options());
  at::Tensor grad = at::empty_like(theta);
  const bool with_hvp = v.defined();
  at::Tensor hv = with_hvp ? at::empty_like(theta) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(theta.scalar_type(), "mlp_hvp_cpu", [&] {
    HvpArgs<scalar_t> a{&L,
                        theta.data_ptr<scalar_t>(),
                        with_hvp ? v.data_ptr<scalar_t>() : nullptr,
                        make_batch<scalar_t>(xc, yc, wc, L.loss),
                        loss_out.data_ptr<scalar_t>(),
                        grad.data_ptr<scalar_t>(),
                        with_hvp ? hv.data_ptr<scalar_t>() : nullptr};
    const auto fn = engine<scalar_t>().hvp_tasks;
    at::parallel_for(0, tasks, task_grain(L, in.x.size(1), 1),
                     [&](int64_t t0, int64_t t1) { fn(a, t0, t1); });
  });
  return {loss_out, unpack(grad, params, true, tasks),
          with_hvp ? unpack(hv, params, true, tasks) : std::vector<at::Tensor>{}};
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
    at::parallel_for(0, T, task_grain(in.layout, in.xs.size(1), steps),
                     [&](int64_t t0, int64_t t1) { fn(a, t0, t1); });
  });
  return {query_loss, unpack(adapted, params, false, T), checkpoints, query_grad};
}

std::tuple<at::Tensor, at::Tensor> mlp_maml_eval_cpu(
    at::TensorList params, at::TensorList lrs, double lr, bool per_step, const at::Tensor& x_support,
    const at::Tensor& y_support, const std::optional<at::Tensor>& w_support,
    const at::Tensor& x_query, const at::Tensor& y_query, const std::optional<at::Tensor>& w_query,
    int64_t steps, c10::string_view activation, c10::string_view loss, bool outputs) {
  const MamlInputs in = prepare_maml(params, lrs, lr, per_step, x_support, y_support, w_support,
                                     &x_query, &y_query, w_query, steps, activation, loss, 1);
  const int64_t T = in.tasks, D = in.layout.dim[in.layout.layers];
  const auto opts = in.theta0.options();
  at::Tensor losses = at::empty({steps + 1, T}, opts);
  at::Tensor outs = at::empty({outputs ? steps + 1 : 0, T, in.xq.size(1), D}, opts);
  AT_DISPATCH_FLOATING_TYPES(in.theta0.scalar_type(), "mlp_maml_eval_cpu", [&] {
    auto a = maml_args<scalar_t>(in, steps, 1);
    a.step_query_loss = losses.data_ptr<scalar_t>();
    a.query_loss = a.step_query_loss + steps * T;  // the last row: after all steps
    a.query_out = outputs ? outs.data_ptr<scalar_t>() : nullptr;
    const auto fn = engine<scalar_t>().maml_forward_tasks;
    at::parallel_for(0, T, task_grain(in.layout, in.xs.size(1) + in.xq.size(1), steps),
                     [&](int64_t t0, int64_t t1) { fn(a, t0, t1); });
  });
  return {losses, outs};
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
  checks::check_backward(grad_loss, grad_adapted, params, checkpoints, query_grad, T, steps,
                         checkpoint_every);
  const bool lr_grad = need_lr_grad && !lrs.empty();
  const at::Tensor g_loss = grad_loss.to(in.theta0.scalar_type()).contiguous();
  const at::Tensor g_adapted = grad_adapted.empty() ? at::Tensor() : pack(grad_adapted, true);
  const at::Tensor ckpt = checkpoints.contiguous(), qgrad = query_grad.contiguous();
  at::Tensor grad_theta = at::empty({T, P}, in.theta0.options());
  const TaskChunks chunks = task_chunks(T, task_grain(in.layout, in.xs.size(1), steps));
  at::Tensor grad_alpha =
      lr_grad ? at::zeros({chunks.count, in.alpha.size(0), P}, in.theta0.options()) : at::Tensor();
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
    for_each_chunk(chunks, [&](int64_t t0, int64_t t1, int64_t c) { fn(a, t0, t1, c); });
  });
  std::vector<at::Tensor> lr_grads;
  if (lr_grad) lr_grads = reduce_lr_grads(sum_rows_in_order(grad_alpha), lrs, params);
  return {unpack(sum_rows_in_order(grad_theta), params, false, T), lr_grads};
}

// mlp_maml_grad's work on checked inputs: the query losses [T], the meta-gradient summed over
// tasks, packed [P], and the lr gradient [A, P] (undefined for a float lr).
struct PackedGrad {
  at::Tensor query_loss, grad_theta, grad_alpha;
};

PackedGrad maml_grad_packed(const MamlInputs& in, bool with_lrs, int64_t steps, bool first_order,
                            const at::Tensor& loss_weight) {
  const int64_t T = in.tasks, P = in.layout.numel;
  const at::Tensor weight = loss_weight.contiguous();
  PackedGrad out;
  out.query_loss = at::empty({T}, in.theta0.options());
  // Summed per chunk of tasks as they finish: a [T, P] matrix would be written on every call
  // (27 MB for 100 tasks of a 256-wide MLP) only to be summed afterwards.
  const TaskChunks chunks = task_chunks(T, task_grain(in.layout, in.xs.size(1), steps));
  out.grad_theta = at::empty({P}, in.theta0.options());
  at::Tensor grad_alpha =
      with_lrs ? at::zeros({chunks.count, in.alpha.size(0), P}, in.theta0.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(in.theta0.scalar_type(), "mlp_maml_grad_cpu", [&] {
    auto a = maml_args<scalar_t>(in, steps, 1);
    a.query_loss = out.query_loss.data_ptr<scalar_t>();
    a.grad_loss = weight.data_ptr<scalar_t>();
    a.first_order = first_order;
    a.grad_theta_sum = chunk_sums_buffer<scalar_t>(chunks.count * P);
    a.grad_alpha = grad_alpha.defined() ? grad_alpha.data_ptr<scalar_t>() : nullptr;
    const auto fn = engine<scalar_t>().maml_grad_tasks;
    for_each_chunk(chunks, [&](int64_t t0, int64_t t1, int64_t c) { fn(a, t0, t1, c); });
    sum_rows_in_order(a.grad_theta_sum, chunks.count, P, out.grad_theta.data_ptr<scalar_t>());
  });
  if (grad_alpha.defined()) out.grad_alpha = sum_rows_in_order(grad_alpha);
  return out;
}

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> mlp_maml_grad_cpu(
    at::TensorList params, at::TensorList lrs, double lr, bool per_step, const at::Tensor& x_support,
    const at::Tensor& y_support, const std::optional<at::Tensor>& w_support,
    const at::Tensor& x_query, const at::Tensor& y_query, const std::optional<at::Tensor>& w_query,
    int64_t steps, c10::string_view activation, c10::string_view loss, bool first_order,
    const at::Tensor& loss_weight) {
  const MamlInputs in = prepare_maml(params, lrs, lr, per_step, x_support, y_support, w_support,
                                     &x_query, &y_query, w_query, steps, activation, loss, 1);
  checks::check_loss_weight(loss_weight, in.theta0, in.tasks);
  const PackedGrad g = maml_grad_packed(in, !lrs.empty(), steps, first_order, loss_weight);
  std::vector<at::Tensor> lr_grads;
  if (g.grad_alpha.defined()) lr_grads = reduce_lr_grads(g.grad_alpha, lrs, params);
  return {g.query_loss, unpack(g.grad_theta, params, false, in.tasks), lr_grads};
}

// Adam's step on `params` from the packed meta-gradient `grad` (clipped first when clip_value
// is finite). Tensors that are not contiguous are updated through a contiguous copy.
template <typename T>
void adam_step(at::TensorList params, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
               const at::Tensor& step_counts, T* grad, int64_t numel, const AdamSettings& s,
               double clip_value) {
  if (std::isfinite(clip_value)) clip_values(grad, numel, clip_value);
  const FlushDenormals flush;
  const auto writable = [](const at::Tensor& t) { return t.is_contiguous() ? t : t.contiguous(); };
  at::Tensor counts = writable(step_counts);
  float* count = counts.data_ptr<float>();
  int64_t off = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    at::Tensor p = writable(params[i]), m = writable(exp_avgs[i]), v = writable(exp_avg_sqs[i]);
    count[i] += 1.0f;  // torch's fused Adam counts steps in float32, then reads them as double
    const int64_t n = p.numel();
    adam_update(p.data_ptr<T>(), m.data_ptr<T>(), v.data_ptr<T>(), grad + off, n,
                static_cast<double>(count[i]), s);
    for (auto [copy, original] : {std::pair{p, params[i]}, {m, exp_avgs[i]}, {v, exp_avg_sqs[i]}}) {
      if (!copy.is_same(original)) original.copy_(copy);
      // As any in-place op does: autograd then refuses a graph that saved the old values.
      original.unsafeGetTensorImpl()->bump_version();
    }
    off += n;
  }
  if (!counts.is_same(step_counts)) step_counts.copy_(counts);
  step_counts.unsafeGetTensorImpl()->bump_version();
}

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> mlp_maml_adam_cpu(
    at::TensorList params, const at::Tensor& x_support, const at::Tensor& y_support,
    const std::optional<at::Tensor>& w_support, const at::Tensor& x_query, const at::Tensor& y_query,
    const std::optional<at::Tensor>& w_query, double lr, int64_t steps, c10::string_view activation,
    c10::string_view loss, bool first_order, const at::Tensor& loss_weight,
    at::TensorList exp_avgs, at::TensorList exp_avg_sqs, const at::Tensor& step_counts,
    double adam_lr, double beta1, double beta2, double weight_decay, double eps, bool maximize,
    double clip_value, bool return_grads) {
  const MamlInputs in = prepare_maml(params, {}, lr, false, x_support, y_support, w_support,
                                     &x_query, &y_query, w_query, steps, activation, loss, 1);
  checks::check_loss_weight(loss_weight, in.theta0, in.tasks);
  checks::check_adam(params, exp_avgs, exp_avg_sqs, step_counts, adam_lr, beta1, beta2,
                     weight_decay, eps, clip_value);
  PackedGrad g = maml_grad_packed(in, false, steps, first_order, loss_weight);
  // The meta-loss as meta_grad computes it (same ops, same value).
  at::Tensor loss_value = (g.query_loss * loss_weight).sum();
  bool finite = false;
  AT_DISPATCH_FLOATING_TYPES(in.theta0.scalar_type(), "mlp_maml_adam_cpu", [&] {
    scalar_t* grad = g.grad_theta.data_ptr<scalar_t>();
    const int64_t P = in.layout.numel;
    // As the training loop: a non-finite loss or gradient leaves the weights and Adam alone.
    finite = std::isfinite(*loss_value.const_data_ptr<scalar_t>()) && all_finite(grad, P);
    if (finite) {
      adam_step(params, exp_avgs, exp_avg_sqs, step_counts, grad, P,
                AdamSettings{adam_lr, beta1, beta2, weight_decay, eps, maximize}, clip_value);
    }
  });
  std::vector<at::Tensor> grads;
  if (return_grads) grads = unpack(g.grad_theta, params, false, in.tasks);
  return {loss_value, at::scalar_tensor(finite, at::kBool), grads};
}

}  // namespace

TORCH_LIBRARY_IMPL(maml_ext, CPU, m) {
  m.impl("mlp_hvp", &mlp_hvp_cpu);
  m.impl("mlp_maml", &mlp_maml_cpu);
  m.impl("mlp_maml_backward", &mlp_maml_backward_cpu);
  m.impl("mlp_maml_eval", &mlp_maml_eval_cpu);
  m.impl("mlp_maml_grad", &mlp_maml_grad_cpu);
  m.impl("mlp_maml_adam_", &mlp_maml_adam_cpu);
}

}  // namespace maml_ext::mlp
