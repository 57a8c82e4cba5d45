// The fused MAML meta-gradient of one task (S inner SGD steps, query loss, reverse walk with
// Hessian-vector products), written once for a "thread group" G:
//   G::rank(), G::size()  this thread's index in the group and the group's size,
//   G::sync()             barrier: writes before it are visible to the whole group after it,
//   G::reduce_sum(x)      the sum of x over the group, returned to every member (implies a sync).
// The CUDA kernel (mlp_cuda.cu) runs it with one thread block per task; the CPU build runs the same
// code with SequentialGroup (one member), as the private op _mlp_maml_grad_emulated, which the CPU
// test suite checks against the reference. Only the block group itself is GPU-only.
//
// Arithmetic and notation as in mlp_engine.cpp / mlp_batched.cpp (h_l stored after the
// activation, delta_l = dLoss/dz_l, the R-op quantities rz, rh, rdelta). Every output element of a
// pass is computed by one member (strided loops), so no two members write the same address
// between barriers.
#pragma once

#include <math.h>

#include <cstdint>

#if defined(__CUDACC__)
#define MAML_EXT_HD __host__ __device__
#else
#define MAML_EXT_HD
#endif

// Value checks the host cannot make without waiting for the device (class labels on CUDA): on the
// device a failed check stops the kernel (the error surfaces at the next synchronisation, like
// ATen's device asserts); host callers have validated the values before the call.
#if defined(__CUDA_ARCH__)
#include <cstdio>
#define MAML_EXT_DEVICE_CHECK(cond, msg)               \
  do {                                                 \
    if (!(cond)) {                                     \
      printf("maml_ext device check failed: %s\n", msg); \
      __trap();                                        \
    }                                                  \
  } while (0)
#else
#define MAML_EXT_DEVICE_CHECK(cond, msg) ((void)0)
#endif

namespace maml_ext::mlp::fused {

// Deeper MLPs take the batched path.
constexpr int kMaxLayers = 8;

// The parts of Layout the body needs, as a plain struct that can be passed to a kernel.
struct FusedLayout {
  int act = 0;   // Activation
  int loss = 0;  // Loss
  int layers = 0;
  int64_t dim[kMaxLayers + 1] = {};
  int64_t w_off[kMaxLayers + 1] = {};
  int64_t b_off[kMaxLayers + 1] = {};
  int64_t log_std_off = -1;
  int64_t numel = 0;
};

// Offsets (in elements) of the per-task workspace: four parameter-sized vectors, then six
// activation-sized buffers per layer (kmax rows each) and the softmax probabilities.
struct Workspace {
  int64_t theta = 0, grad = 0, v = 0, u = 0;
  int64_t h[kMaxLayers + 1] = {}, dh[kMaxLayers + 1] = {}, delta[kMaxLayers + 1] = {};
  int64_t rz[kMaxLayers + 1] = {}, rh[kMaxLayers + 1] = {}, rdelta[kMaxLayers + 1] = {};
  int64_t probs = 0;
  int64_t param_size = 0;  // the four parameter vectors
  int64_t size = 0;        // everything
};

inline Workspace make_workspace(const FusedLayout& L, int64_t kmax) {
  Workspace w;
  const int64_t P = L.numel;
  w.theta = 0;
  w.grad = P;
  w.v = 2 * P;
  w.u = 3 * P;
  int64_t off = w.param_size = 4 * P;
  int64_t* const buffers[] = {w.h, w.dh, w.delta, w.rz, w.rh, w.rdelta};
  for (int64_t* b : buffers) {
    for (int l = 1; l <= L.layers; ++l) {
      b[l] = off;
      off += kmax * L.dim[l];
    }
  }
  w.probs = off;
  w.size = off + kmax * L.dim[L.layers];
  return w;
}

// One task's examples: x [k, d0], targets y [k, D] (or labels [k]), weights [k] or null.
template <typename T>
struct TaskBatch {
  const T* x;
  const T* y;
  const int64_t* labels;
  const T* weight;
  int64_t k;
};

// All tasks' inputs and outputs; pointers to task 0, [T, ...] row-major.
template <typename T>
struct FusedArgs {
  FusedLayout L;
  Workspace ws;
  int64_t steps = 0, alpha_rows = 0, ks = 0, kq = 0;
  const T* theta0 = nullptr;  // [P]
  const T* alpha = nullptr;   // [alpha_rows, P]
  const T *xs = nullptr, *ys = nullptr, *wsup = nullptr, *xq = nullptr, *yq = nullptr, *wq = nullptr;
  const int64_t *ls = nullptr, *lq = nullptr;  // labels (cross-entropy)
  const T* loss_weight = nullptr;              // [T]
  bool first_order = false;
  T* query_loss = nullptr;  // [T]
  T* grad_theta = nullptr;  // [T, P]
  T* grad_alpha = nullptr;  // [T, alpha_rows, P] (zeroed by the caller) or null
  T* thetas = nullptr;      // [T, steps, P] scratch: theta_1 .. theta_S of each task

  MAML_EXT_HD TaskBatch<T> support(int64_t t) const {
    return batch(t, ks, xs, ys, ls, wsup);
  }
  MAML_EXT_HD TaskBatch<T> query(int64_t t) const { return batch(t, kq, xq, yq, lq, wq); }

 private:
  MAML_EXT_HD TaskBatch<T> batch(int64_t t, int64_t k, const T* x, const T* y, const int64_t* l,
                                 const T* w) const {
    const int64_t D = L.dim[L.layers];
    return {x + t * k * L.dim[0], y ? y + t * k * D : nullptr, l ? l + t * k : nullptr,
            w ? w + t * k : nullptr, k};
  }
};

// The CPU's group: one member that does every iteration itself.
struct SequentialGroup {
  int64_t rank() const { return 0; }
  int64_t size() const { return 1; }
  void sync() const {}
  double reduce_sum(double x) const { return x; }
};

template <typename G, typename F>
MAML_EXT_HD inline void strided(const G& g, int64_t n, F&& f) {
  for (int64_t i = g.rank(); i < n; i += g.size()) f(i);
}

MAML_EXT_HD inline float exp_(float x) { return expf(x); }
MAML_EXT_HD inline double exp_(double x) { return exp(x); }
MAML_EXT_HD inline float log_(float x) { return logf(x); }
MAML_EXT_HD inline double log_(double x) { return log(x); }
MAML_EXT_HD inline float tanh_(float x) { return tanhf(x); }
MAML_EXT_HD inline double tanh_(double x) { return tanh(x); }

// Forward, loss gradient and HVP of one task's MLP on the workspace `w` (kept between passes).
template <typename T, typename G>
class Net {
 public:
  MAML_EXT_HD Net(const FusedLayout& L, const Workspace& ws, T* w, const G& g)
      : L_(L), ws_(ws), w_(w), g_(g) {}

  // Forward pass at parameters th on the batch b.
  MAML_EXT_HD void forward(const T* th, const TaskBatch<T>& b) {
    b_ = b;
    for (int l = 1; l <= L_.layers; ++l) {
      const int64_t dout = L_.dim[l], din = L_.dim[l - 1];
      const T* in = input(l);
      const T* W = th + L_.w_off[l];
      const T* bias = th + L_.b_off[l];
      T* h = w_ + ws_.h[l];
      const bool hidden = l < L_.layers;
      strided(g_, b.k * dout, [&](int64_t e) {
        const int64_t i = e / dout, o = e % dout;
        T z = bias[o];
        for (int64_t j = 0; j < din; ++j) z += in[i * din + j] * W[o * din + j];
        h[e] = hidden ? activate(z) : z;
      });
      g_.sync();
    }
  }

  // Loss of the last forward pass (the same value in every member); its gradient into `grad`.
  MAML_EXT_HD T loss(const T* th, T* grad) {
    const int n = L_.layers;
    const int64_t D = L_.dim[n], k = b_.k;
    const T* out = w_ + ws_.h[n];
    T* dz = w_ + ws_.delta[n];
    const T invk = T(1) / T(k);
    double partial = 0;
    if (L_.loss == kMse) {
      const T scale = T(2) / T(k * D);
      strided(g_, k * D, [&](int64_t e) {
        const T wi = weight(e / D);
        const T diff = out[e] - b_.y[e];
        partial += double(wi) * double(diff) * double(diff);
        dz[e] = scale * wi * diff;
      });
    } else if (L_.loss == kCrossEntropy) {
      T* p = w_ + ws_.probs;
      strided(g_, k, [&](int64_t i) {
        const T wi = weight(i);
        const T* zi = out + i * D;
        T* pi = p + i * D;
        T m = zi[0];
        for (int64_t d = 1; d < D; ++d) m = zi[d] > m ? zi[d] : m;
        T s = 0;
        for (int64_t d = 0; d < D; ++d) s += (pi[d] = exp_(zi[d] - m));
        for (int64_t d = 0; d < D; ++d) {
          pi[d] /= s;
          dz[i * D + d] = wi * invk * pi[d];
        }
        const int64_t y = b_.labels[i];
        MAML_EXT_DEVICE_CHECK(y >= 0 && y < D, "class labels must lie in [0, classes)");
        dz[i * D + y] -= wi * invk;
        partial += double(wi) * double(m + log_(s) - zi[y]);
      });
    } else {  // Gaussian NLL with per-output log_std
      const T* log_std = th + L_.log_std_off;
      strided(g_, k * D, [&](int64_t e) {
        const int64_t d = e % D;
        const T wi = weight(e / D);
        const T inv_var = exp_(T(-2) * log_std[d]);
        const T r = out[e] - b_.y[e];
        partial += double(wi) * (0.5 * double(r) * double(r) * double(inv_var) +
                                 double(log_std[d]) + 0.91893853320467274178);
        dz[e] = wi * invk * r * inv_var;
      });
      strided(g_, D, [&](int64_t d) {
        const T inv_var = exp_(T(-2) * log_std[d]);
        T acc = 0;
        for (int64_t i = 0; i < k; ++i) {
          const T r = out[i * D + d] - b_.y[i * D + d];
          acc += weight(i) * invk * (T(1) - r * r * inv_var);
        }
        grad[L_.log_std_off + d] = acc;
      });
    }
    const double total = g_.reduce_sum(partial) / double(L_.loss == kMse ? k * D : k);
    backward(th, grad);
    return T(total);
  }

  // Hessian-vector product hv = H v at the parameters of the last forward + loss.
  MAML_EXT_HD void hvp(const T* th, const T* v, T* hv) {
    const int n = L_.layers;
    const int64_t k = b_.k;
    for (int l = 1; l <= n; ++l) {
      const int64_t dout = L_.dim[l], din = L_.dim[l - 1];
      const T* in = input(l);
      const T* V = v + L_.w_off[l];
      const T* W = th + L_.w_off[l];
      const T* c = v + L_.b_off[l];
      const T* rh_prev = w_ + ws_.rh[l - 1];
      const T* h = w_ + ws_.h[l];
      T* rz = w_ + ws_.rz[l];
      T* rh = w_ + ws_.rh[l];
      const bool hidden = l < n;
      strided(g_, k * dout, [&](int64_t e) {
        const int64_t i = e / dout, o = e % dout;
        T acc = c[o];
        for (int64_t j = 0; j < din; ++j) acc += in[i * din + j] * V[o * din + j];
        if (l > 1)
          for (int64_t j = 0; j < din; ++j) acc += rh_prev[i * din + j] * W[o * din + j];
        rz[e] = acc;
        if (hidden) rh[e] = act_grad(h[e]) * acc;
      });
      g_.sync();
    }
    loss_rop(th, v, hv);
    for (int l = n; l >= 1; --l) {
      const int64_t dout = L_.dim[l], din = L_.dim[l - 1];
      const T* in = input(l);
      const T* rd = w_ + ws_.rdelta[l];
      const T* d = w_ + ws_.delta[l];
      const T* rh_prev = w_ + ws_.rh[l - 1];
      strided(g_, dout * din, [&](int64_t e) {
        const int64_t o = e / din, j = e % din;
        T acc = 0;
        for (int64_t i = 0; i < k; ++i) acc += rd[i * dout + o] * in[i * din + j];
        if (l > 1)
          for (int64_t i = 0; i < k; ++i) acc += d[i * dout + o] * rh_prev[i * din + j];
        hv[L_.w_off[l] + e] = acc;
      });
      column_sums(k, dout, rd, hv + L_.b_off[l]);
      if (l > 1) {
        const T* W = th + L_.w_off[l];
        const T* V = v + L_.w_off[l];
        const T* h = w_ + ws_.h[l - 1];
        const T* dh = w_ + ws_.dh[l - 1];
        const T* rz = w_ + ws_.rz[l - 1];
        T* rdp = w_ + ws_.rdelta[l - 1];
        strided(g_, k * din, [&](int64_t e) {
          const int64_t i = e / din, j = e % din;
          T acc = 0;
          for (int64_t o = 0; o < dout; ++o)
            acc += rd[i * dout + o] * W[o * din + j] + d[i * dout + o] * V[o * din + j];
          rdp[e] = acc * act_grad(h[e]) + dh[e] * act_grad2(h[e]) * rz[e];
        });
      }
      g_.sync();
    }
  }

 private:
  static constexpr int kMse = 0, kCrossEntropy = 1;  // Loss; the rest is GaussianNll

  MAML_EXT_HD const T* input(int l) const { return l == 1 ? b_.x : w_ + ws_.h[l - 1]; }
  MAML_EXT_HD T weight(int64_t i) const { return b_.weight ? b_.weight[i] : T(1); }
  MAML_EXT_HD T activate(T z) const { return L_.act == 0 ? (z > T(0) ? z : T(0)) : tanh_(z); }
  // Derivatives in terms of the activation's output h (what is stored).
  MAML_EXT_HD T act_grad(T h) const {
    return L_.act == 0 ? (h > T(0) ? T(1) : T(0)) : T(1) - h * h;
  }
  MAML_EXT_HD T act_grad2(T h) const { return L_.act == 0 ? T(0) : T(-2) * h * (T(1) - h * h); }

  MAML_EXT_HD void column_sums(int64_t rows, int64_t cols, const T* a, T* out) const {
    strided(g_, cols, [&](int64_t c) {
      T acc = 0;
      for (int64_t r = 0; r < rows; ++r) acc += a[r * cols + c];
      out[c] = acc;
    });
  }

  // Gradient of the last loss() into grad (the log_std rows are written by loss()).
  MAML_EXT_HD void backward(const T* th, T* grad) {
    const int64_t k = b_.k;
    for (int l = L_.layers; l >= 1; --l) {
      const int64_t dout = L_.dim[l], din = L_.dim[l - 1];
      const T* d = w_ + ws_.delta[l];
      const T* in = input(l);
      strided(g_, dout * din, [&](int64_t e) {
        const int64_t o = e / din, j = e % din;
        T acc = 0;
        for (int64_t i = 0; i < k; ++i) acc += d[i * dout + o] * in[i * din + j];
        grad[L_.w_off[l] + e] = acc;
      });
      column_sums(k, dout, d, grad + L_.b_off[l]);
      if (l > 1) {
        const T* W = th + L_.w_off[l];
        const T* h = w_ + ws_.h[l - 1];
        T* dh = w_ + ws_.dh[l - 1];
        T* dp = w_ + ws_.delta[l - 1];
        strided(g_, k * din, [&](int64_t e) {
          const int64_t i = e / din, j = e % din;
          T acc = 0;
          for (int64_t o = 0; o < dout; ++o) acc += d[i * dout + o] * W[o * din + j];
          dh[e] = acc;
          dp[e] = acc * act_grad(h[e]);
        });
      }
      g_.sync();
    }
  }

  // rdelta_L: the loss Hessian applied to rz_L; for the Gaussian NLL also the log_std rows of hv.
  MAML_EXT_HD void loss_rop(const T* th, const T* v, T* hv) {
    const int n = L_.layers;
    const int64_t D = L_.dim[n], k = b_.k;
    const T* rz = w_ + ws_.rz[n];
    T* rd = w_ + ws_.rdelta[n];
    const T invk = T(1) / T(k);
    if (L_.loss == kMse) {
      const T scale = T(2) / T(k * D);
      strided(g_, k * D, [&](int64_t e) { rd[e] = scale * weight(e / D) * rz[e]; });
    } else if (L_.loss == kCrossEntropy) {
      const T* p = w_ + ws_.probs;
      strided(g_, k, [&](int64_t i) {
        T dot = 0;
        for (int64_t d = 0; d < D; ++d) dot += p[i * D + d] * rz[i * D + d];
        for (int64_t d = 0; d < D; ++d)
          rd[i * D + d] = weight(i) * invk * p[i * D + d] * (rz[i * D + d] - dot);
      });
    } else {
      const T* log_std = th + L_.log_std_off;
      const T* rs = v + L_.log_std_off;
      const T* out = w_ + ws_.h[n];
      strided(g_, k * D, [&](int64_t e) {
        const int64_t d = e % D;
        const T inv_var = exp_(T(-2) * log_std[d]);
        const T r = out[e] - b_.y[e];
        rd[e] = weight(e / D) * invk * inv_var * (rz[e] - T(2) * r * rs[d]);
      });
      strided(g_, D, [&](int64_t d) {
        const T inv_var = exp_(T(-2) * log_std[d]);
        T acc = 0;
        for (int64_t i = 0; i < k; ++i) {
          const T r = out[i * D + d] - b_.y[i * D + d];
          acc += weight(i) * invk * T(2) * inv_var * (r * r * rs[d] - r * rz[i * D + d]);
        }
        hv[L_.log_std_off + d] = acc;
      });
    }
    g_.sync();
  }

  const FusedLayout& L_;
  const Workspace& ws_;
  T* w_;
  const G& g_;
  TaskBatch<T> b_{};
};

// Task t: theta_{s+1} = theta_s - alpha_s * g_s for s < S, query loss at theta_S, then
// v = loss_weight[t] * dLq/dtheta_S walked back through d theta_{s+1} / d theta_s = I - alpha_s H_s
// (v <- v - H_s (alpha_s v); skipped when first order), with dL/dalpha_s -= g_s * v on the way.
// `w` is the task's workspace (a.ws.size elements).
template <typename T, typename G>
MAML_EXT_HD void maml_grad_task(const FusedArgs<T>& a, int64_t t, T* w, const G& g) {
  const int64_t P = a.L.numel, S = a.steps;
  T* theta = w + a.ws.theta;
  T* grad = w + a.ws.grad;
  T* v = w + a.ws.v;
  T* u = w + a.ws.u;
  T* thetas = a.thetas + t * S * P;
  Net<T, G> net(a.L, a.ws, w, g);
  const TaskBatch<T> support = a.support(t);
  auto alpha = [&](int64_t s) { return a.alpha + (a.alpha_rows > 1 ? s * P : 0); };

  strided(g, P, [&](int64_t p) { theta[p] = a.theta0[p]; });
  g.sync();
  for (int64_t s = 0; s < S; ++s) {
    net.forward(theta, support);
    net.loss(theta, grad);
    const T* al = alpha(s);
    strided(g, P, [&](int64_t p) { thetas[s * P + p] = theta[p] -= al[p] * grad[p]; });
    g.sync();
  }
  net.forward(theta, a.query(t));
  const T query_loss = net.loss(theta, v);
  const T lw = a.loss_weight[t];
  strided(g, P, [&](int64_t p) { v[p] *= lw; });
  if (g.rank() == 0) a.query_loss[t] = query_loss;
  g.sync();

  if (!a.first_order || a.grad_alpha) {
    for (int64_t s = S - 1; s >= 0; --s) {
      const T* from = s == 0 ? a.theta0 : thetas + (s - 1) * P;
      strided(g, P, [&](int64_t p) { theta[p] = from[p]; });
      g.sync();
      net.forward(theta, support);
      net.loss(theta, grad);
      const T* al = alpha(s);
      T* ga = a.grad_alpha ? a.grad_alpha + (t * a.alpha_rows + (a.alpha_rows > 1 ? s : 0)) * P
                           : nullptr;
      strided(g, P, [&](int64_t p) {
        if (ga) ga[p] -= grad[p] * v[p];
        u[p] = al[p] * v[p];
      });
      g.sync();
      if (a.first_order) continue;
      net.hvp(theta, u, grad);  // grad now holds H_s u
      strided(g, P, [&](int64_t p) { v[p] -= grad[p]; });
      g.sync();
    }
  }
  strided(g, P, [&](int64_t p) { a.grad_theta[t * P + p] = v[p]; });
}

}  // namespace maml_ext::mlp::fused
