// Shapes and argument blocks shared by the MLP ops (ATen side) and the raw-pointer engine.
//
// Parameters of one task are handled as one flat vector of P numbers, in the order the user
// passes them: W1 [d1, d0], b1 [d1], ..., WL [dL, dL-1], bL [dL], and, for the Gaussian NLL
// loss, log_std [dL]. Task t's vector starts at t * P.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace maml_ext::mlp {

enum class Activation : int { Relu = 0, Tanh = 1 };
enum class Loss : int { Mse = 0, CrossEntropy = 1, GaussianNll = 2 };

struct Layout {
  Activation act = Activation::Relu;
  Loss loss = Loss::Mse;
  int layers = 0;                // number of linear layers L
  std::vector<int64_t> dim;      // L + 1 widths: dim[0] = input, dim[L] = output
  std::vector<int64_t> w_off;    // offset of W_l in the flat vector, l = 1..L (index 0 unused)
  std::vector<int64_t> b_off;    // offset of b_l
  int64_t log_std_off = -1;      // offset of log_std (GaussianNll only)
  int64_t numel = 0;             // P

  int64_t max_width() const {
    int64_t m = 0;
    for (auto d : dim) m = d > m ? d : m;
    return m;
  }
};

Layout make_layout(const std::vector<int64_t>& widths, Activation act, Loss loss);
Activation parse_activation(const std::string& name);
Loss parse_loss(const std::string& name);

// One batch of examples per task. `y` holds targets [T, K, D] for Mse/GaussianNll; `labels`
// holds class indices [T, K] for CrossEntropy. `weight` [T, K] may be null (all ones).
template <typename T>
struct Batch {
  const T* x = nullptr;
  const T* y = nullptr;
  const int64_t* labels = nullptr;
  const T* weight = nullptr;
  int64_t k = 0;  // examples per task
};

// mlp_hvp: loss, gradient and Hessian-vector product of every task's loss at its own parameters.
template <typename T>
struct HvpArgs {
  const Layout* layout;
  const T* theta;      // [T, P]
  const T* direction;  // [T, P], or nullptr: loss and gradient only (hvp untouched)
  Batch<T> batch;
  T* loss;             // [T]
  T* grad;             // [T, P]
  T* hvp;              // [T, P]
};

// mlp_maml: S SGD steps from a shared initialisation on each task's support set, then the query
// loss; the backward walks the steps in reverse with v <- v - H_k (alpha_k * v).
template <typename T>
struct MamlArgs {
  const Layout* layout;
  int64_t tasks;
  const T* theta0;       // [P], shared by all tasks
  const T* alpha;        // [A, P]: A = steps if the learning rates are per step, else 1
  int64_t alpha_rows;
  int64_t steps;
  int64_t checkpoint_every;  // store theta_k for k % checkpoint_every == 0
  Batch<T> support;
  Batch<T> query;
  // forward outputs
  T* query_loss;   // [T]
  T* adapted;      // [T, P], or null: the adapted parameters are not returned
  // evaluation (mlp_maml_eval): the query loss before each step [steps, T] and the query outputs
  // before each step and after the last [steps + 1, T, K_query, D_out]; null when not wanted
  T* step_query_loss;
  T* query_out;
  T* checkpoints;  // [(steps - 1) / checkpoint_every, T, P] or null when nothing is saved
  T* query_grad;   // [T, P] or null
  // backward inputs and outputs
  const T* grad_loss;     // [T] or null
  const T* grad_adapted;  // [T, P] or null
  bool first_order;
  T* grad_theta;      // [T, P] per task; summed over tasks by the caller (mlp_maml backward)
  T* grad_alpha;      // [chunks, A, P] partial sums per task chunk, or null when not needed
  T* grad_theta_sum;  // mlp_maml_grad: [chunks, P] sums over each task chunk, in task order
};

// mlp_bmaml_chaser: per task, `steps` SVGD steps of the M shared initial particles on the support
// set (log p = -support loss), the query loss of the result (the chaser), `leader_steps` more
// SVGD steps on support + query (the leader), and the chase ||chaser - leader||^2 with its exact
// gradient w.r.t. the initial particles (leader held constant).
template <typename T>
struct BmamlArgs {
  const Layout* layout;
  int64_t tasks;
  int64_t particles;  // M
  int64_t steps, leader_steps;
  double lr;
  bool first_order;  // every SVGD step's Jacobian taken as the identity
  const T* theta0;   // [M, P], shared by all tasks
  Batch<T> support, query, all;  // all: support + query examples, for the leader
  T* query_loss;     // [T, M]
  double* chase;     // [T]: sum over particles of |chaser - leader|^2
  T* grad_sum;       // [chunks, M, P]: d(sum_t chase_t / T) / d theta0 summed over each task chunk
};

inline int64_t num_checkpoints(int64_t steps, int64_t every) {
  return steps > 1 ? (steps - 1) / every : 0;
}

}  // namespace maml_ext::mlp
