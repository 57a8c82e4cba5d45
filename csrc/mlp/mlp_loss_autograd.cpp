// mlp_maml_loss: the meta-objective sum_t loss_weight[t] * query_loss[t] as a scalar whose
// autograd node hands over the meta-gradient that mlp_maml_grad computed in the same call. The
// node is C++ so that `meta_loss(batch).backward()` never re-enters Python in the engine, and it
// gives its gradients away when the graph is freed, so that they become .grad without a copy; on a
// plain `.backward()` it stores them itself instead of scheduling one AccumulateGrad per parameter,
// and backward_alone (ops.MetaLoss.backward) does the same without the engine where nothing else
// needs it (benchmarks/RESULTS.md, issue 14.2, the literal path).
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/record_function.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/sum.h>
#include <torch/csrc/autograd/anomaly_mode.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/accumulate_grad.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/graph_task.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/library.h>

#include "mlp_loss_autograd.h"

#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace maml_ext::mlp {
namespace {

using torch::autograd::AccumulateGrad;
using torch::autograd::Edge;
using torch::autograd::Node;
using torch::autograd::variable_list;

// What mlp_maml_grad returns: (query_loss [T], grads w.r.t. params, grads w.r.t. lrs).
using GradResult = std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>;
using GradSignature = GradResult(at::TensorList, at::TensorList, double, bool, const at::Tensor&,
                                 const at::Tensor&, const std::optional<at::Tensor>&,
                                 const at::Tensor&, const at::Tensor&,
                                 const std::optional<at::Tensor>&, int64_t, c10::string_view,
                                 c10::string_view, bool, const at::Tensor&);

// Whether a 0-dim CPU gradient is exactly 1 (then 1 * g == g bit for bit: no multiply, and the
// precomputed tensor itself can be handed over).
bool is_unit(const at::Tensor& g) {
  // Tensors with a Python key (FakeTensor under torch.compile/opcheck tracing) have no data.
  if (!g.defined() || !g.is_cpu() || g.dim() != 0 || g.key_set().has(c10::DispatchKey::Python)) {
    return false;
  }
  switch (g.scalar_type()) {
    case at::kFloat: return *g.const_data_ptr<float>() == 1.0f;
    case at::kDouble: return *g.const_data_ptr<double>() == 1.0;
    default: return false;
  }
}

// AccumulateGrad's own lock (Node::mutex_ is protected): held while .grad is written, as it does.
struct NodeLock : Node {
  static std::mutex& of(Node& node) { return node.*(&NodeLock::mutex_); }
};

// The AccumulateGrad behind `edge` when storing into its parameter's .grad here is exactly what
// the engine would do: `edge` is the only edge alive into it (else another node of this backward,
// say a regulariser on the weights, would still owe it a gradient: the engine would wait for ours
// forever), a CPU leaf that requires grad, and nothing observing the accumulation (tensor hooks,
// post-accumulate hooks, DDP's and FSDP's node hooks; the tensor holds its node weakly).
AccumulateGrad* plain_accumulator(const Edge& edge) {
  if (edge.function.use_count() != 1) return nullptr;
  auto* acc = dynamic_cast<AccumulateGrad*>(edge.function.get());
  if (acc == nullptr) return nullptr;
  const at::Tensor& var = acc->variable;
  if (!var.defined() || !var.requires_grad() || var.grad_fn() || !var.is_cpu()) return nullptr;
  if (!acc->pre_hooks().empty() || !acc->tensor_pre_hooks().empty() ||
      !acc->retains_grad_hooks().empty() || !acc->post_hooks().empty() ||
      acc->tensor_post_acc_grad_hooks() != nullptr) {
    return nullptr;
  }
  return acc;
}

// Whether anything would observe torch's engine running `node`: hooks on it or on its output
// (`retain_grad`, `register_hook`), anomaly mode (NaN checks), the profiler (its events).
bool engine_observed(Node& node) {
  return !node.pre_hooks().empty() || !node.tensor_pre_hooks().empty() ||
         !node.retains_grad_hooks().empty() || !node.post_hooks().empty() ||
         torch::autograd::AnomalyMode::is_enabled() || at::hasCallbacks();
}

struct MlpMamlLossBackward : Node {
  std::vector<at::Tensor> grads;  // d value / d input, per input (params, then lrs)
  bool released = false;

  std::string name() const override { return "MlpMamlLossBackward"; }

  // `.backward()` of this node's output without torch's engine: when the engine would run this
  // node alone and store every gradient into a plain parameter's .grad (see store_plain_grads),
  // do exactly that here and free the graph as it would; false (nothing done) otherwise.
  bool backward_alone() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (released || engine_observed(*this)) return false;
    std::vector<AccumulateGrad*> accumulators(grads.size(), nullptr);
    for (size_t i = 0; i < grads.size(); ++i) {
      if (!next_edge(i).is_valid()) continue;  // an input that does not require grad
      accumulators[i] = plain_accumulator(next_edge(i));
      if (accumulators[i] == nullptr || !grads[i].defined()) return false;
    }
    for (size_t i = 0; i < grads.size(); ++i) {
      if (accumulators[i] != nullptr) store(*accumulators[i], std::move(grads[i]));
    }
    release_variables();
    return true;
  }

  variable_list apply(variable_list&& grad_outputs) override {
    TORCH_CHECK(!released, torch::autograd::ERR_BACKWARD_TWICE);
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "maml_ext.ops.mlp_maml_loss is differentiable once; for higher-order derivatives "
                "use maml_ext.ops.mlp_maml (second derivatives of the loss) or maml_ext.reference");
    const at::Tensor& grad = grad_outputs[0];
    // The tensors themselves only when the graph is freed right after this (release_variables):
    // a retained graph must not hand out what it keeps (torch.autograd.grad would return it, and
    // an in-place change would reach the next backward); 1 * g below is g bit for bit.
    if (is_unit(grad) && !torch::autograd::get_current_graph_task_keep_graph()) {
      store_plain_grads();
      return std::move(grads);
    }
    variable_list out;
    out.reserve(grads.size());
    for (const at::Tensor& g : grads) out.push_back(grad.defined() ? at::mul(grad, g) : at::Tensor());
    return out;
  }

  // On a plain `loss.backward()` (every node runs, nothing captured, the graph freed after this
  // node, no hook on it, no anomaly mode) each plain parameter's gradient is accumulated here
  // with AccumulateGrad's own rule and its edge dropped: the engine then schedules no
  // AccumulateGrad node for it (~3-5 µs each). `torch.autograd.grad`, `inputs=`, hooks, retained
  // graphs and parameters that other nodes also feed keep the engine's path.
  void store_plain_grads() {
    const auto* exec_info = torch::autograd::get_current_graph_task_exec_info();
    // Anomaly mode checks the node's outputs (NaN) on their way to AccumulateGrad.
    if (exec_info == nullptr || !exec_info->empty() || !pre_hooks().empty() ||
        !post_hooks().empty() || torch::autograd::AnomalyMode::is_enabled()) {
      return;
    }
    for (size_t i = 0; i < grads.size(); ++i) {
      AccumulateGrad* acc = plain_accumulator(next_edge(i));
      if (acc == nullptr || !grads[i].defined()) continue;  // (a CPU leaf: a CPU gradient)
      store(*acc, std::move(grads[i]));
      // Not set_next_edge: dropping a child cannot break the topological order it asserts.
      next_edges()[i] = Edge();
    }
  }

  // Accumulates `grad` (the only reference: stolen, not copied) into the accumulator's .grad with
  // AccumulateGrad's own rule, under its own lock and with grad mode off, as the engine runs it.
  static void store(AccumulateGrad& acc, at::Tensor&& grad) {
    at::AutoGradMode no_grad(false);
    at::Tensor& var_grad = acc.variable.mutable_grad();
    std::lock_guard<std::mutex> lock(NodeLock::of(acc));
    AccumulateGrad::accumulateGrad(acc.variable, var_grad, grad, 1,
                                   [&var_grad](at::Tensor&& g) { var_grad = std::move(g); });
  }

  // Called by the engine right after apply when the graph is not retained: dropping the
  // precomputed tensors here leaves the engine the only owner, and AccumulateGrad then takes a
  // gradient as .grad instead of cloning it.
  void release_variables() override {
    grads.clear();
    released = true;
  }
};

const c10::TypedOperatorHandle<GradSignature>& grad_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("maml_ext::mlp_maml_grad", "")
                             .typed<GradSignature>();
  return op;
}

// Below autograd: the value alone (the gradients are computed and dropped; callers that need no
// gradient use mlp_maml, which skips the reverse pass).
at::Tensor mlp_maml_loss_value(at::TensorList params, at::TensorList lrs, double lr, bool per_step,
                               const at::Tensor& x_support, const at::Tensor& y_support,
                               const std::optional<at::Tensor>& w_support, const at::Tensor& x_query,
                               const at::Tensor& y_query, const std::optional<at::Tensor>& w_query,
                               int64_t steps, c10::string_view activation, c10::string_view loss,
                               bool first_order, const at::Tensor& loss_weight) {
  auto query_loss = std::get<0>(grad_op().call(params, lrs, lr, per_step, x_support, y_support,
                                               w_support, x_query, y_query, w_query, steps,
                                               activation, loss, first_order, loss_weight));
  // The same two ops as the Python front end always used: the same value, bit for bit.
  return at::mul(query_loss, loss_weight).sum();
}

at::Tensor mlp_maml_loss_autograd(at::TensorList params, at::TensorList lrs, double lr,
                                  bool per_step, const at::Tensor& x_support,
                                  const at::Tensor& y_support,
                                  const std::optional<at::Tensor>& w_support,
                                  const at::Tensor& x_query, const at::Tensor& y_query,
                                  const std::optional<at::Tensor>& w_query, int64_t steps,
                                  c10::string_view activation, c10::string_view loss,
                                  bool first_order, const at::Tensor& loss_weight) {
  const bool needs_grad = torch::autograd::compute_requires_grad(params, lrs);
  at::Tensor value;
  c10::intrusive_ptr<MlpMamlLossBackward> node;
  {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [query_loss, grads, lr_grads] =
        grad_op().call(params, lrs, lr, per_step, x_support, y_support, w_support, x_query,
                       y_query, w_query, steps, activation, loss, first_order, loss_weight);
    value = at::mul(query_loss, loss_weight).sum();
    if (needs_grad) {
      node = c10::make_intrusive<MlpMamlLossBackward>();
      node->grads = std::move(grads);
      for (at::Tensor& g : lr_grads) node->grads.push_back(std::move(g));
    }
  }
  if (node) {
    node->set_next_edges(torch::autograd::collect_next_edges(params, lrs));
    torch::autograd::set_history(value, node);
  }
  return value;
}

}  // namespace

bool backward_alone(const at::Tensor& loss) {
  if (!loss.defined() || !loss.requires_grad()) return false;
  const auto& fn = loss.grad_fn();  // held by `loss` throughout
  auto* node = dynamic_cast<MlpMamlLossBackward*>(fn.get());
  return node != nullptr && node->backward_alone();
}

TORCH_LIBRARY_IMPL(maml_ext, CompositeExplicitAutograd, m) {
  m.impl("mlp_maml_loss", &mlp_maml_loss_value);
}
TORCH_LIBRARY_IMPL(maml_ext, Autograd, m) { m.impl("mlp_maml_loss", &mlp_maml_loss_autograd); }

}  // namespace maml_ext::mlp
