// CUDA implementation of the MLP ops: the batched formulation of csrc/mlp/mlp_batched.cpp, whose
// per-layer products are cuBLAS batched GEMMs over the task dimension and whose elementwise steps
// are fused ATen kernels (each ATen call guards the inputs' device and uses its current stream).
#include <torch/library.h>

#include "mlp/mlp_batched.h"

TORCH_LIBRARY_IMPL(maml_ext, CUDA, m) {
  m.impl("mlp_hvp", &maml_ext::mlp::batched::mlp_hvp);
  m.impl("mlp_maml", &maml_ext::mlp::batched::mlp_maml);
  m.impl("mlp_maml_backward", &maml_ext::mlp::batched::mlp_maml_backward);
  m.impl("mlp_maml_grad", &maml_ext::mlp::batched::mlp_maml_grad);
}
