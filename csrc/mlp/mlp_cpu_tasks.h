// CPU-side helpers of the MLP ops' ATen wrappers (mlp_cpu.cpp, mlp_bmaml_cpu.cpp): how tasks are
// cut into chunks and spread over threads, with sums over tasks that do not depend on the thread
// count, and the raw-pointer view of an example batch.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <vector>

#include "mlp/mlp_layout.h"

namespace maml_ext::mlp {

// Tasks per thread chunk: small meta-batches of small nets run on one thread, since waking and
// synchronising the thread pool costs more than their whole computation.
inline int64_t task_grain(const Layout& L, int64_t examples, int64_t steps) {
  constexpr int64_t kMinWorkPerChunk = 1 << 21;  // multiply-adds; about half a millisecond
  const int64_t per_task = std::max<int64_t>(1, L.numel * examples * steps);
  return std::max<int64_t>(1, kMinWorkPerChunk / per_task);
}

// Sums over tasks are bitwise the same for any thread count: the tasks are cut into chunks that
// depend only on the problem size, each chunk sums its tasks in task order, and the chunks' sums
// are added in chunk order (per-thread partial sums would change with torch.set_num_threads).
struct TaskChunks {
  int64_t tasks, size, count;
};

inline TaskChunks task_chunks(int64_t tasks, int64_t grain) {
  // At most this many partial sums (memory kMaxChunks * P): enough to balance 32 threads.
  constexpr int64_t kMaxChunks = 64;
  const int64_t size = std::max<int64_t>({1, grain, (tasks + kMaxChunks - 1) / kMaxChunks});
  return {tasks, size, (tasks + size - 1) / size};
}

// fn(t0, t1, chunk) for every chunk, the chunks spread over the threads.
template <typename F>
void for_each_chunk(const TaskChunks& c, const F& fn) {
  at::parallel_for(0, c.count, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t k = c0; k < c1; ++k) fn(k * c.size, std::min(c.tasks, (k + 1) * c.size), k);
  });
}

// out[n] = sum of rows[r * N + n] over r = 0..R-1 in that order; threads split the columns only.
template <typename T>
void sum_rows_in_order(const T* rows, int64_t R, int64_t N, T* out) {
  at::parallel_for(0, N, 1 << 14, [&](int64_t n0, int64_t n1) {
    std::memcpy(out + n0, rows + n0, sizeof(T) * (n1 - n0));
    for (int64_t r = 1; r < R; ++r) {
      const T* row = rows + r * N;
      for (int64_t n = n0; n < n1; ++n) out[n] += row[n];
    }
  });
}

inline at::Tensor sum_rows_in_order(const at::Tensor& rows) {
  const at::Tensor r = rows.contiguous();
  const int64_t R = r.size(0), N = r.numel() / std::max<int64_t>(R, 1);
  at::Tensor out = at::empty(r.sizes().slice(1), r.options());
  AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), "sum_rows_in_order", [&] {
    sum_rows_in_order(r.data_ptr<scalar_t>(), R, N, out.data_ptr<scalar_t>());
  });
  return out;
}

// The chunks' partial meta-gradients, reused across calls on the calling thread: a fresh
// [chunks, P] buffer per call would page-fault megabytes each time for wide nets.
template <typename T>
T* chunk_sums_buffer(size_t count) {
  thread_local std::vector<T> buffer;
  if (buffer.size() < count) buffer.resize(count);
  return buffer.data();
}

template <typename T>
Batch<T> make_batch(const at::Tensor& x, const at::Tensor& y, const std::optional<at::Tensor>& w,
                    Loss loss) {
  Batch<T> b;
  b.x = x.data_ptr<T>();
  if (loss == Loss::CrossEntropy) {
    b.labels = y.data_ptr<int64_t>();
  } else {
    b.y = y.data_ptr<T>();
  }
  b.weight = w.has_value() ? w->data_ptr<T>() : nullptr;
  b.k = x.size(1);
  return b;
}

}  // namespace maml_ext::mlp
