#include "mlp/mlp_common.h"

#include <ATen/ATen.h>

#include <c10/util/accumulate.h>

#include <cmath>
#include <cstring>

namespace maml_ext::mlp {

std::string dtype_name(at::ScalarType t) {
  return "torch." + std::string(c10::getDtypeNames(t).first);
}

namespace {

int64_t numel_without_task(const at::Tensor& t, bool task_dim) {
  return task_dim ? t.numel() / std::max<int64_t>(t.size(0), 1) : t.numel();
}

}  // namespace

Layout layout_from_params(at::TensorList params, bool task_dim, int64_t tasks,
                          const std::string& activation, const std::string& loss_name) {
  const Activation act = parse_activation(activation);
  const Loss loss = parse_loss(loss_name);
  const bool gaussian = loss == Loss::GaussianNll;
  const int64_t n = static_cast<int64_t>(params.size());
  TORCH_CHECK_VALUE(n >= (gaussian ? 3 : 2) && (n - (gaussian ? 1 : 0)) % 2 == 0,
                    "params: expected [W1, b1, ..., WL, bL", gaussian ? ", log_std]" : "]",
                    ", got ", n, " tensors");
  const int64_t layers = (n - (gaussian ? 1 : 0)) / 2;
  const int64_t lead = task_dim ? 1 : 0;
  const auto& ref = params[0];
  TORCH_CHECK_TYPE(ref.scalar_type() == at::kFloat || ref.scalar_type() == at::kDouble,
                   "params[0]: expected float32 or float64, got ", dtype_name(ref.scalar_type()));
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK_TYPE(params[i].scalar_type() == ref.scalar_type(), "params[", i, "]: expected dtype ",
                     dtype_name(ref.scalar_type()), ", got ",
                     dtype_name(params[i].scalar_type()));
    TORCH_CHECK(params[i].device() == ref.device(), "params[", i, "]: expected device ", ref.device(),
                ", got ", params[i].device());
    if (task_dim) {
      TORCH_CHECK_VALUE(params[i].dim() >= 1 && params[i].size(0) == tasks, "params[", i,
                        "]: expected a leading task dimension of size ", tasks, ", got shape ",
                        params[i].sizes());
    }
  }
  std::vector<int64_t> widths(layers + 1);
  for (int64_t l = 0; l < layers; ++l) {
    const auto& W = params[2 * l];
    const auto& b = params[2 * l + 1];
    TORCH_CHECK_VALUE(W.dim() == 2 + lead, "params[", 2 * l, "] (W", l + 1, "): expected ",
                      task_dim ? "[T, out, in]" : "[out, in]", ", got shape ", W.sizes());
    TORCH_CHECK_VALUE(b.dim() == 1 + lead && b.size(lead) == W.size(lead), "params[", 2 * l + 1,
                      "] (b", l + 1, "): expected ", task_dim ? "[T, " : "[", W.size(lead),
                      "], got shape ", b.sizes());
    if (l == 0) {
      widths[0] = W.size(lead + 1);
    } else {
      TORCH_CHECK_VALUE(W.size(lead + 1) == widths[l], "params[", 2 * l, "] (W", l + 1,
                        "): expected ", widths[l], " input features to match W", l,
                        ", got shape ", W.sizes());
    }
    widths[l + 1] = W.size(lead);
    TORCH_CHECK_VALUE(widths[l + 1] > 0 && widths[l] > 0, "params[", 2 * l, "] (W", l + 1,
                      "): expected at least one input and one output feature, got shape ", W.sizes());
  }
  if (gaussian) {
    const auto& s = params[n - 1];
    TORCH_CHECK_VALUE(s.dim() == 1 + lead && s.size(lead) == widths[layers], "params[", n - 1,
                      "] (log_std): expected ", task_dim ? "[T, " : "[", widths[layers],
                      "], got shape ", s.sizes());
  }
  return make_layout(widths, act, loss);
}

void check_batch(const Layout& L, const char* what, const at::Tensor& x, const at::Tensor& y,
                 const std::optional<at::Tensor>& weight, int64_t tasks, const at::Tensor& like) {
  TORCH_CHECK(x.device() == like.device() && y.device() == like.device(), what,
              ": expected tensors on ", like.device(), " like the parameters");
  TORCH_CHECK_TYPE(x.scalar_type() == like.scalar_type(), what, " x: expected dtype ",
                   dtype_name(like.scalar_type()), ", got ", dtype_name(x.scalar_type()));
  TORCH_CHECK_VALUE(x.dim() == 3 && x.size(0) == tasks && x.size(2) == L.dim[0], what,
                    " x: expected [T=", tasks, ", K, ", L.dim[0], "], got shape ", x.sizes());
  TORCH_CHECK_VALUE(tasks > 0, what, " x: expected at least one task, got shape ", x.sizes());
  const int64_t k = x.size(1);
  TORCH_CHECK_VALUE(k > 0, what, " x: expected at least one example per task, got shape ", x.sizes());
  if (L.loss == Loss::CrossEntropy) {
    TORCH_CHECK_TYPE(y.scalar_type() == at::kLong, what, " y: expected int64 class labels, got ",
                     dtype_name(y.scalar_type()));
    TORCH_CHECK_VALUE(y.dim() == 2 && y.size(0) == tasks && y.size(1) == k, what,
                      " y: expected [T=", tasks, ", K=", k, "], got shape ", y.sizes());
  } else {
    TORCH_CHECK_TYPE(y.scalar_type() == like.scalar_type(), what, " y: expected dtype ",
                     dtype_name(like.scalar_type()), ", got ", dtype_name(y.scalar_type()));
    TORCH_CHECK_VALUE(y.dim() == 3 && y.size(0) == tasks && y.size(1) == k &&
                          y.size(2) == L.dim[L.layers],
                      what, " y: expected [T=", tasks, ", K=", k, ", ", L.dim[L.layers],
                      "], got shape ", y.sizes());
  }
  if (weight.has_value()) {
    const auto& w = *weight;
    TORCH_CHECK(w.device() == like.device(), what, " weight: expected device ", like.device());
    TORCH_CHECK_TYPE(w.scalar_type() == like.scalar_type(), what, " weight: expected dtype ",
                     dtype_name(like.scalar_type()), ", got ", dtype_name(w.scalar_type()));
    TORCH_CHECK_VALUE(w.dim() == 2 && w.size(0) == tasks && w.size(1) == k, what,
                      " weight: expected [T=", tasks, ", K=", k, "], got shape ", w.sizes());
  }
}

// Strided row copies: out[r, off + c] = src[r, c] (or the reverse), on the CPU without one ATen
// call per parameter (those calls dominate the small-model regime).
void copy_rows(const at::Tensor& src, int64_t src_ld, int64_t src_off, at::Tensor& dst,
               int64_t dst_ld, int64_t dst_off, int64_t rows, int64_t cols) {
  const int64_t bytes = cols * static_cast<int64_t>(src.element_size());
  const char* s = static_cast<const char*>(src.const_data_ptr());
  char* d = static_cast<char*>(dst.data_ptr());
  const int64_t es = src.element_size();
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(d + (r * dst_ld + dst_off) * es, s + (r * src_ld + src_off) * es, bytes);
}

at::Tensor pack(at::TensorList params, bool task_dim) {
  const int64_t rows = task_dim ? params[0].size(0) : 1;
  int64_t total = 0;
  for (const auto& p : params) total += p.numel() / std::max<int64_t>(rows, 1);
  if (!params[0].is_cpu()) {
    std::vector<at::Tensor> parts;
    for (const auto& p : params) parts.push_back(p.reshape({rows, -1}));
    at::Tensor flat = at::cat(parts, 1);
    return task_dim ? flat.contiguous() : flat.reshape({total});
  }
  at::Tensor flat = at::empty(task_dim ? std::vector<int64_t>{rows, total} : std::vector<int64_t>{total},
                              params[0].options());
  int64_t off = 0;
  for (const auto& p : params) {
    const at::Tensor c = p.contiguous();
    const int64_t n = c.numel() / std::max<int64_t>(rows, 1);
    copy_rows(c, n, 0, flat, total, off, rows, n);
    off += n;
  }
  return flat;
}

std::vector<at::Tensor> unpack(const at::Tensor& flat, at::TensorList like, bool like_has_task_dim,
                               int64_t tasks) {
  std::vector<at::Tensor> out;
  out.reserve(like.size());
  int64_t off = 0;
  const bool flat_has_task = flat.dim() == 2;
  for (const auto& p : like) {
    const int64_t n = numel_without_task(p, like_has_task_dim);
    std::vector<int64_t> shape;
    if (flat_has_task) shape.push_back(tasks);
    auto sizes = p.sizes();
    shape.insert(shape.end(), sizes.begin() + (like_has_task_dim ? 1 : 0), sizes.end());
    // A fresh tensor per parameter: outputs of an operator must not alias each other.
    at::Tensor o = at::empty(shape, flat.options());
    const int64_t rows = flat_has_task ? tasks : 1;
    if (flat.is_cpu()) {
      copy_rows(flat, flat.size(-1), off, o, n, 0, rows, n);
    } else {
      o.view({rows, n}).copy_(flat.reshape({rows, -1}).narrow(1, off, n));
    }
    out.push_back(o);
    off += n;
  }
  return out;
}

at::Tensor expand_lrs(at::TensorList lrs, double lr, bool per_step, int64_t steps,
                      at::TensorList params, const at::Tensor& like) {
  int64_t total = 0;
  for (const auto& p : params) total += p.numel();
  if (lrs.empty()) return at::full({1, total}, lr, like.options());
  TORCH_CHECK_VALUE(lrs.size() == params.size(), "lrs: expected one learning rate per parameter (",
                    params.size(), "), got ", lrs.size());
  const int64_t rows = per_step ? steps : 1;
  std::vector<at::Tensor> cols;
  for (size_t i = 0; i < lrs.size(); ++i) {
    const auto& a = lrs[i];
    TORCH_CHECK(a.device() == like.device(), "lrs[", i, "]: expected device ", like.device());
    TORCH_CHECK_TYPE(a.scalar_type() == like.scalar_type(), "lrs[", i, "]: expected dtype ",
                     dtype_name(like.scalar_type()), ", got ", dtype_name(a.scalar_type()));
    const int64_t n = params[i].numel();
    TORCH_CHECK_VALUE(!per_step || (a.dim() >= 1 && a.size(0) == steps), "lrs[", i,
                      "]: per-step learning rates need a leading dimension of size steps=", steps,
                      ", got shape ", a.sizes());
    // A scalar (one entry) or exactly the parameter's shape: a right count in a wrong shape
    // (e.g. a transposed W) is an error, not silently reinterpreted.
    const auto rest = per_step ? a.sizes().slice(1) : a.sizes();
    const int64_t per_row = c10::multiply_integers(rest);
    TORCH_CHECK_VALUE(per_row == 1 || rest == params[i].sizes(), "lrs[", i,
                      "]: expected a scalar or the shape ", params[i].sizes(), " of its parameter",
                      per_step ? " after the step dimension" : "", ", got shape ", a.sizes());
    cols.push_back(a.reshape({rows, per_row}).expand({rows, n}));
  }
  return at::cat(cols, 1).contiguous();
}

std::vector<at::Tensor> reduce_lr_grads(const at::Tensor& flat, at::TensorList lrs,
                                        at::TensorList params) {
  std::vector<at::Tensor> out;
  int64_t off = 0;
  for (size_t i = 0; i < lrs.size(); ++i) {
    const int64_t n = params[i].numel();
    at::Tensor g = flat.narrow(1, off, n);
    const int64_t rows = flat.size(0);
    if (lrs[i].numel() == rows && n != 1) g = g.sum(1, /*keepdim=*/true);
    at::Tensor r = g.reshape(lrs[i].sizes());
    out.push_back(r.is_alias_of(flat) ? r.clone() : r);  // outputs must not alias each other
    off += n;
  }
  return out;
}

std::optional<at::Tensor> contiguous(const std::optional<at::Tensor>& t) {
  if (!t.has_value()) return std::nullopt;
  return t->contiguous();
}

void check_labels(const Layout& L, const at::Tensor& y, const char* what) {
  // Reading label values synchronises with the device: on CUDA they are checked where they are
  // used (a device check in the fused kernel, ATen's index asserts in gather on the batched path).
  if (L.loss != Loss::CrossEntropy || y.numel() == 0 || !y.is_cpu()) return;
  const int64_t classes = L.dim[L.layers];
  const auto lo = y.min().item<int64_t>();
  const auto hi = y.max().item<int64_t>();
  TORCH_CHECK_VALUE(lo >= 0 && hi < classes, what, " y: class labels must lie in [0, ", classes,
                    "), got values in [", lo, ", ", hi, "]");
}

void check_lr(double lr) {
  // Any sign (Meta-SGD's learned steps have none); tensor rates are not read here: a value check
  // would synchronise with the device, and non-finite rates propagate like any non-finite input.
  TORCH_CHECK_VALUE(std::isfinite(lr), "lr: expected a finite value, got ", lr);
}

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
  check_lr(lr);
  in.xs = x_support.contiguous();
  in.ys = y_support.contiguous();
  in.ws = contiguous(w_support);
  return in;
}

HvpInputs prepare_hvp(at::TensorList params, const at::Tensor& x, const at::Tensor& y,
                      at::TensorList direction, const std::optional<at::Tensor>& sample_weight,
                      c10::string_view activation, c10::string_view loss) {
  TORCH_CHECK_VALUE(x.dim() == 3, "x: expected [T, K, in], got shape ", x.sizes());
  HvpInputs in;
  in.tasks = x.size(0);
  in.layout = layout_from_params(params, true, in.tasks, std::string(activation), std::string(loss));
  check_batch(in.layout, "support", x, y, sample_weight, in.tasks, params[0]);
  check_labels(in.layout, y, "support");
  // An empty direction list asks for the loss and gradient only (no R-pass).
  TORCH_CHECK_VALUE(direction.empty() || direction.size() == params.size(), "direction: expected ",
                    params.size(), " tensors like params (or none), got ", direction.size());
  for (size_t i = 0; i < direction.size(); ++i) {
    TORCH_CHECK_VALUE(direction[i].sizes() == params[i].sizes(), "direction[", i,
                      "]: expected shape ", params[i].sizes(), ", got ", direction[i].sizes());
    TORCH_CHECK_TYPE(direction[i].scalar_type() == params[i].scalar_type(), "direction[", i,
                     "]: expected dtype ", dtype_name(params[i].scalar_type()), ", got ",
                     dtype_name(direction[i].scalar_type()));
    TORCH_CHECK(direction[i].device() == params[i].device(), "direction[", i, "]: expected device ",
                params[i].device(), ", got ", direction[i].device());
  }
  in.theta = pack(params, true);
  if (!direction.empty()) in.direction = pack(direction, true);
  in.x = x.contiguous();
  in.y = y.contiguous();
  in.weight = contiguous(sample_weight);
  return in;
}

namespace {

void check_like(const at::Tensor& t, const at::Tensor& like, const std::string& what) {
  TORCH_CHECK(t.device() == like.device(), what, ": expected device ", like.device(), ", got ",
              t.device());
  TORCH_CHECK_TYPE(t.scalar_type() == like.scalar_type(), what, ": expected dtype ",
                   dtype_name(like.scalar_type()), ", got ", dtype_name(t.scalar_type()));
}

}  // namespace

void check_backward(const at::Tensor& grad_loss, at::TensorList grad_adapted, at::TensorList params,
                    const at::Tensor& checkpoints, const at::Tensor& query_grad, int64_t tasks,
                    int64_t numel, int64_t steps, int64_t checkpoint_every) {
  const at::Tensor& like = params[0];
  check_like(grad_loss, like, "grad_loss");
  TORCH_CHECK_VALUE(grad_loss.dim() == 1 && grad_loss.size(0) == tasks, "grad_loss: expected [T=",
                    tasks, "], got shape ", grad_loss.sizes());
  TORCH_CHECK_VALUE(grad_adapted.empty() || grad_adapted.size() == params.size(),
                    "grad_adapted: expected none or one tensor per parameter (", params.size(),
                    "), got ", grad_adapted.size());
  for (size_t i = 0; i < grad_adapted.size(); ++i) {
    const std::string what = "grad_adapted[" + std::to_string(i) + "]";
    check_like(grad_adapted[i], like, what);
    const auto p = params[i].sizes();
    const auto g = grad_adapted[i].sizes();
    TORCH_CHECK_VALUE(g.size() == p.size() + 1 && g[0] == tasks && g.slice(1) == p, what,
                      ": expected [T=", tasks, ", *", p, "], got shape ", g);
  }
  check_like(query_grad, like, "query_grad");
  TORCH_CHECK_VALUE(query_grad.dim() == 2 && query_grad.size(0) == tasks && query_grad.size(1) == numel,
                    "query_grad: expected [", tasks, ", ", numel, "] saved by mlp_maml, got shape ",
                    query_grad.sizes());
  check_like(checkpoints, like, "checkpoints");
  const int64_t n = num_checkpoints(steps, checkpoint_every);
  TORCH_CHECK_VALUE(checkpoints.dim() == 3 && checkpoints.size(0) == n &&
                        checkpoints.size(1) == tasks && checkpoints.size(2) == numel,
                    "checkpoints: expected [", n, ", ", tasks, ", ", numel,
                    "] saved by mlp_maml with the same steps and checkpoint_every, got shape ",
                    checkpoints.sizes());
}

void check_loss_weight(const at::Tensor& loss_weight, const at::Tensor& like, int64_t tasks) {
  TORCH_CHECK(loss_weight.device() == like.device(), "loss_weight: expected device ", like.device(),
              ", got ", loss_weight.device());
  TORCH_CHECK_TYPE(loss_weight.scalar_type() == like.scalar_type(), "loss_weight: expected dtype ",
                   dtype_name(like.scalar_type()), ", got ", dtype_name(loss_weight.scalar_type()));
  TORCH_CHECK_VALUE(loss_weight.dim() == 1 && loss_weight.size(0) == tasks,
                    "loss_weight: expected [T=", tasks, "], got shape ", loss_weight.sizes());
}

}  // namespace maml_ext::mlp
