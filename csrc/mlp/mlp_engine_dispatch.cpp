// Picks the MLP engine build that matches the CPU (like ATen's CPU_CAPABILITY dispatch).
#include <c10/util/Exception.h>

#include <atomic>
#include <cstdlib>
#include <string>

#include "mlp/mlp_engine.h"

namespace maml_ext::mlp {
namespace {

enum class Capability : int { Default = 0, Avx2 = 1, Avx512 = 2 };

bool cpu_has(Capability c) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  switch (c) {
    case Capability::Default:
      return true;
    case Capability::Avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Capability::Avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw");
  }
  return false;
#else
  return c == Capability::Default;
#endif
}

bool built_with(Capability c) {
  switch (c) {
    case Capability::Default:
      return true;
    case Capability::Avx2:
#ifdef MAML_EXT_HAVE_AVX2
      return true;
#else
      return false;
#endif
    case Capability::Avx512:
#ifdef MAML_EXT_HAVE_AVX512
      return true;
#else
      return false;
#endif
  }
  return false;
}

const char* name_of(Capability c) {
  switch (c) {
    case Capability::Avx2:
      return "avx2";
    case Capability::Avx512:
      return "avx512";
    default:
      return "default";
  }
}

Capability parse(const std::string& name) {
  for (auto c : {Capability::Default, Capability::Avx2, Capability::Avx512}) {
    if (name == name_of(c)) {
      TORCH_CHECK(built_with(c), "maml_ext: CPU capability '", name, "' was not compiled into this build");
      TORCH_CHECK(cpu_has(c), "maml_ext: this CPU does not support '", name, "'");
      return c;
    }
  }
  TORCH_CHECK(false, "maml_ext: unknown CPU capability '", name,
              "'; expected one of 'default', 'avx2', 'avx512'");
}

Capability best() {
  if (const char* forced = std::getenv("MAML_EXT_CPU_CAPABILITY")) return parse(forced);
  for (auto c : {Capability::Avx512, Capability::Avx2}) {
    if (built_with(c) && cpu_has(c)) return c;
  }
  return Capability::Default;
}

std::atomic<int>& current() {
  static std::atomic<int> value{static_cast<int>(best())};
  return value;
}

}  // namespace

template <typename T>
Engine<T> engine() {
  switch (static_cast<Capability>(current().load())) {
#ifdef MAML_EXT_HAVE_AVX512
    case Capability::Avx512:
      return {AVX512::hvp_tasks<T>, AVX512::maml_forward_tasks<T>, AVX512::maml_backward_tasks<T>,
              AVX512::maml_grad_tasks<T>, AVX512::bmaml_chaser_tasks<T>};
#endif
#ifdef MAML_EXT_HAVE_AVX2
    case Capability::Avx2:
      return {AVX2::hvp_tasks<T>, AVX2::maml_forward_tasks<T>, AVX2::maml_backward_tasks<T>,
              AVX2::maml_grad_tasks<T>, AVX2::bmaml_chaser_tasks<T>};
#endif
    default:
      return {DEFAULT::hvp_tasks<T>, DEFAULT::maml_forward_tasks<T>, DEFAULT::maml_backward_tasks<T>,
              DEFAULT::maml_grad_tasks<T>, DEFAULT::bmaml_chaser_tasks<T>};
  }
}
template Engine<float> engine<float>();
template Engine<double> engine<double>();

std::string cpu_capability() { return name_of(static_cast<Capability>(current().load())); }

void set_cpu_capability(const std::string& name) { current().store(static_cast<int>(parse(name))); }

}  // namespace maml_ext::mlp
