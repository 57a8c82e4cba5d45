// CUDA implementation of the MLP ops. mlp_maml_grad runs the fused per-task body of mlp_fused.h:
// one launch per meta-batch, one thread block per task (inner steps, query loss and the reverse
// walk with HVPs), its workspace in shared memory when it fits, then one sum over tasks. Wider
// MLPs (parameter vectors beyond shared memory) and the other ops use the batched formulation of
// mlp_batched.cpp: cuBLAS batched GEMMs over the task dimension and fused ATen elementwise kernels.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <mutex>
#include <vector>

#include "mlp/mlp_batched.h"
#include "mlp/mlp_fused_call.h"

namespace maml_ext::mlp {
namespace {

constexpr int kThreads = 256;  // a multiple of the warp size (BlockGroup::reduce_sum)

// The thread group of mlp_fused.h on the GPU: the threads of one block.
struct BlockGroup {
  __device__ int64_t rank() const { return threadIdx.x; }
  __device__ int64_t size() const { return blockDim.x; }
  __device__ void sync() const { __syncthreads(); }
  __device__ double reduce_sum(double x) const {
    __shared__ double partial[kThreads / 32];
    for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_down_sync(0xffffffffu, x, offset);
    __syncthreads();  // the previous call's readers are done with `partial`
    if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = x;
    __syncthreads();
    double total = 0;
    for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) total += partial[w];
    return total;
  }
};

// Block t runs task t; `global_ws` is null when the workspace lives in shared memory.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    maml_grad_kernel(const fused::FusedArgs<T> a, T* global_ws) {
  extern __shared__ double shared_ws[];
  T* w = global_ws ? global_ws + blockIdx.x * a.ws.size : reinterpret_cast<T*>(shared_ws);
  fused::maml_grad_task(a, blockIdx.x, w, BlockGroup{});
}

// Shared memory a block may use on the current device, less this file's static reduce buffer.
int64_t shared_bytes_limit() {
  int bytes = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                                        c10::cuda::current_device()));
  return bytes - static_cast<int64_t>(sizeof(double)) * (kThreads / 32);
}

// Lets the kernel use all of the device's shared memory (beyond the default 48 KB), once per
// device: the first call happens in eager mode, so a CUDA-graph capture never sees this call.
template <typename T>
void allow_all_shared_memory() {
  static std::mutex mutex;
  static std::vector<bool> done(c10::cuda::device_count(), false);
  const int device = c10::cuda::current_device();
  const std::lock_guard<std::mutex> lock(mutex);
  if (done[device]) return;
  C10_CUDA_CHECK(cudaFuncSetAttribute(maml_grad_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(shared_bytes_limit())));
  done[device] = true;
}

// The fused kernel takes MLPs whose per-task parameter vectors fit in shared memory.
bool fused_fits(at::TensorList params, c10::string_view loss) {
  if (params.empty() || !params[0].is_cuda()) return false;
  const int64_t layers = static_cast<int64_t>(params.size() - (loss == "gaussian_nll" ? 1 : 0)) / 2;
  int64_t numel = 0;
  for (const auto& p : params) numel += p.numel();
  return layers <= fused::kMaxLayers &&
         4 * numel * static_cast<int64_t>(params[0].element_size()) <= shared_bytes_limit();
}

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> mlp_maml_grad_cuda(
    at::TensorList params, at::TensorList lrs, double lr, bool per_step, const at::Tensor& x_support,
    const at::Tensor& y_support, const std::optional<at::Tensor>& w_support,
    const at::Tensor& x_query, const at::Tensor& y_query, const std::optional<at::Tensor>& w_query,
    int64_t steps, c10::string_view activation, c10::string_view loss, bool first_order,
    const at::Tensor& loss_weight) {
  const std::optional<c10::cuda::CUDAGuard> guard =
      params.empty() ? std::nullopt : std::optional<c10::cuda::CUDAGuard>(params[0].device());
  if (!fused_fits(params, loss)) {
    return batched::mlp_maml_grad(params, lrs, lr, per_step, x_support, y_support, w_support,
                                  x_query, y_query, w_query, steps, activation, loss, first_order,
                                  loss_weight);
  }
  const fused::Call c = fused::prepare(params, lrs, lr, per_step, x_support, y_support, w_support,
                                       x_query, y_query, w_query, steps, activation, loss,
                                       first_order, loss_weight);
  const int64_t tasks = c.in.tasks;
  if (tasks > 0) {
    AT_DISPATCH_FLOATING_TYPES(c.in.theta0.scalar_type(), "mlp_maml_grad_cuda", [&] {
      const int64_t bytes = c.ws.size * static_cast<int64_t>(sizeof(scalar_t));
      const bool in_shared = bytes <= shared_bytes_limit();
      // Too many examples for shared memory: each block's workspace in global memory instead.
      const at::Tensor global_ws =
          in_shared ? at::Tensor() : at::empty({tasks, c.ws.size}, c.in.theta0.options());
      const int smem = in_shared ? static_cast<int>(bytes) : 0;
      allow_all_shared_memory<scalar_t>();
      maml_grad_kernel<scalar_t><<<static_cast<unsigned>(tasks), kThreads, smem,
                                   c10::cuda::getCurrentCUDAStream()>>>(
          fused::args<scalar_t>(c),
          in_shared ? nullptr : global_ws.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return fused::finish(c, params, lrs);
}

}  // namespace

TORCH_LIBRARY_IMPL(maml_ext, CUDA, m) {
  m.impl("mlp_hvp", &batched::mlp_hvp);
  m.impl("mlp_maml", &batched::mlp_maml);
  m.impl("mlp_maml_backward", &batched::mlp_maml_backward);
  m.impl("mlp_maml_grad", &mlp_maml_grad_cuda);
}

}  // namespace maml_ext::mlp
