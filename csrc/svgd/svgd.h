// Input checks of the svgd_step ops (shared by every device's kernels).
#pragma once

#include <ATen/ATen.h>

namespace maml_ext::svgd {

// particles: one or more float/double tensors [T, M, ...] with equal T, M, dtype and device;
// `others` (named `name` in errors) must match them tensor by tensor in shape, dtype and device;
// score_scale and step_size must be finite.
void check_inputs(at::TensorList particles, at::TensorList others, const char* name,
                  double score_scale, double step_size);

}  // namespace maml_ext::svgd
