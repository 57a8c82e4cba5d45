#include "mlp/mlp_common.h"

#include "maml_ext_checks.h"  // generated from maml_ext/reference/_checks.py

#include <ATen/ATen.h>

#include <cstring>

namespace maml_ext::mlp {

namespace {

int64_t numel_without_task(const at::Tensor& t, bool task_dim) {
  return task_dim ? t.numel() / std::max<int64_t>(t.size(0), 1) : t.numel();
}

}  // namespace

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
  const int64_t rows = per_step ? steps : 1;
  std::vector<at::Tensor> cols;
  for (size_t i = 0; i < lrs.size(); ++i) {
    const int64_t per_row = lrs[i].numel() / rows;  // 1 (a scalar) or the parameter's numel
    cols.push_back(lrs[i].reshape({rows, per_row}).expand({rows, params[i].numel()}));
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
  checks::check_label_range(what, L.dim[L.layers], y.min().item<int64_t>(), y.max().item<int64_t>());
}

MamlInputs prepare_maml(at::TensorList params, at::TensorList lrs, double lr, bool per_step,
                        const at::Tensor& x_support, const at::Tensor& y_support,
                        const std::optional<at::Tensor>& w_support, const at::Tensor* x_query,
                        const at::Tensor* y_query, const std::optional<at::Tensor>& w_query,
                        int64_t steps, c10::string_view activation, c10::string_view loss,
                        int64_t checkpoint_every) {
  const auto query = [](const at::Tensor* t) { return t ? std::optional<at::Tensor>(*t) : std::nullopt; };
  const std::vector<int64_t> widths =
      checks::check_maml(params, lrs, lr, per_step, x_support, y_support, w_support, query(x_query),
                         query(y_query), w_query, steps, activation, loss, checkpoint_every);
  MamlInputs in;
  in.tasks = x_support.size(0);
  in.layout = make_layout(widths, parse_activation(std::string(activation)), parse_loss(std::string(loss)));
  check_labels(in.layout, y_support, "support");
  if (x_query) {
    check_labels(in.layout, *y_query, "query");
    in.xq = x_query->contiguous();
    in.yq = y_query->contiguous();
    in.wq = contiguous(w_query);
  }
  in.theta0 = pack(params, false);
  in.alpha = expand_lrs(lrs, lr, per_step, steps, params, in.theta0);
  in.xs = x_support.contiguous();
  in.ys = y_support.contiguous();
  in.ws = contiguous(w_support);
  return in;
}

HvpInputs prepare_hvp(at::TensorList params, const at::Tensor& x, const at::Tensor& y,
                      at::TensorList direction, const std::optional<at::Tensor>& sample_weight,
                      c10::string_view activation, c10::string_view loss) {
  const std::vector<int64_t> widths =
      checks::check_hvp(params, x, y, direction, sample_weight, activation, loss);
  HvpInputs in;
  in.tasks = x.size(0);
  in.layout = make_layout(widths, parse_activation(std::string(activation)), parse_loss(std::string(loss)));
  check_labels(in.layout, y, "support");
  in.theta = pack(params, true);
  if (!direction.empty()) in.direction = pack(direction, true);  // none: no R-pass
  in.x = x.contiguous();
  in.y = y.contiguous();
  in.weight = contiguous(sample_weight);
  return in;
}

}  // namespace maml_ext::mlp
