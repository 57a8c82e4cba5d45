// Batched (all tasks at once) ATen implementation of the MLP ops: the same arithmetic as
// mlp_engine.cpp (see the notation there), expressed as bmm/baddbmm over the task dimension.
#include "mlp/mlp_batched.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>

#include "maml_ext_checks.h"  // generated from maml_ext/reference/_checks.py
#include "mlp/mlp_common.h"

namespace maml_ext::mlp::batched {
namespace {

at::Tensor weight(const Layout& L, const at::Tensor& th, int l) {
  return th.narrow(-1, L.w_off[l], L.dim[l] * L.dim[l - 1]).view({th.size(0), L.dim[l], L.dim[l - 1]});
}
at::Tensor bias(const Layout& L, const at::Tensor& th, int l) {
  return th.narrow(-1, L.b_off[l], L.dim[l]);
}

// Forward, loss, gradient and HVP of every task's MLP, with the per-layer state kept between
// the passes (the batched counterpart of the engine's Net).
class Net {
 public:
  Net(const Layout& layout, const at::Tensor& x, const at::Tensor& y,
      const std::optional<at::Tensor>& w)
      : L_(layout), x_(x), y_(y), w_(w.has_value() ? w->unsqueeze(-1) : at::Tensor()) {}

  at::Tensor act(const at::Tensor& z) const {
    return L_.act == Activation::Relu ? at::relu(z) : at::tanh(z);
  }
  // x * act'(z) and dh * act''(z) * rz from the stored output h. ReLU selects (as autograd's
  // threshold_backward does) rather than multiplying by 0/1, so an inactive unit passes 0 even when
  // x is ±inf (0 * inf would be NaN), and a NaN unit passes x; its second derivative is exactly 0.
  at::Tensor act_back(const at::Tensor& h, const at::Tensor& x) const {
    return L_.act == Activation::Relu ? at::threshold_backward(x, h, 0) : x * (1 - h * h);
  }
  at::Tensor act_curv(const at::Tensor& h, const at::Tensor& dh, const at::Tensor& rz) const {
    return L_.act == Activation::Relu ? at::zeros_like(h) : dh * (-2 * h * (1 - h * h)) * rz;
  }
  at::Tensor weighted(const at::Tensor& t) const { return w_.defined() ? t * w_ : t; }

  void forward(const at::Tensor& th) {
    const int n = L_.layers;
    h_.assign(n + 1, at::Tensor());
    h_[0] = x_;
    for (int l = 1; l <= n; ++l) {
      at::Tensor z = at::baddbmm(bias(L_, th, l).unsqueeze(1), h_[l - 1], weight(L_, th, l).transpose(1, 2));
      h_[l] = l < n ? act(z) : z;
    }
  }

  // Per-task loss [T]; keeps delta_L (and the log_std gradient) for backward().
  at::Tensor loss(const at::Tensor& th) {
    const int n = L_.layers;
    const at::Tensor& out = h_[n];
    const double k = static_cast<double>(out.size(1)), d = static_cast<double>(out.size(2));
    delta_.assign(n + 1, at::Tensor());
    log_std_grad_ = at::Tensor();
    switch (L_.loss) {
      case Loss::Mse: {
        const at::Tensor diff = out - y_;
        delta_[n] = weighted(diff) * (2.0 / (k * d));
        return weighted(diff * diff).sum({1, 2}) / (k * d);
      }
      case Loss::CrossEntropy: {
        const at::Tensor logp = at::log_softmax(out, -1);
        probs_ = logp.exp();
        const at::Tensor label = y_.unsqueeze(-1);
        const at::Tensor nll = -logp.gather(-1, label);
        delta_[n] = weighted(probs_ - at::zeros_like(out).scatter_(-1, label, 1.0)) / k;
        return weighted(nll).sum({1, 2}) / k;
      }
      case Loss::GaussianNll: {
        const at::Tensor s = th.narrow(-1, L_.log_std_off, L_.dim[n]).unsqueeze(1);
        inv_var_ = at::exp(-2 * s);
        residual_ = out - y_;
        const at::Tensor r2 = residual_ * residual_ * inv_var_;
        delta_[n] = weighted(residual_ * inv_var_) / k;
        log_std_grad_ = weighted(1 - r2).sum(1) / k;
        return weighted(0.5 * r2 + s + 0.5 * std::log(2 * M_PI)).sum({1, 2}) / k;
      }
    }
    TORCH_CHECK(false, "unreachable");
  }

  // Gradient [T, P] of the last loss(); keeps delta_l and dh_l for hvp().
  at::Tensor backward(const at::Tensor& th) {
    const int n = L_.layers;
    std::vector<at::Tensor> parts(2 * n);
    dh_.assign(n + 1, at::Tensor());
    for (int l = n; l >= 1; --l) {
      parts[2 * (l - 1)] = at::bmm(delta_[l].transpose(1, 2), h_[l - 1]).flatten(1);
      parts[2 * (l - 1) + 1] = delta_[l].sum(1);
      if (l > 1) {
        dh_[l - 1] = at::bmm(delta_[l], weight(L_, th, l));
        delta_[l - 1] = act_back(h_[l - 1], dh_[l - 1]);
      }
    }
    if (log_std_grad_.defined()) parts.push_back(log_std_grad_);
    return at::cat(parts, 1);
  }

  // Hessian-vector products [T, P] at the parameters of the last forward/loss/backward.
  at::Tensor hvp(const at::Tensor& th, const at::Tensor& v) {
    const int n = L_.layers;
    std::vector<at::Tensor> rz(n + 1), rh(n + 1);
    for (int l = 1; l <= n; ++l) {
      rz[l] = at::baddbmm(bias(L_, v, l).unsqueeze(1), h_[l - 1], weight(L_, v, l).transpose(1, 2));
      if (l > 1) rz[l] = rz[l] + at::bmm(rh[l - 1], weight(L_, th, l).transpose(1, 2));
      if (l < n) rh[l] = act_back(h_[l], rz[l]);
    }
    const double k = static_cast<double>(h_[n].size(1)), d = static_cast<double>(h_[n].size(2));
    at::Tensor rd, log_std_hv;
    switch (L_.loss) {
      case Loss::Mse:
        rd = weighted(rz[n]) * (2.0 / (k * d));
        break;
      case Loss::CrossEntropy:
        rd = weighted(probs_ * (rz[n] - (probs_ * rz[n]).sum(-1, true))) / k;
        break;
      case Loss::GaussianNll: {
        const at::Tensor rs = v.narrow(-1, L_.log_std_off, L_.dim[n]).unsqueeze(1);
        rd = weighted(inv_var_ * (rz[n] - 2 * residual_ * rs)) / k;
        log_std_hv = weighted(2 * inv_var_ * (residual_ * residual_ * rs - residual_ * rz[n])).sum(1) / k;
        break;
      }
    }
    std::vector<at::Tensor> parts(2 * n);
    for (int l = n; l >= 1; --l) {
      at::Tensor hw = at::bmm(rd.transpose(1, 2), h_[l - 1]);
      if (l > 1) hw = hw + at::bmm(delta_[l].transpose(1, 2), rh[l - 1]);
      parts[2 * (l - 1)] = hw.flatten(1);
      parts[2 * (l - 1) + 1] = rd.sum(1);
      if (l > 1) {
        const at::Tensor tmp = at::bmm(rd, weight(L_, th, l)) + at::bmm(delta_[l], weight(L_, v, l));
        rd = act_back(h_[l - 1], tmp) + act_curv(h_[l - 1], dh_[l - 1], rz[l - 1]);
      }
    }
    if (log_std_hv.defined()) parts.push_back(log_std_hv);
    return at::cat(parts, 1);
  }

 private:
  const Layout& L_;
  at::Tensor x_, y_, w_;
  std::vector<at::Tensor> h_, dh_, delta_;
  at::Tensor probs_, inv_var_, residual_, log_std_grad_;
};

at::Tensor alpha_row(const at::Tensor& alpha, int64_t s) { return alpha[alpha.size(0) > 1 ? s : 0]; }

// theta_{s+1} = theta_s - alpha_s * g_s in one fused elementwise kernel.
at::Tensor sgd_step(const at::Tensor& theta, const at::Tensor& alpha, const at::Tensor& g) {
  return at::addcmul(theta, g, alpha, -1);
}

}  // namespace

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> mlp_hvp(
    at::TensorList params, const at::Tensor& x, const at::Tensor& y, at::TensorList direction,
    const std::optional<at::Tensor>& sample_weight, c10::string_view activation,
    c10::string_view loss) {
  const HvpInputs in = prepare_hvp(params, x, y, direction, sample_weight, activation, loss);
  Net net(in.layout, in.x, in.y, in.weight);
  net.forward(in.theta);
  at::Tensor losses = net.loss(in.theta);
  const at::Tensor grad = net.backward(in.theta);
  if (!in.direction.defined()) return {losses, unpack(grad, params, true, in.tasks), {}};
  const at::Tensor hv = net.hvp(in.theta, in.direction);
  return {losses, unpack(grad, params, true, in.tasks), unpack(hv, params, true, in.tasks)};
}

std::tuple<at::Tensor, std::vector<at::Tensor>, at::Tensor, at::Tensor> mlp_maml(
    at::TensorList params, at::TensorList lrs, double lr, bool per_step, const at::Tensor& x_support,
    const at::Tensor& y_support, const std::optional<at::Tensor>& w_support,
    const at::Tensor& x_query, const at::Tensor& y_query, const std::optional<at::Tensor>& w_query,
    int64_t steps, c10::string_view activation, c10::string_view loss, bool first_order,
    int64_t checkpoint_every, bool save_for_backward) {
  (void)first_order;
  const MamlInputs in = prepare_maml(params, lrs, lr, per_step, x_support, y_support, w_support,
                                     &x_query, &y_query, w_query, steps, activation, loss,
                                     checkpoint_every);
  const int64_t T = in.tasks, P = in.layout.numel;
  const auto opts = in.theta0.options();
  at::Tensor checkpoints =
      at::empty({save_for_backward ? num_checkpoints(steps, checkpoint_every) : 0, T, P}, opts);
  at::Tensor theta = in.theta0.unsqueeze(0).expand({T, P});
  Net support(in.layout, in.xs, in.ys, in.ws);
  for (int64_t s = 0; s < steps; ++s) {
    support.forward(theta);
    support.loss(theta);
    theta = sgd_step(theta, alpha_row(in.alpha, s), support.backward(theta));
    if (save_for_backward && s + 1 < steps && (s + 1) % checkpoint_every == 0)
      checkpoints[(s + 1) / checkpoint_every - 1].copy_(theta);
  }
  Net query(in.layout, in.xq, in.yq, in.wq);
  query.forward(theta);
  at::Tensor query_loss = query.loss(theta);
  at::Tensor query_grad = save_for_backward ? query.backward(theta) : at::empty({0, P}, opts);
  return {query_loss, unpack(theta, params, false, T), checkpoints, query_grad};
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> mlp_maml_backward(
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
  at::Tensor v = grad_loss.to(in.theta0.scalar_type()).reshape({T, 1}) * query_grad;
  if (!grad_adapted.empty()) v = v + pack(grad_adapted, true);
  at::Tensor grad_alpha = lr_grad ? at::zeros_like(in.alpha) : at::Tensor();
  if (!first_order || lr_grad) {
    Net net(in.layout, in.xs, in.ys, in.ws);
    const at::Tensor theta0 = in.theta0.unsqueeze(0).expand({T, P});
    const int64_t every = checkpoint_every, segments = (steps + every - 1) / every;
    for (int64_t j = segments - 1; j >= 0; --j) {
      const int64_t s0 = j * every, end = std::min(s0 + every, steps);
      std::vector<at::Tensor> thetas{j == 0 ? theta0 : checkpoints[j - 1]};
      for (int64_t s = s0; s + 1 < end; ++s) {  // recompute the segment from its checkpoint
        net.forward(thetas.back());
        net.loss(thetas.back());
        thetas.push_back(sgd_step(thetas.back(), alpha_row(in.alpha, s), net.backward(thetas.back())));
      }
      for (int64_t s = end - 1; s >= s0; --s) {
        const at::Tensor& th = thetas[s - s0];
        net.forward(th);
        net.loss(th);
        const at::Tensor g = net.backward(th);
        if (lr_grad) grad_alpha[grad_alpha.size(0) > 1 ? s : 0] -= (g * v).sum(0);
        if (!first_order) v = v - net.hvp(th, alpha_row(in.alpha, s) * v);
      }
    }
  }
  std::vector<at::Tensor> lr_grads;
  if (lr_grad) lr_grads = reduce_lr_grads(grad_alpha, lrs, params);
  return {unpack(v.sum(0), params, false, T), lr_grads};
}

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> mlp_maml_grad(
    at::TensorList params, at::TensorList lrs, double lr, bool per_step, const at::Tensor& x_support,
    const at::Tensor& y_support, const std::optional<at::Tensor>& w_support,
    const at::Tensor& x_query, const at::Tensor& y_query, const std::optional<at::Tensor>& w_query,
    int64_t steps, c10::string_view activation, c10::string_view loss, bool first_order,
    const at::Tensor& loss_weight) {
  checks::check_loss_weight(loss_weight, params[0], x_support.size(0));
  auto [query_loss, adapted, checkpoints, query_grad] =
      mlp_maml(params, lrs, lr, per_step, x_support, y_support, w_support, x_query, y_query,
               w_query, steps, activation, loss, first_order, 1, true);
  auto [grads, lr_grads] = mlp_maml_backward(loss_weight, {}, params, lrs, lr, per_step, x_support,
                                             y_support, w_support, checkpoints, query_grad, steps,
                                             activation, loss, first_order, 1, !lrs.empty());
  return {query_loss, grads, lr_grads};
}

// The private twins, available on every device (the CPU test suite checks them against the
// reference; on CUDA the public ops use these functions directly, see mlp_cuda.cu).
TORCH_LIBRARY_IMPL(maml_ext, CompositeExplicitAutograd, m) {
  m.impl("_mlp_hvp_batched", &mlp_hvp);
  m.impl("_mlp_maml_batched", &mlp_maml);
  m.impl("_mlp_maml_backward_batched", &mlp_maml_backward);
  m.impl("_mlp_maml_grad_batched", &mlp_maml_grad);
}

}  // namespace maml_ext::mlp::batched
