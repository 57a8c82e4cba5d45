// CUDA kernels of inner_update / inner_update_: theta'_t = theta(_t) - alpha * g_t for every
// parameter tensor of a step in one launch (multi-tensor apply, as ATen's MultiTensorApply.cuh and
// apex's multi_tensor_apply): the tensors are cut into chunks, each block of the launch updates one
// chunk, and the chunk table travels in the kernel's argument block. Only metadata is checked on
// the host: no value is read back from the device (the finiteness of learning-rate tensors is
// checked by the Python front end), so a step never waits for the GPU and can be graph-captured.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "inner_update/inner_update.h"

namespace maml_ext::inner_update {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = 65536;  // elements per block
// Per launch: tensors and chunks whose metadata fits the 4 KB kernel-argument limit.
constexpr int kMaxTensors = 24;
constexpr int kMaxChunks = 320;

// One tensor of the list: out[j] = theta[j % n_theta] - alpha[j % n_alpha] * g[j], j < n.
// theta broadcasts a shared parameter over the task dimension of g (n_theta = its numel); alpha
// null means the scalar lr.
template <typename scalar_t>
struct TensorRef {
  const scalar_t* theta;
  const scalar_t* alpha;
  const scalar_t* g;
  scalar_t* out;
  int64_t n_theta, n_alpha, n;
};

template <typename scalar_t>
struct TensorList {
  TensorRef<scalar_t> tensors[kMaxTensors];
  unsigned char chunk_tensor[kMaxChunks];  // block b updates chunk chunk_index[b] of tensor
  int chunk_index[kMaxChunks];             // chunk_tensor[b]
};

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    multi_tensor_update_kernel(const TensorList<scalar_t> tl, at::opmath_type<scalar_t> lr) {
  using opmath_t = at::opmath_type<scalar_t>;
  const TensorRef<scalar_t>& t = tl.tensors[tl.chunk_tensor[blockIdx.x]];
  const int64_t begin = static_cast<int64_t>(tl.chunk_index[blockIdx.x]) * kChunk;
  const int64_t end = begin + kChunk < t.n ? begin + kChunk : t.n;
  for (int64_t j = begin + threadIdx.x; j < end; j += kThreads) {
    const opmath_t a = t.alpha ? static_cast<opmath_t>(t.alpha[j % t.n_alpha]) : lr;
    t.out[j] = static_cast<scalar_t>(static_cast<opmath_t>(t.theta[j % t.n_theta]) -
                                     a * static_cast<opmath_t>(t.g[j]));
  }
}

// Launches the update of the tensors `idx` (all of one dtype), as few launches as the
// metadata limits allow (one for a typical model's parameter list).
template <typename scalar_t>
void launch(const std::vector<size_t>& idx, const std::vector<at::Tensor>& p,
            const std::vector<at::Tensor>& g, const std::vector<at::Tensor>& a,
            at::TensorList outs, double lr, cudaStream_t stream) {
  TensorList<scalar_t> tl;
  int tensors = 0, chunks = 0;
  for (size_t i : idx) {
    const int64_t n = g[i].numel();
    if (n == 0) continue;
    tl.tensors[tensors++] = {p[i].const_data_ptr<scalar_t>(),
                             a[i].defined() ? a[i].const_data_ptr<scalar_t>() : nullptr,
                             g[i].const_data_ptr<scalar_t>(), outs[i].data_ptr<scalar_t>(),
                             std::max<int64_t>(p[i].numel(), 1), a[i].defined() ? a[i].numel() : 1,
                             n};
    const int64_t n_chunks = (n + kChunk - 1) / kChunk;
    for (int64_t c = 0; c < n_chunks; ++c) {
      tl.chunk_tensor[chunks] = static_cast<unsigned char>(tensors - 1);
      tl.chunk_index[chunks++] = static_cast<int>(c);
      const bool last_chunk = c + 1 == n_chunks;
      if (chunks == kMaxChunks || (tensors == kMaxTensors && last_chunk)) {
        multi_tensor_update_kernel<scalar_t><<<chunks, kThreads, 0, stream>>>(
            tl, static_cast<at::opmath_type<scalar_t>>(lr));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        chunks = 0;
        if (last_chunk) {
          tensors = 0;
        } else {  // the current tensor continues in the next launch
          tl.tensors[0] = tl.tensors[tensors - 1];
          tensors = 1;
        }
      }
    }
  }
  if (chunks > 0) {
    multi_tensor_update_kernel<scalar_t><<<chunks, kThreads, 0, stream>>>(
        tl, static_cast<at::opmath_type<scalar_t>>(lr));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

void apply(at::TensorList params, at::TensorList grads, at::TensorList lrs, double lr, int64_t step,
           at::TensorList outs, bool in_place) {
  const auto alphas = select_lrs(lrs, step, params.size());  // inputs checked by check_inputs
  if (params.empty()) return;
  const c10::cuda::CUDAGuard guard(params[0].device());
  std::vector<at::Tensor> p, g, a;
  for (size_t i = 0; i < params.size(); ++i) {
    TORCH_CHECK(params[i].is_cuda() && params[i].device() == params[0].device(), "params[", i,
                "]: expected a tensor on ", params[0].device(), ", got ", params[i].device());
    p.push_back(params[i].contiguous());
    g.push_back(grads[i].contiguous());
    a.push_back(alphas[i].defined() ? alphas[i].contiguous() : at::Tensor());
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  std::vector<at::ScalarType> dtypes;
  for (const auto& t : p)
    if (std::find(dtypes.begin(), dtypes.end(), t.scalar_type()) == dtypes.end())
      dtypes.push_back(t.scalar_type());
  for (const auto dtype : dtypes) {  // one launch per dtype (one in practice)
    std::vector<size_t> idx;
    for (size_t i = 0; i < p.size(); ++i)
      if (p[i].scalar_type() == dtype) idx.push_back(i);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "inner_update_cuda", [&] {
      launch<scalar_t>(idx, p, g, a, outs, lr, stream);
    });
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(maml_ext, CUDA, m) {
  m.impl("inner_update", &functional<apply>);
  m.impl("inner_update_", &in_place<apply>);
}

}  // namespace maml_ext::inner_update
