// Input checks of the svgd_step ops: clear errors naming the argument, before any work
// (ValueError for shapes, TypeError for dtypes, RuntimeError for devices, like the other ops and
// maml_ext/reference/svgd.py).
#include "svgd/svgd.h"

#include <c10/util/Exception.h>

#include <cmath>

namespace maml_ext::svgd {
namespace {

void check_like(const at::Tensor& t, const at::Tensor& like, const char* name, size_t i) {
  TORCH_CHECK_TYPE(t.scalar_type() == like.scalar_type(), name, "[", i, "]: expected dtype ",
                   like.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == like.device(), name, "[", i, "]: expected device ", like.device(),
              ", got ", t.device());
}

}  // namespace

void check_inputs(at::TensorList particles, at::TensorList others, const char* name,
                  double score_scale, double step_size) {
  TORCH_CHECK_VALUE(std::isfinite(score_scale), "score_scale: expected a finite number, got ", score_scale);
  TORCH_CHECK_VALUE(std::isfinite(step_size), "step_size: expected a finite number, got ", step_size);
  TORCH_CHECK_VALUE(!particles.empty(), "particles: expected at least one tensor [T, M, ...], got none");
  TORCH_CHECK_VALUE(others.size() == particles.size(), name, ": expected ", particles.size(),
                    " tensors (one per particles tensor), got ", others.size());
  const at::Tensor& first = particles[0];
  TORCH_CHECK_VALUE(first.dim() >= 2 && first.size(1) >= 1,
                    "particles[0]: expected [T, M, ...] with M >= 1, got shape ", first.sizes());
  TORCH_CHECK_TYPE(first.scalar_type() == at::kFloat || first.scalar_type() == at::kDouble,
                   "particles[0]: expected dtype float32 or float64, got ", first.scalar_type());
  for (size_t i = 0; i < particles.size(); ++i) {
    const at::Tensor& p = particles[i];
    TORCH_CHECK_VALUE(p.dim() >= 2 && p.size(0) == first.size(0) && p.size(1) == first.size(1),
                      "particles[", i, "]: expected [T, M, ...] with T = ", first.size(0), ", M = ",
                      first.size(1), " like particles[0], got shape ", p.sizes());
    check_like(p, first, "particles", i);
    TORCH_CHECK_VALUE(others[i].sizes() == p.sizes(), name, "[", i, "]: expected shape ", p.sizes(),
                      " (that of particles[", i, "]), got ", others[i].sizes());
    check_like(others[i], p, name, i);
  }
}

}  // namespace maml_ext::svgd
