// The MLP engine's entry points, one copy per CPU capability, and the run-time choice among them.
#pragma once

#include <string>

#include "mlp/mlp_layout.h"

namespace maml_ext::mlp {

#define MAML_EXT_DECLARE_ENGINE(CAP)                                                  \
  namespace CAP {                                                                     \
  template <typename T>                                                               \
  void hvp_tasks(const HvpArgs<T>& a, int64_t t0, int64_t t1);                        \
  template <typename T>                                                               \
  void maml_forward_tasks(const MamlArgs<T>& a, int64_t t0, int64_t t1);              \
  template <typename T>                                                               \
  void maml_backward_tasks(const MamlArgs<T>& a, int64_t t0, int64_t t1, int64_t chunk);  \
  template <typename T>                                                               \
  void maml_grad_tasks(const MamlArgs<T>& a, int64_t t0, int64_t t1, int64_t chunk);  \
  template <typename T>                                                               \
  void bmaml_chaser_tasks(const BmamlArgs<T>& a, int64_t t0, int64_t t1, int64_t chunk);  \
  }

MAML_EXT_DECLARE_ENGINE(DEFAULT)
MAML_EXT_DECLARE_ENGINE(AVX2)
MAML_EXT_DECLARE_ENGINE(AVX512)
#undef MAML_EXT_DECLARE_ENGINE

template <typename T>
struct Engine {
  void (*hvp_tasks)(const HvpArgs<T>&, int64_t, int64_t);
  void (*maml_forward_tasks)(const MamlArgs<T>&, int64_t, int64_t);
  void (*maml_backward_tasks)(const MamlArgs<T>&, int64_t, int64_t, int64_t);
  void (*maml_grad_tasks)(const MamlArgs<T>&, int64_t, int64_t, int64_t);
  void (*bmaml_chaser_tasks)(const BmamlArgs<T>&, int64_t, int64_t, int64_t);
};

// The engine compiled for the best capability this CPU has (or the one forced by
// set_cpu_capability / the MAML_EXT_CPU_CAPABILITY environment variable).
template <typename T>
Engine<T> engine();

std::string cpu_capability();
// "default", "avx2", "avx512"; throws if this build or this CPU lacks it.
void set_cpu_capability(const std::string& name);

}  // namespace maml_ext::mlp
