// Adam's update from a packed meta-gradient, applied inside mlp_maml_adam_ (mlp_cpu.cpp): the
// meta-gradient kernel and the optimizer step in one op call, with the data still in cache. The
// per-element arithmetic is torch.optim.Adam's (that of torch's fused CPU kernel, in the
// parameter dtype): equal to it in float64 up to rounding, never a different algorithm.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#define MAML_EXT_HAVE_MXCSR 1
#endif

namespace maml_ext::mlp {

struct AdamSettings {
  double lr, beta1, beta2, weight_decay, eps;
  bool maximize;
};

// Denormal inputs and results read as and become zero while it lives (the CPU's FTZ/DAZ modes,
// what torch.set_flush_denormal(True) sets for the whole thread). Adam's first moments of weights
// whose gradient stays zero decay geometrically through the denormal range, and in this scalar
// loop each operation on one takes a microcode assist: on the paper's sinusoid MLP after ~14k
// steps (306 of 1761 moments denormal) the update took ~35 instead of ~9 µs
// (benchmarks/RESULTS.md, issue 14.2, third pass). The values differ from torch's Adam only where
// a moment or an update is below the smallest normal number.
class FlushDenormals {
 public:
#ifdef MAML_EXT_HAVE_MXCSR
  FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | kFtzDaz); }
  ~FlushDenormals() { _mm_setcsr(saved_); }

 private:
  static constexpr unsigned kFtzDaz = 0x8040;  // flush-to-zero (bit 15), denormals-are-zero (bit 6)
  unsigned saved_;
#endif
};

// One parameter tensor's step `step` (already counted): param, exp_avg and exp_avg_sq [n] in
// place from grad [n], as torch's Adam (weight decay added to the gradient, not decoupled).
template <typename T>
void adam_update(T* param, T* exp_avg, T* exp_avg_sq, const T* grad, int64_t n, double step,
                 const AdamSettings& s) {
  const double bias_correction1 = 1 - std::pow(s.beta1, step);
  const double bias_correction2 = 1 - std::pow(s.beta2, step);
  const T neg_step_size = static_cast<T>(-(s.lr / bias_correction1));
  const T bias_correction2_sqrt = static_cast<T>(std::sqrt(bias_correction2));
  const T beta2 = static_cast<T>(s.beta2), weight_decay = static_cast<T>(s.weight_decay);
  const T eps = static_cast<T>(s.eps), sq_coefficient = static_cast<T>(1 - s.beta2);
  // exp_avg.lerp_(grad, w) with w = 1 - beta1, as torch computes lerp: from the nearer end.
  const T w = static_cast<T>(1 - s.beta1);
  const bool from_start = std::abs(w) < T(0.5);
  const T coefficient = from_start ? w : w - T(1);
  for (int64_t i = 0; i < n; ++i) {
    T g = s.maximize ? -grad[i] : grad[i];
    if (s.weight_decay != 0) g += param[i] * weight_decay;
    const T m = exp_avg[i];
    const T m_new = (from_start ? m : g) + coefficient * (g - m);
    const T v_new = exp_avg_sq[i] * beta2 + sq_coefficient * g * g;
    exp_avg[i] = m_new;
    exp_avg_sq[i] = v_new;
    const T denom = std::sqrt(v_new) / bias_correction2_sqrt + eps;
    param[i] = param[i] + neg_step_size * m_new / denom;
  }
}

// Whether every entry of data [n] is finite.
template <typename T>
bool all_finite(const T* data, int64_t n) {
  bool finite = true;
  for (int64_t i = 0; i < n; ++i) finite &= std::isfinite(data[i]);
  return finite;
}

// Element-wise value clipping to [-c, c] (torch.nn.utils.clip_grad_value_).
template <typename T>
void clip_values(T* data, int64_t n, double c) {
  const T hi = static_cast<T>(c), lo = -hi;
  for (int64_t i = 0; i < n; ++i) data[i] = std::min(std::max(data[i], lo), hi);
}

}  // namespace maml_ext::mlp
