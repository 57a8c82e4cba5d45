// The Adam update loop of one CPU capability. This file is compiled once per capability
// (CMakeLists.txt: CPU_CAPABILITY=DEFAULT/AVX2/AVX512 with that capability's flags, as ATen
// compiles its own kernels), so Vectorized<T> below is the vector type torch's fused Adam uses
// where torch picked the same capability, with its operations in its order. torch's build lets
// GCC fuse the second moment's product and sum into an FMA (-ffp-contract=fast); this file is
// compiled with -ffp-contract=off and writes that fusion out, so the vector loop is bitwise
// torch's on any compiler. The last numel % width elements of a tensor go through the same
// vector arithmetic (partial loads); torch runs them through a compiled scalar loop whose FMA
// fusions depend on its compiler, so they may differ from torch's by an ulp
// (tests/test_speed_adam.py: bitwise on whole vectors, 1e-12 relative in float64 otherwise).
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cmath>

#include "optim/adam.h"

namespace maml_ext::optim::CPU_CAPABILITY {

template <typename T>
void adam_update(T* param, const T* grad, T* exp_avg, T* exp_avg_sq, int64_t n, const AdamCoefs& c) {
  using Vec = at::vec::Vectorized<T>;
  const double step_size = c.lr / c.bias_correction1;
  // exp_avg.lerp_(grad, 1 - beta1), in the two forms torch's lerp uses for small / large weights.
  const T w = T(c.exp_avg_grad_coefficient);
  const bool small = std::abs(w) < T(0.5);
  const Vec coeff = small ? Vec(w) : Vec(w) - Vec(T(1));
  const Vec beta2(T(c.beta2)), sq_coef(T(c.exp_avg_sq_grad_coefficient));
  const Vec bc2_sqrt(T(c.bias_correction2_sqrt)), eps(T(c.eps)), neg_step(T(-step_size));
  const Vec decay(T(c.weight_decay));
  // Elements [d, d + count) of every tensor (count < Vec::size(): the tail, partial loads).
  auto update = [&](int64_t d, int64_t count) {
    Vec p = Vec::loadu(param + d, count);
    Vec g = Vec::loadu(grad + d, count);
    if (c.maximize) g = g * Vec(T(-1.0));
    if (c.weight_decay != 0.f) g = at::vec::fmadd(p, decay, g);
    Vec m = Vec::loadu(exp_avg + d, count);
    m = at::vec::fmadd(coeff, g - m, small ? m : g);
    const Vec v = at::vec::fmadd(sq_coef * g, g, Vec::loadu(exp_avg_sq + d, count) * beta2);
    m.store(exp_avg + d, count);
    v.store(exp_avg_sq + d, count);
    const Vec denom = (v.sqrt() / bc2_sqrt) + eps;
    p = p + neg_step * m / denom;
    p.store(param + d, count);
  };
  int64_t d = 0;
  for (; d + Vec::size() <= n; d += Vec::size()) update(d, Vec::size());
  if (d < n) update(d, n - d);
}

template void adam_update<float>(float*, const float*, float*, float*, int64_t, const AdamCoefs&);
template void adam_update<double>(double*, const double*, double*, double*, int64_t, const AdamCoefs&);

}  // namespace maml_ext::optim::CPU_CAPABILITY
