// Input checks of the svgd_step ops, generated from maml_ext/reference/_checks.py (the reference
// svgd_step runs the same functions): clear errors naming the argument, before any work.
#include "svgd/svgd.h"

#include "maml_ext_checks.h"

namespace maml_ext::svgd {

void check_inputs(at::TensorList particles, at::TensorList others, const char* name,
                  double score_scale, double step_size) {
  checks::check_svgd_scalars(score_scale, step_size);
  checks::check_svgd(particles, others, name);
}

}  // namespace maml_ext::svgd
