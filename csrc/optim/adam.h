// adam_step_: torch's fused Adam update (torch.optim.Adam(fused=True), Adam mode, no amsgrad) for
// every parameter tensor in one op call, with the same arithmetic as torch's CPU kernel.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace maml_ext::optim {

// Per-tensor constants, computed in double from the tensor's step count as torch does.
struct AdamCoefs {
  double lr, bias_correction1, bias_correction2_sqrt, beta2, exp_avg_grad_coefficient,
      exp_avg_sq_grad_coefficient, eps, weight_decay;
  bool maximize;
};

AdamCoefs adam_coefs(double step, double lr, double beta1, double beta2, double weight_decay,
                     double eps, bool maximize);

// Validates the lists (before any tensor is written).
void check_adam(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                at::TensorList exp_avg_sqs, at::TensorList state_steps, double lr, double beta1,
                double beta2, double weight_decay, double eps);

// One copy of the update loop per CPU capability (compiled like ATen's kernels, with
// at::vec::Vectorized of that capability, so each copy is bitwise the kernel torch runs there).
#define MAML_EXT_DECLARE_ADAM(CAP)                                                        \
  namespace CAP {                                                                         \
  template <typename T>                                                                   \
  void adam_update(T* param, const T* grad, T* exp_avg, T* exp_avg_sq, int64_t n,         \
                   const AdamCoefs& c);                                                   \
  }
MAML_EXT_DECLARE_ADAM(DEFAULT)
MAML_EXT_DECLARE_ADAM(AVX2)
MAML_EXT_DECLARE_ADAM(AVX512)
#undef MAML_EXT_DECLARE_ADAM

}  // namespace maml_ext::optim
