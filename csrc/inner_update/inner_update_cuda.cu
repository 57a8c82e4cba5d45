// CUDA kernels of inner_update / inner_update_: theta'_t = theta(_t) - alpha * g_t, one
// grid-stride launch per parameter tensor on the current stream.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "inner_update/inner_update.h"

namespace maml_ext::inner_update {
namespace {

constexpr int kThreads = 256;

// out[j] = theta[j % n_theta] - alpha[j % n_alpha] * g[j]; alpha null means the scalar lr.
// theta broadcasts a shared parameter over the task dimension of g (n_theta = its numel).
template <typename scalar_t>
__global__ void inner_update_kernel(const scalar_t* __restrict__ theta, int64_t n_theta,
                                    const scalar_t* __restrict__ alpha, int64_t n_alpha,
                                    at::opmath_type<scalar_t> lr, const scalar_t* __restrict__ g,
                                    scalar_t* out, int64_t n) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < n; j += stride) {
    const opmath_t a = alpha ? static_cast<opmath_t>(alpha[j % n_alpha]) : lr;
    out[j] = static_cast<scalar_t>(static_cast<opmath_t>(theta[j % n_theta]) -
                                   a * static_cast<opmath_t>(g[j]));
  }
}

void apply(at::TensorList params, at::TensorList grads, at::TensorList lrs, double lr, int64_t step,
           at::TensorList outs, bool in_place) {
  const auto alphas = check_and_select_lrs(params, grads, lrs, lr, step, in_place);
  if (params.empty()) return;
  const c10::cuda::CUDAGuard guard(params[0].device());
  for (size_t i = 0; i < alphas.size(); ++i) {
    if (alphas[i].defined()) {
      TORCH_CHECK_VALUE((at::isfinite(alphas[i]) & (alphas[i] >= 0)).all().item<bool>(), "lrs[", i,
                        "]: learning rates must be finite and >= 0");
    }
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor p = params[i].contiguous();
    const at::Tensor g = grads[i].contiguous();
    const at::Tensor a = alphas[i].defined() ? alphas[i].contiguous() : at::Tensor();
    const int64_t n = g.numel();
    if (n == 0) continue;
    const int blocks = static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "inner_update_cuda", [&] {
      inner_update_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
          p.data_ptr<scalar_t>(), std::max<int64_t>(p.numel(), 1),
          a.defined() ? a.data_ptr<scalar_t>() : nullptr, a.defined() ? a.numel() : 1,
          static_cast<at::opmath_type<scalar_t>>(lr), g.data_ptr<scalar_t>(),
          outs[i].data_ptr<scalar_t>(), n);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(maml_ext, CUDA, m) {
  m.impl("inner_update", &functional<apply>);
  m.impl("inner_update_", &in_place<apply>);
}

}  // namespace maml_ext::inner_update
