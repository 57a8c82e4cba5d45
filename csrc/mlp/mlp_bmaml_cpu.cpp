// CPU implementation of maml_ext::mlp_bmaml_chaser: BMAML's Chaser loss and its exact gradient
// w.r.t. the M initial particles in one call (no autograd graph). Checks and packing here, the
// per-task arithmetic in the engine (bmaml_chaser_tasks, mlp_engine.cpp), tasks in chunks over
// threads with the sums over tasks in a fixed order (mlp_cpu_tasks.h).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

#include "maml_ext_checks.h"  // generated from maml_ext/reference/_checks.py
#include "mlp/mlp_common.h"
#include "mlp/mlp_cpu_tasks.h"
#include "mlp/mlp_engine.h"

namespace maml_ext::mlp {
namespace {

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> mlp_bmaml_chaser_cpu(
    at::TensorList params, const at::Tensor& x_support, const at::Tensor& y_support, const at::Tensor& x_query,
    const at::Tensor& y_query, int64_t steps, int64_t leader_steps, double lr, c10::string_view activation,
    c10::string_view loss, bool first_order) {
  const std::vector<int64_t> widths = checks::check_bmaml_chaser(params, x_support, y_support, x_query, y_query,
                                                                 steps, leader_steps, lr, activation, loss);
  const Layout L = make_layout(widths, parse_activation(std::string(activation)), parse_loss(std::string(loss)));
  check_labels(L, y_support, "support");
  check_labels(L, y_query, "query");
  const int64_t T = x_support.size(0), M = params[0].size(0), P = L.numel;
  const at::Tensor theta0 = pack(params, true);  // [M, P]
  const at::Tensor xs = x_support.contiguous(), ys = y_support.contiguous();
  const at::Tensor xq = x_query.contiguous(), yq = y_query.contiguous();
  // The leader's data: support + query examples of each task.
  const at::Tensor xa = at::cat({xs, xq}, 1), ya = at::cat({ys, yq}, 1);
  const auto opts = theta0.options();
  at::Tensor query_loss = at::empty({T, M}, opts);
  at::Tensor chase = at::empty({T}, opts.dtype(at::kDouble));
  at::Tensor grad = at::empty({M, P}, opts);
  const TaskChunks chunks =
      task_chunks(T, task_grain(L, M * (xs.size(1) + xa.size(1)), steps + leader_steps));
  AT_DISPATCH_FLOATING_TYPES(theta0.scalar_type(), "mlp_bmaml_chaser_cpu", [&] {
    BmamlArgs<scalar_t> a{};
    a.layout = &L;
    a.tasks = T;
    a.particles = M;
    a.steps = steps;
    a.leader_steps = leader_steps;
    a.lr = lr;
    a.first_order = first_order;
    a.theta0 = theta0.data_ptr<scalar_t>();
    a.support = make_batch<scalar_t>(xs, ys, std::nullopt, L.loss);
    a.query = make_batch<scalar_t>(xq, yq, std::nullopt, L.loss);
    a.all = make_batch<scalar_t>(xa, ya, std::nullopt, L.loss);
    a.query_loss = query_loss.data_ptr<scalar_t>();
    a.chase = chase.data_ptr<double>();
    a.grad_sum = chunk_sums_buffer<scalar_t>(chunks.count * M * P);
    const auto fn = engine<scalar_t>().bmaml_chaser_tasks;
    for_each_chunk(chunks, [&](int64_t t0, int64_t t1, int64_t c) { fn(a, t0, t1, c); });
    sum_rows_in_order(a.grad_sum, chunks.count, M * P, grad.data_ptr<scalar_t>());
  });
  // sum_t chase_t / T, summed in task order in double.
  const double* c = chase.const_data_ptr<double>();
  double total = 0;
  for (int64_t t = 0; t < T; ++t) total += c[t];
  at::Tensor chase_loss = at::scalar_tensor(total / static_cast<double>(T), opts);
  return {chase_loss, query_loss, unpack(grad, params, true, M)};
}

// No CUDA kernel yet: the CUDA MLP kernels (mlp_fused.h) run one parameter set per task block,
// and the particles' mixing needs all M of a task in one block. A clear error instead of the
// dispatcher's; maml_ext.ops.mlp_bmaml_chaser runs the reference on CUDA tensors.
std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> mlp_bmaml_chaser_cuda(
    at::TensorList, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t,
    double, c10::string_view, c10::string_view, bool) {
  TORCH_CHECK_NOT_IMPLEMENTED(false, "maml_ext::mlp_bmaml_chaser: not implemented on CUDA (CPU kernel only); "
                              "maml_ext.ops.mlp_bmaml_chaser runs the pure-PyTorch reference on CUDA tensors");
}

}  // namespace

TORCH_LIBRARY_IMPL(maml_ext, CPU, m) { m.impl("mlp_bmaml_chaser", &mlp_bmaml_chaser_cpu); }
TORCH_LIBRARY_IMPL(maml_ext, CUDA, m) { m.impl("mlp_bmaml_chaser", &mlp_bmaml_chaser_cuda); }

}  // namespace maml_ext::mlp
