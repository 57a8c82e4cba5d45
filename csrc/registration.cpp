// The one place where maml_ext's operators are declared (schemas) and where the Python module
// _C is defined. Kernels register themselves per device in csrc/<family>/*_cpu.cpp / *_cuda.cu;
// autograd formulas and fake (meta) kernels are registered in maml_ext/ops/.
#include <pybind11/pybind11.h>
#include <torch/csrc/utils/pybind.h>
#include <torch/library.h>

#include <string>

#include "mlp/adam_lists.h"
#include "mlp/mlp_engine.h"
#include "mlp/mlp_loss_autograd.h"
#include "replay/replay_memory.h"

TORCH_LIBRARY(maml_ext, m) {
  /* From csrc/inner_update */
  // theta'_t = theta(_t) - alpha * g_t for every parameter tensor of every task at once.
  // lrs: empty (use lr) or one tensor per parameter: scalar or elementwise, with a leading
  // step dimension indexed by `step` when it is given (MAML++ per-step rates).
  m.def("inner_update(Tensor[] params, Tensor[] grads, Tensor[] lrs, float lr, int? step) -> Tensor[]");
  m.def("inner_update_(Tensor(a!)[] params, Tensor[] grads, Tensor[] lrs, float lr, int? step) -> ()");

  /* From csrc/mlp */
  // Per-task loss, gradient and Hessian-vector product of an MLP with per-task parameters.
  const std::string hvp =
      "(Tensor[] params, Tensor x, Tensor y, Tensor[] direction, Tensor? sample_weight, "
      "str activation, str loss) -> (Tensor, Tensor[], Tensor[])";
  // The whole inner loop: returns (query_loss [T], adapted params, checkpoints, query_grad);
  // the last two are saved for mlp_maml_backward.
  const std::string maml =
      "(Tensor[] params, Tensor[] lrs, float lr, bool per_step, Tensor x_support, "
      "Tensor y_support, Tensor? w_support, Tensor x_query, Tensor y_query, Tensor? w_query, "
      "int steps, str activation, str loss, bool first_order, int checkpoint_every, "
      "bool save_for_backward) -> (Tensor, Tensor[], Tensor, Tensor)";
  const std::string maml_backward =
      "(Tensor grad_loss, Tensor[] grad_adapted, Tensor[] params, Tensor[] lrs, float lr, "
      "bool per_step, Tensor x_support, Tensor y_support, Tensor? w_support, Tensor checkpoints, "
      "Tensor query_grad, int steps, str activation, str loss, bool first_order, "
      "int checkpoint_every, bool need_lr_grad) -> (Tensor[], Tensor[])";
  // Query losses and the meta-gradient of sum_t loss_weight[t] * query_loss[t] in one call (no
  // autograd graph): returns (query_loss [T], grads w.r.t. params, grads w.r.t. lrs).
  const std::string maml_grad =
      "(Tensor[] params, Tensor[] lrs, float lr, bool per_step, Tensor x_support, "
      "Tensor y_support, Tensor? w_support, Tensor x_query, Tensor y_query, Tensor? w_query, "
      "int steps, str activation, str loss, bool first_order, Tensor loss_weight) "
      "-> (Tensor, Tensor[], Tensor[])";
  m.def(("mlp_hvp" + hvp).c_str());
  m.def(("mlp_maml" + maml).c_str());
  m.def(("mlp_maml_backward" + maml_backward).c_str());
  m.def(("mlp_maml_grad" + maml_grad).c_str());
  // The meta-objective sum_t loss_weight[t] * query_loss[t] (mlp_maml_grad's arguments) as a
  // scalar whose autograd node hands over the meta-gradient computed in the same call
  // (csrc/mlp/mlp_loss_autograd.cpp): loss.backward() without Python in the engine.
  m.def(("mlp_maml_loss" + maml_grad.substr(0, maml_grad.rfind("->")) + "-> Tensor").c_str());
  // A whole training step: mlp_maml_grad with a float lr, then (when the loss and gradient are
  // finite) the gradient clipped to [-clip_value, clip_value] and torch.optim.Adam's update of
  // params, exp_avgs, exp_avg_sqs and step_counts in place. Returns (the meta-loss
  // sum_t loss_weight[t] * query_loss[t], whether the step was applied (a bool tensor), the
  // clipped gradient per parameter when return_grads, else []).
  m.def("mlp_maml_adam_(Tensor(a!)[] params, Tensor x_support, Tensor y_support, Tensor? w_support, "
        "Tensor x_query, Tensor y_query, Tensor? w_query, float lr, int steps, str activation, "
        "str loss, bool first_order, Tensor loss_weight, Tensor(b!)[] exp_avgs, "
        "Tensor(c!)[] exp_avg_sqs, Tensor(d!) step_counts, float adam_lr, float beta1, float beta2, "
        "float weight_decay, float eps, bool maximize, float clip_value, bool return_grads) "
        "-> (Tensor, Tensor, Tensor[])");
  // BMAML's Chaser loss in one call (no autograd graph): params are the M initial particles
  // (each parameter [M, ...]); returns (sum_t |chaser_t - leader_t|^2 / T [scalar], the chasers'
  // query losses [T, M], its gradient w.r.t. params); the leader is a constant.
  m.def("mlp_bmaml_chaser(Tensor[] params, Tensor x_support, Tensor y_support, Tensor x_query, "
        "Tensor y_query, int steps, int leader_steps, float lr, str activation, str loss, "
        "bool first_order) -> (Tensor, Tensor, Tensor[])");
  // Evaluation: the query losses [steps + 1, T] before each of `steps` SGD steps and after the
  // last, and with `outputs` the query outputs [steps + 1, T, K_query, out] (else [0, ...]).
  m.def("mlp_maml_eval(Tensor[] params, Tensor[] lrs, float lr, bool per_step, Tensor x_support, "
        "Tensor y_support, Tensor? w_support, Tensor x_query, Tensor y_query, Tensor? w_query, "
        "int steps, str activation, str loss, bool outputs) -> (Tensor, Tensor)");
  // The batched (bmm over tasks) implementation that CUDA uses, callable on any device so that
  // it is tested on CPU-only machines too (csrc/mlp/mlp_batched.cpp).
  m.def(("_mlp_hvp_batched" + hvp).c_str());
  m.def(("_mlp_maml_batched" + maml).c_str());
  m.def(("_mlp_maml_backward_batched" + maml_backward).c_str());
  m.def(("_mlp_maml_grad_batched" + maml_grad).c_str());
  // The fused per-task CUDA kernel body run sequentially on the CPU (csrc/mlp/mlp_fused.h).
  m.def(("_mlp_maml_grad_emulated" + maml_grad).c_str());

  /* From csrc/svgd */
  // One SVGD step per task, particles [T, M, ...] (split over tensors) moved to
  // x + step_size * phi with grad log p = score_scale * scores (same shapes): returns (the moved
  // particles per tensor, RBF kernel [T, M, M], bandwidth [T]); the last two are saved for the
  // backward.
  m.def("svgd_step(Tensor[] particles, Tensor[] scores, float score_scale, float step_size) "
        "-> (Tensor[], Tensor, Tensor)");
  m.def("svgd_step_backward(Tensor[] grad_out, Tensor[] particles, Tensor[] scores, "
        "float score_scale, float step_size, Tensor kernel, Tensor bandwidth) -> (Tensor[], Tensor[])");
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "maml_ext compiled kernels; importing this module registers the torch.ops.maml_ext ops";
  m.attr("torch_version") = MAML_EXT_TORCH_VERSION;
  m.attr("with_cuda") = static_cast<bool>(MAML_EXT_WITH_CUDA);
  m.def("cpu_capability", &maml_ext::mlp::cpu_capability,
        "The CPU kernel variant in use: 'default', 'avx2' or 'avx512'.");
  m.def("set_cpu_capability", &maml_ext::mlp::set_cpu_capability, pybind11::arg("name"),
        "Force a CPU kernel variant (for testing each variant).");
  m.def("backward_alone", &maml_ext::mlp::backward_alone, pybind11::arg("loss"),
        "A plain `loss.backward()` of an mlp_maml_loss output without torch's engine, where the "
        "engine would only store its gradients; False (nothing done) otherwise.");
  maml_ext::bind_adam_lists(m);
  m.def("replay_memory_enter", &maml_ext::replay::enter,
        "Open a scope in which freed CPU blocks of >= 64 KiB are reused by size (nests); False when "
        "the allocator could not be installed.");
  m.def("replay_memory_leave", &maml_ext::replay::leave,
        "Close a scope; the outermost frees the kept blocks.");
  m.def("replay_memory_stats", &maml_ext::replay::stats,
        "(blocks reused, blocks allocated fresh) inside scopes since the process started.");
}
