// Raw-pointer MLP engine: forward, loss gradient, and the analytic Hessian-vector product
// (forward-mode R-op through the net, then its reverse pass), per task.
//
// This file is compiled once per CPU capability (MAML_EXT_CPU_CAPABILITY = DEFAULT, AVX2,
// AVX512) with matching -m flags; mlp_engine_dispatch.cpp picks one at run time. It includes no
// torch header so that those builds stay fast and free of ISA-specific inline copies of ATen.
//
// Notation (one task, K examples): h_0 = x, z_l = h_{l-1} W_l^T + b_l, h_l = act(z_l) for l < L,
// output z_L. delta_l = dLoss/dz_l. For a direction v = (V_l, c_l, [s]) the R-op gives
// Rz_l = Rh_{l-1} W_l^T + h_{l-1} V_l^T + c_l, Rh_l = act'(z_l) Rz_l, and the reverse pass
// Hv_W_l = Rdelta_l^T h_{l-1} + delta_l^T Rh_{l-1},
// Rdelta_{l-1} = (Rdelta_l W_l + delta_l V_l) act'(z_{l-1}) + (delta_l W_l) act''(z_{l-1}) Rz_{l-1}.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "mlp/mlp_engine.h"
#include "mlp/mlp_gemm.h"
#include "svgd/svgd_task.h"

namespace maml_ext::mlp::MAML_EXT_CPU_CAPABILITY {
namespace {

// Thin wrappers over the kernels of mlp_gemm.h for the products the passes below need.
// C[M,N] (+)= A[M,Kd] B[Kd,N], all row-major.
template <typename T>
inline void gemm_nn(int64_t M, int64_t N, int64_t Kd, const T* A, const T* B, T* C, bool accumulate) {
  const Prod<T> p[1] = {nn(Kd, A, B, N)};
  gemm_sum(M, N, p, C, accumulate);
}

// C[M,N] (+)= A[Kd,M]^T B[Kd,N], all row-major.
template <typename T>
inline void gemm_tn(int64_t M, int64_t N, int64_t Kd, const T* A, const T* B, T* C, bool accumulate,
                    const Epilogue<T>* epi = nullptr) {
  const Prod<T> p[1] = {tn(M, Kd, A, B, N)};
  gemm_sum(M, N, p, C, accumulate, epi);
}

// C[M,N] (+)= A[M,Kd] B[N,Kd]^T.
template <typename T>
inline void gemm_nt(int64_t M, int64_t N, int64_t Kd, const T* A, const T* B, T* C, bool accumulate,
                    T* scratch) {
  const T* const a[1] = {A};
  const T* const b[1] = {B};
  gemm_nt_sum<T, 1>(M, N, Kd, a, b, C, accumulate, scratch);
}

template <typename T>
inline void column_sums(int64_t rows, int64_t cols, const T* __restrict A, T* __restrict out) {
  std::fill(out, out + cols, T(0));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out[c] += A[r * cols + c];
}

template <typename T>
inline void broadcast_rows(int64_t rows, int64_t cols, const T* __restrict bias, T* __restrict out) {
  for (int64_t r = 0; r < rows; ++r) std::memcpy(out + r * cols, bias, sizeof(T) * cols);
}

// Workspace reused across calls on the same thread: reallocating (and page-faulting) megabytes
// per call was a tenth of the run time for wide nets.
template <typename T>
T* thread_buffer(int slot, size_t count) {
  thread_local std::vector<T> buffers[8];
  std::vector<T>& b = buffers[slot];
  if (b.size() < count) b.resize(count);
  return b.data();
}

// Per-task workspace and the three passes. Buffers are sized for up to `kmax` examples.
template <typename T>
class Net {
 public:
  Net(const Layout& layout, int64_t kmax) : L_(layout) {
    const int n = L_.layers;
    int64_t off = 0;
    auto take = [&](std::vector<int64_t>& v, int64_t per_row) {
      v.assign(n + 1, 0);
      for (int l = 1; l <= n; ++l) {
        v[l] = off;
        off += kmax * (per_row ? per_row : L_.dim[l]);
      }
    };
    take(h_, 0);
    take(dh_, 0);
    take(delta_, 0);
    take(rz_, 0);
    take(rh_, 0);
    take(rdelta_, 0);
    probs_ = off;
    off += kmax * L_.dim[n];
    tmp_ = off;
    off += kmax * L_.max_width();
    raw_ = off;  // bias / log_std rows before an update is applied
    off += L_.max_width();
    scratch_ = off;
    off += 2 * L_.max_width() * L_.max_width();  // gemm_nt_sum: up to two transposed B
    buf_ = thread_buffer<T>(0, off);
    for (int l = 1; l <= n; ++l) state_width_ += 3 * L_.dim[l];
    state_width_ += L_.dim[n];
  }

  // Forward pass at parameters `th` on k examples x [k, d0].
  void forward(const T* th, const T* x, int64_t k) {
    k_ = k;
    x_ = x;
    for (int l = 1; l <= L_.layers; ++l) {
      const int64_t dout = L_.dim[l], din = L_.dim[l - 1];
      T* z = at(h_, l);
      broadcast_rows(k, dout, th + L_.b_off[l], z);
      gemm_nt(k, dout, din, input(l), th + L_.w_off[l], z, true, scratch());
      if (l < L_.layers) activate(z, k * dout);
    }
  }

  // Loss of the last forward pass (mean over examples of the weighted per-example loss).
  // With `grad` set, also its gradient w.r.t. all P parameters (delta_l kept for hvp()); with
  // `upd` too, `grad` receives upd applied to the gradient instead (e.g. an SGD step from th;
  // upd's base must not be `grad`).
  T loss(const T* th, const Batch<T>& b, int64_t task, T* grad, const Epilogue<T>* upd = nullptr) {
    const int n = L_.layers;
    const int64_t D = L_.dim[n], k = k_;
    const T* out = at(h_, n);
    T* dz = at(delta_, n);
    const T* w = b.weight ? b.weight + task * k : nullptr;
    const T invk = T(1) / T(k);
    double total = 0;
    switch (L_.loss) {
      case Loss::Mse: {
        const T* y = b.y + task * k * D;
        const T scale = T(2) / T(k * D);
        for (int64_t i = 0; i < k; ++i) {
          const T wi = w ? w[i] : T(1);
          double row = 0;
          for (int64_t d = 0; d < D; ++d) {
            const T diff = out[i * D + d] - y[i * D + d];
            row += double(diff) * double(diff);
            dz[i * D + d] = scale * wi * diff;
          }
          total += double(wi) * row;
        }
        total /= double(k * D);
        break;
      }
      case Loss::CrossEntropy: {
        const int64_t* y = b.labels + task * k;
        T* p = buf_ + probs_;
        for (int64_t i = 0; i < k; ++i) {
          const T wi = w ? w[i] : T(1);
          const T* zi = out + i * D;
          T* pi = p + i * D;
          const T m = *std::max_element(zi, zi + D);
          T s = 0;
          for (int64_t d = 0; d < D; ++d) s += (pi[d] = std::exp(zi[d] - m));
          const T lse = m + std::log(s);
          for (int64_t d = 0; d < D; ++d) {
            pi[d] /= s;
            dz[i * D + d] = wi * invk * pi[d];
          }
          dz[i * D + y[i]] -= wi * invk;
          total += double(wi) * double(lse - zi[y[i]]);
        }
        total /= double(k);
        break;
      }
      case Loss::GaussianNll: {
        const T* a = b.y + task * k * D;
        const T* log_std = th + L_.log_std_off;
        T* g_log_std = grad ? grad + L_.log_std_off : nullptr;
        if (g_log_std) std::fill(g_log_std, g_log_std + D, T(0));
        const double half_log_2pi = 0.91893853320467274178;
        for (int64_t i = 0; i < k; ++i) {
          const T wi = w ? w[i] : T(1);
          double row = 0;
          for (int64_t d = 0; d < D; ++d) {
            const T inv_var = std::exp(T(-2) * log_std[d]);
            const T r = out[i * D + d] - a[i * D + d];
            row += 0.5 * double(r) * double(r) * double(inv_var) + double(log_std[d]) + half_log_2pi;
            dz[i * D + d] = wi * invk * r * inv_var;
            if (g_log_std) g_log_std[d] += wi * invk * (T(1) - r * r * inv_var);
          }
          total += double(wi) * row;
        }
        total /= double(k);
        break;
      }
    }
    if (grad) backward(th, grad, upd);
    if (grad && upd && L_.loss == Loss::GaussianNll) {
      T* g_log_std = grad + L_.log_std_off;
      upd->shifted(L_.log_std_off).apply(D, g_log_std, g_log_std);
    }
    return T(total);
  }

  // Hessian-vector product with direction v, at the parameters of the last forward + loss(grad).
  // With `upd`, hv receives upd applied to the product instead; then hv may be upd's base (the
  // walk's v <- v - Hu in place) and upd's out2 may be v itself: each block of v is read before
  // its block of out2 is written.
  void hvp(const T* th, const T* v, T* hv, const Epilogue<T>* upd = nullptr) {
    const int n = L_.layers;
    const int64_t k = k_;
    for (int l = 1; l <= n; ++l) {
      const int64_t dout = L_.dim[l], din = L_.dim[l - 1];
      T* rz = at(rz_, l);
      broadcast_rows(k, dout, v + L_.b_off[l], rz);
      if (l == 1) {
        gemm_nt(k, dout, din, input(l), v + L_.w_off[l], rz, true, scratch());
      } else {  // both products in one pass over rz
        const T* const a[2] = {input(l), at(rh_, l - 1)};
        const T* const b[2] = {v + L_.w_off[l], th + L_.w_off[l]};
        gemm_nt_sum<T, 2>(k, dout, din, a, b, rz, true, scratch());
      }
      if (l < n) {
        const T* h = at(h_, l);
        T* rh = at(rh_, l);
        for (int64_t i = 0; i < k * dout; ++i) rh[i] = act_back(h[i], rz[i]);
      }
    }
    loss_rop(th, v, hv, upd);
    for (int l = n; l >= 1; --l) {
      const int64_t dout = L_.dim[l], din = L_.dim[l - 1];
      T* rd = at(rdelta_, l);
      T* tmp = buf_ + tmp_;
      if (l > 1) {  // first: it reads block l of v, which the update below may overwrite
        const Prod<T> p[2] = {nn(dout, rd, th + L_.w_off[l], din),
                              nn(dout, at(delta_, l), v + L_.w_off[l], din)};
        gemm_sum(k, din, p, tmp, false);
      }
      const Epilogue<T> ew = upd ? upd->shifted(L_.w_off[l]) : Epilogue<T>{};
      if (l == 1) {
        gemm_tn(dout, din, k, rd, input(l), hv + L_.w_off[l], false, upd ? &ew : nullptr);
      } else {
        const Prod<T> p[2] = {tn(dout, k, rd, input(l), din),
                              tn(dout, k, at(delta_, l), at(rh_, l - 1), din)};
        gemm_sum(dout, din, p, hv + L_.w_off[l], false, upd ? &ew : nullptr);
      }
      bias_rows(k, dout, rd, hv, L_.b_off[l], upd);
      if (l > 1) {
        const T* h = at(h_, l - 1);
        const T* rzp = at(rz_, l - 1);
        const T* dhp = at(dh_, l - 1);
        T* rdp = at(rdelta_, l - 1);
        for (int64_t i = 0; i < k * din; ++i)
          rdp[i] = act_back(h[i], tmp[i]) + act_curv(h[i], dhp[i], rzp[i]);
      }
    }
  }

 private:
  T* at(const std::vector<int64_t>& offsets, int l) { return buf_ + offsets[l]; }
  T* scratch() { return buf_ + scratch_; }
  const T* input(int l) { return l == 1 ? x_ : at(h_, l - 1); }

  void activate(T* z, int64_t count) const {
    if (L_.act == Activation::Relu) {
      // `z < 0 ? 0 : z` keeps NaN (as torch.relu does); `z > 0 ? z : 0` would map it to 0.
      for (int64_t i = 0; i < count; ++i) z[i] = z[i] < T(0) ? T(0) : z[i];
    } else {
      for (int64_t i = 0; i < count; ++i) z[i] = std::tanh(z[i]);
    }
  }
  // x * act'(z) and dh * act''(z) * rz, written in terms of the stored output h. ReLU selects (as
  // autograd's threshold_backward does) instead of multiplying by 0/1: an inactive unit passes 0
  // even for x = ±inf (0 * inf is NaN), a NaN unit passes x, and its second derivative is exactly 0.
  T act_back(T h, T x) const {
    return L_.act == Activation::Relu ? (h <= T(0) ? T(0) : x) : x * (T(1) - h * h);
  }
  T act_curv(T h, T dh, T rz) const {
    return L_.act == Activation::Relu ? T(0) : dh * (T(-2) * h * (T(1) - h * h)) * rz;
  }

  // Bias rows of a gradient or HVP (column sums of `rows`) into out[off, off + cols), through
  // the update if any.
  void bias_rows(int64_t k, int64_t cols, const T* rows, T* out, int64_t off, const Epilogue<T>* upd) {
    if (!upd) return column_sums(k, cols, rows, out + off);
    T* raw = buf_ + raw_;
    column_sums(k, cols, rows, raw);
    upd->shifted(off).apply(cols, raw, out + off);
  }

  void backward(const T* th, T* grad, const Epilogue<T>* upd) {
    const int n = L_.layers;
    const int64_t k = k_;
    for (int l = n; l >= 1; --l) {
      const int64_t dout = L_.dim[l], din = L_.dim[l - 1];
      const T* d = at(delta_, l);
      const Epilogue<T> ew = upd ? upd->shifted(L_.w_off[l]) : Epilogue<T>{};
      gemm_tn(dout, din, k, d, input(l), grad + L_.w_off[l], false, upd ? &ew : nullptr);
      bias_rows(k, dout, d, grad, L_.b_off[l], upd);
      if (l > 1) {
        T* dh = at(dh_, l - 1);
        gemm_nn(k, din, dout, d, th + L_.w_off[l], dh, false);
        const T* h = at(h_, l - 1);
        T* dp = at(delta_, l - 1);
        for (int64_t i = 0; i < k * din; ++i) dp[i] = act_back(h[i], dh[i]);
      }
    }
  }

  // Rdelta_L (the loss Hessian applied to Rz_L) and, for the Gaussian NLL, the log_std rows of Hv.
  void loss_rop(const T* th, const T* v, T* hv, const Epilogue<T>* upd) {
    const int n = L_.layers;
    const int64_t D = L_.dim[n], k = k_;
    const T* rz = at(rz_, n);
    T* rd = at(rdelta_, n);
    const T* w = batch_weight_;
    const T invk = T(1) / T(k);
    switch (L_.loss) {
      case Loss::Mse: {
        const T scale = T(2) / T(k * D);
        for (int64_t i = 0; i < k; ++i) {
          const T wi = w ? w[i] : T(1);
          for (int64_t d = 0; d < D; ++d) rd[i * D + d] = scale * wi * rz[i * D + d];
        }
        break;
      }
      case Loss::CrossEntropy: {
        const T* p = buf_ + probs_;
        for (int64_t i = 0; i < k; ++i) {
          const T wi = w ? w[i] : T(1);
          T dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += p[i * D + d] * rz[i * D + d];
          for (int64_t d = 0; d < D; ++d)
            rd[i * D + d] = wi * invk * p[i * D + d] * (rz[i * D + d] - dot);
        }
        break;
      }
      case Loss::GaussianNll: {
        const T* log_std = th + L_.log_std_off;
        const T* rs = v + L_.log_std_off;
        T* hs = upd ? buf_ + raw_ : hv + L_.log_std_off;
        std::fill(hs, hs + D, T(0));
        const T* out = at(h_, n);
        for (int64_t i = 0; i < k; ++i) {
          const T wi = w ? w[i] : T(1);
          for (int64_t d = 0; d < D; ++d) {
            const T inv_var = std::exp(T(-2) * log_std[d]);
            const T r = out[i * D + d] - batch_target_[i * D + d];
            rd[i * D + d] = wi * invk * inv_var * (rz[i * D + d] - T(2) * r * rs[d]);
            hs[d] += wi * invk * T(2) * inv_var * (r * r * rs[d] - r * rz[i * D + d]);
          }
        }
        if (upd) upd->shifted(L_.log_std_off).apply(D, hs, hv + L_.log_std_off);
        break;
      }
    }
  }

 public:
  // What hvp() needs from the forward/loss/backward passes at one set of parameters: saved after
  // each inner step so that the reverse walk need not recompute it.
  int64_t state_size(int64_t k) const { return k * state_width_; }
  void save_state(T* dst) const { copy_state(buf_, dst, true); }
  void load_state(const T* src, const T* x, int64_t k) {
    k_ = k;
    x_ = x;
    copy_state(buf_, const_cast<T*>(src), false);
  }

  // The R-op of the loss needs the same targets/weights as loss(); remembered per task.
  // The last forward pass's outputs [k, D] (before the loss).
  const T* output() { return at(h_, L_.layers); }

  void bind(const Batch<T>& b, int64_t task) {
    const int64_t D = L_.dim[L_.layers];
    batch_weight_ = b.weight ? b.weight + task * b.k : nullptr;
    batch_target_ = b.y ? b.y + task * b.k * D : nullptr;
  }

 private:
  void copy_state(T* buf, T* state, bool save) const {
    auto move = [&](int64_t off, int64_t count) {
      if (save) std::memcpy(state, buf + off, sizeof(T) * count);
      else std::memcpy(buf + off, state, sizeof(T) * count);
      state += count;
    };
    const int n = L_.layers;
    for (int l = 1; l <= n; ++l) {
      move(h_[l], k_ * L_.dim[l]);
      move(dh_[l], k_ * L_.dim[l]);
      move(delta_[l], k_ * L_.dim[l]);
    }
    move(probs_, k_ * L_.dim[n]);
  }

  const Layout& L_;
  int64_t state_width_ = 0;
  int64_t k_ = 0;
  const T* x_ = nullptr;
  const T* batch_weight_ = nullptr;
  const T* batch_target_ = nullptr;
  std::vector<int64_t> h_, dh_, delta_, rz_, rh_, rdelta_;
  int64_t probs_ = 0, tmp_ = 0, raw_ = 0, scratch_ = 0;
  T* buf_;
};

}  // namespace

template <typename T>
void hvp_tasks(const HvpArgs<T>& a, int64_t t0, int64_t t1) {
  const Layout& L = *a.layout;
  const int64_t P = L.numel, d0 = L.dim[0], k = a.batch.k;
  Net<T> net(L, k);
  for (int64_t t = t0; t < t1; ++t) {
    const T* th = a.theta + t * P;
    net.bind(a.batch, t);
    net.forward(th, a.batch.x + t * k * d0, k);
    a.loss[t] = net.loss(th, a.batch, t, a.grad + t * P);
    if (a.direction != nullptr) net.hvp(th, a.direction + t * P, a.hvp + t * P);
  }
}

namespace {

// theta_{s+1} = theta_s - alpha_s * g_s, where alpha_s is row s of alpha (or its only row).
template <typename T>
const T* alpha_row(const MamlArgs<T>& a, int64_t s) {
  return a.alpha + (a.alpha_rows > 1 ? s * a.layout->numel : 0);
}

template <typename T>
T* checkpoint(const MamlArgs<T>& a, int64_t step, int64_t t) {
  return a.checkpoints + ((step / a.checkpoint_every - 1) * a.tasks + t) * a.layout->numel;
}

template <typename T>
void sgd_step(const T* cur, const T* alpha, const T* g, T* dst, int64_t P) {
  for (int64_t p = 0; p < P; ++p) dst[p] = cur[p] - alpha[p] * g[p];
}

}  // namespace

template <typename T>
void maml_forward_tasks(const MamlArgs<T>& a, int64_t t0, int64_t t1) {
  const Layout& L = *a.layout;
  const int64_t P = L.numel, d0 = L.dim[0];
  const int64_t ks = a.support.k, kq = a.query.k;
  Net<T> net(L, std::max(ks, kq));
  T* g = thread_buffer<T>(1, P);
  T* ping = thread_buffer<T>(2, P);
  T* pong = thread_buffer<T>(3, P);
  const int64_t out_size = kq * L.dim[L.layers];
  // Query loss (and outputs) at parameters th: after s steps, s = 0..steps.
  auto query = [&](const T* th, int64_t s, int64_t t, T* grad) {
    net.bind(a.query, t);
    net.forward(th, a.query.x + t * kq * d0, kq);
    if (a.query_out) std::memcpy(a.query_out + (s * a.tasks + t) * out_size, net.output(), sizeof(T) * out_size);
    return net.loss(th, a.query, t, grad);
  };
  for (int64_t t = t0; t < t1; ++t) {
    const T* cur = a.theta0;
    for (int64_t s = 0; s < a.steps; ++s) {
      if (a.step_query_loss) a.step_query_loss[s * a.tasks + t] = query(cur, s, t, nullptr);
      net.bind(a.support, t);
      net.forward(cur, a.support.x + t * ks * d0, ks);
      net.loss(cur, a.support, t, g);
      T* dst;
      if (s + 1 == a.steps && a.adapted) {
        dst = a.adapted + t * P;
      } else if (a.checkpoints && (s + 1) % a.checkpoint_every == 0) {
        dst = checkpoint(a, s + 1, t);
      } else {
        dst = (s % 2 == 0) ? ping : pong;
      }
      sgd_step(cur, alpha_row(a, s), g, dst, P);
      cur = dst;
    }
    a.query_loss[t] = query(cur, a.steps, t, a.query_grad ? a.query_grad + t * P : nullptr);
  }
}

template <typename T>
void maml_backward_tasks(const MamlArgs<T>& a, int64_t t0, int64_t t1, int64_t chunk) {
  const Layout& L = *a.layout;
  const int64_t P = L.numel, d0 = L.dim[0], ks = a.support.k;
  const int64_t every = a.checkpoint_every;
  const int64_t segments = (a.steps + every - 1) / every;
  Net<T> net(L, ks);
  T* g = thread_buffer<T>(1, P);
  T* u = thread_buffer<T>(2, P);
  T* hv = thread_buffer<T>(3, P);
  T* segment = thread_buffer<T>(4, std::max<int64_t>(every - 1, 0) * P);
  T* grad_alpha = a.grad_alpha ? a.grad_alpha + chunk * a.alpha_rows * P : nullptr;
  const bool walk = !a.first_order || grad_alpha;
  for (int64_t t = t0; t < t1; ++t) {
    T* v = a.grad_theta + t * P;
    for (int64_t p = 0; p < P; ++p) {
      T acc = a.grad_loss ? a.grad_loss[t] * a.query_grad[t * P + p] : T(0);
      if (a.grad_adapted) acc += a.grad_adapted[t * P + p];
      v[p] = acc;
    }
    if (!walk) continue;
    const T* x = a.support.x + t * ks * d0;
    net.bind(a.support, t);
    for (int64_t j = segments - 1; j >= 0; --j) {
      const int64_t s0 = j * every, end = std::min(s0 + every, a.steps);
      const T* base = j == 0 ? a.theta0 : checkpoint(a, s0, t);
      // Recompute theta_{s0+1} .. theta_{end-1} from the segment's checkpoint.
      const T* cur = base;
      for (int64_t s = s0; s + 1 < end; ++s) {
        net.forward(cur, x, ks);
        net.loss(cur, a.support, t, g);
        T* dst = segment + (s - s0) * P;
        sgd_step(cur, alpha_row(a, s), g, dst, P);
        cur = dst;
      }
      for (int64_t s = end - 1; s >= s0; --s) {
        const T* th = s == s0 ? base : segment + (s - s0 - 1) * P;
        net.forward(th, x, ks);
        net.loss(th, a.support, t, g);
        const T* alpha = alpha_row(a, s);
        if (grad_alpha) {
          T* ga = grad_alpha + (a.alpha_rows > 1 ? s * P : 0);
          for (int64_t p = 0; p < P; ++p) ga[p] -= g[p] * v[p];
        }
        if (!a.first_order) {
          // d theta_{s+1} / d theta_s = I - diag(alpha) H, so v <- v - H (alpha * v).
          for (int64_t p = 0; p < P; ++p) u[p] = alpha[p] * v[p];
          net.hvp(th, u, hv);
          for (int64_t p = 0; p < P; ++p) v[p] -= hv[p];
        }
      }
    }
  }
}

// The learning rates of each row of alpha as an update coefficient: a scalar where the row is
// uniform (a float lr, the common case), which saves reading alpha in every fused update.
template <typename T>
class LrCoefficients {
 public:
  explicit LrCoefficients(const MamlArgs<T>& a) : a_(a) {
    const int64_t P = a.layout->numel;
    for (int64_t r = 0; r < a.alpha_rows; ++r) {
      const T* row = a.alpha + r * P;
      const bool uniform = std::all_of(row, row + P, [&](T x) { return x == row[0]; });
      rows_.push_back(uniform ? nullptr : row);
      values_.push_back(row[0]);
    }
  }
  // coef / coef_value of step s (as Epilogue's coef or coef2 fields).
  void of_step(int64_t s, const T*& coef, T& value) const {
    const int64_t r = a_.alpha_rows > 1 ? s : 0;
    coef = rows_[r];
    value = values_[r];
  }

 private:
  const MamlArgs<T>& a_;
  std::vector<const T*> rows_;
  std::vector<T> values_;
};

// Query loss and meta-gradient in one pass per task: the forward keeps every theta_k and the
// hvp() state of every step in per-thread buffers, so the reverse walk recomputes nothing and
// memory is O(threads * S * P) rather than O(T * S * P). The parameter-sized updates are fused
// into the stores of the gradients' weight blocks: theta_{k+1} = theta_k - alpha_k g_k as g_k is
// computed, and in the walk v <- v - H_k u, u <- alpha_{k-1} v as H_k u is (u = alpha_k v).
// [t0, t1) is one chunk of tasks: its meta-gradients are summed in task order into row `chunk`
// of grad_theta_sum (the first task's is stored, so the row need not be zeroed).
template <typename T>
void maml_grad_tasks(const MamlArgs<T>& a, int64_t t0, int64_t t1, int64_t chunk) {
  const Layout& L = *a.layout;
  const int64_t P = L.numel, d0 = L.dim[0], ks = a.support.k, kq = a.query.k;
  Net<T> net(L, std::max(ks, kq));
  T* grad_alpha = a.grad_alpha ? a.grad_alpha + chunk * a.alpha_rows * P : nullptr;
  const bool walk = !a.first_order || grad_alpha;
  const bool fused_step = !grad_alpha;  // the lr gradients need every g_k: kept, then the step
  const LrCoefficients<T> lr(a);
  const int64_t ss = net.state_size(ks);
  T* u = thread_buffer<T>(1, P);
  T* v = thread_buffer<T>(2, P);
  T* thetas = thread_buffer<T>(3, a.steps * P);
  T* states = thread_buffer<T>(4, walk ? a.steps * ss : 0);
  T* grads = thread_buffer<T>(5, fused_step ? 0 : a.steps * P);  // g_k of each step for lr grads
  T* sum = a.grad_theta_sum + chunk * P;
  const auto add_to_sum = [&](int64_t t) {
    if (t == t0) {
      std::memcpy(sum, v, sizeof(T) * P);
    } else {
      for (int64_t p = 0; p < P; ++p) sum[p] += v[p];
    }
  };
  for (int64_t t = t0; t < t1; ++t) {
    const T* x = a.support.x + t * ks * d0;
    const T* cur = a.theta0;
    net.bind(a.support, t);
    for (int64_t s = 0; s < a.steps; ++s) {
      T* dst = thetas + s * P;
      net.forward(cur, x, ks);
      if (fused_step) {
        Epilogue<T> step;
        step.base = cur;
        lr.of_step(s, step.coef, step.coef_value);
        net.loss(cur, a.support, t, dst, &step);
      } else {
        T* g = grads + s * P;
        net.loss(cur, a.support, t, g);
        sgd_step(cur, alpha_row(a, s), g, dst, P);
      }
      if (walk) net.save_state(states + s * ss);
      cur = dst;
    }
    // v = loss_weight[t] * the query gradient (and u = alpha_{S-1} v for the walk).
    Epilogue<T> scale;
    scale.coef_value = -a.grad_loss[t];
    if (!a.first_order) {
      scale.out2 = u;
      lr.of_step(a.steps - 1, scale.coef2, scale.coef2_value);
    }
    net.bind(a.query, t);
    net.forward(cur, a.query.x + t * kq * d0, kq);
    a.query_loss[t] = net.loss(cur, a.query, t, v, &scale);
    if (!walk) {
      add_to_sum(t);
      continue;
    }
    net.bind(a.support, t);
    for (int64_t s = a.steps - 1; s >= 0; --s) {
      const T* th = s == 0 ? a.theta0 : thetas + (s - 1) * P;
      net.load_state(states + s * ss, x, ks);
      if (grad_alpha) {
        const T* g = grads + s * P;
        T* ga = grad_alpha + (a.alpha_rows > 1 ? s * P : 0);
        for (int64_t p = 0; p < P; ++p) ga[p] -= g[p] * v[p];
      }
      if (!a.first_order) {
        // d theta_{s+1} / d theta_s = I - diag(alpha_s) H_s: v <- v - H_s u, u = alpha_s v.
        Epilogue<T> back;
        back.base = v;
        if (s > 0) {
          back.out2 = u;
          lr.of_step(s - 1, back.coef2, back.coef2_value);
        }
        net.hvp(th, u, v, &back);
      }
    }
    add_to_sum(t);
  }
}

// BMAML with the Chaser loss, one task at a time on one thread with its M particles: the SVGD
// steps from the shared initial particles keep each particle's forward/loss state for the
// reverse walk (as maml_grad_tasks does), the particles are mixed by svgd_task.h's arithmetic
// between the per-particle passes (no packing), the query loss is a forward pass, and the walk
// runs per step in reverse the SVGD step's vector-Jacobian product (cotangents of the particles
// and of their scores g = grad L) and one HVP per particle: d theta_s = xbar + H_s gbar. The
// leader is a constant (stop-gradient). [t0, t1) is one chunk of tasks: its gradients are summed
// in task order into row `chunk` of grad_sum (the first task's is stored).
template <typename T>
void bmaml_chaser_tasks(const BmamlArgs<T>& a, int64_t t0, int64_t t1, int64_t chunk) {
  const Layout& L = *a.layout;
  const int64_t P = L.numel, d0 = L.dim[0], M = a.particles, MP = M * P, S = a.steps;
  const int64_t ks = a.support.k, kq = a.query.k;
  const bool walk = !a.first_order;
  Net<T> net(L, std::max({ks, kq, a.all.k}));
  const int64_t ss = net.state_size(ks);
  T* thetas = thread_buffer<T>(1, S * MP);  // the particles after steps 1..S (before step 0: theta0)
  T* scores = thread_buffer<T>(2, S * MP);  // the support-loss gradients at the start of each step
  T* states = thread_buffer<T>(3, walk ? S * M * ss : 0);
  T* leader = thread_buffer<T>(4, 3 * MP);  // ping, pong, scores
  T* v = thread_buffer<T>(5, 4 * MP);       // the particles' cotangent, then dx, dg, hv
  T *dx = v + MP, *dg = v + 2 * MP, *hv = v + 3 * MP;
  std::vector<double> kernels((S + 1) * M * M), bandwidths(S);  // the last kernel: the leader's
  svgd::Scratch<T> sc;
  const auto view = [&](const T* base) { return svgd::TaskView<T>{{base}, {P}}; };
  // The support-loss gradients of the M particles `th` on task t of batch b (with the hvp state).
  const auto particle_grads = [&](const T* th, const Batch<T>& b, int64_t t, T* g, T* state) {
    net.bind(b, t);
    for (int64_t m = 0; m < M; ++m) {
      net.forward(th + m * P, b.x + t * b.k * d0, b.k);
      net.loss(th + m * P, b, t, g + m * P);
      if (state) net.save_state(state + m * ss);
    }
  };
  // log p = -L: score scale -1, step size lr.
  const auto svgd_step = [&](const T* th, const T* g, T* out, double* k) {
    T* const outs[1] = {out};
    return svgd::forward_task<svgd::InlineRows>(view(th), view(g), M, -1.0, a.lr, outs, k, sc);
  };
  T* sum = a.grad_sum + chunk * MP;
  for (int64_t t = t0; t < t1; ++t) {
    const T* cur = a.theta0;
    for (int64_t s = 0; s < S; ++s) {
      particle_grads(cur, a.support, t, scores + s * MP, walk ? states + s * M * ss : nullptr);
      bandwidths[s] = svgd_step(cur, scores + s * MP, thetas + s * MP, kernels.data() + s * M * M);
      cur = thetas + s * MP;
    }
    net.bind(a.query, t);
    for (int64_t m = 0; m < M; ++m) {
      net.forward(cur + m * P, a.query.x + t * kq * d0, kq);
      a.query_loss[t * M + m] = net.loss(cur + m * P, a.query, t, nullptr);
    }
    const T* lead = cur;
    for (int64_t l = 0; l < a.leader_steps; ++l) {
      particle_grads(lead, a.all, t, leader + 2 * MP, nullptr);
      svgd_step(lead, leader + 2 * MP, leader + (l % 2) * MP, kernels.data() + S * M * M);
      lead = leader + (l % 2) * MP;
    }
    // chase_t = |chaser - leader|^2; its gradient (as part of sum_t chase_t / T) seeds the walk.
    double chase = 0;
    const T scale = T(2.0 / static_cast<double>(a.tasks));
    for (int64_t i = 0; i < MP; ++i) {
      const T diff = cur[i] - lead[i];
      chase += double(diff) * double(diff);
      v[i] = scale * diff;
    }
    a.chase[t] = chase;
    if (walk) {
      net.bind(a.support, t);
      for (int64_t s = S - 1; s >= 0; --s) {
        const T* th = s == 0 ? a.theta0 : thetas + (s - 1) * MP;
        T* const dxs[1] = {dx};
        T* const dgs[1] = {dg};
        svgd::backward_task<svgd::InlineRows>(view(v), view(th), view(scores + s * MP), M, -1.0, a.lr,
                                              kernels.data() + s * M * M, bandwidths[s], dxs, dgs, sc);
        for (int64_t m = 0; m < M; ++m) {
          net.load_state(states + (s * M + m) * ss, a.support.x + t * ks * d0, ks);
          net.hvp(th + m * P, dg + m * P, hv + m * P);
        }
        for (int64_t i = 0; i < MP; ++i) v[i] = dx[i] + hv[i];
      }
    }
    if (t == t0) {
      std::memcpy(sum, v, sizeof(T) * MP);
    } else {
      for (int64_t i = 0; i < MP; ++i) sum[i] += v[i];
    }
  }
}

#define MAML_EXT_INSTANTIATE(T)                                                        \
  template void hvp_tasks<T>(const HvpArgs<T>&, int64_t, int64_t);                     \
  template void maml_forward_tasks<T>(const MamlArgs<T>&, int64_t, int64_t);           \
  template void maml_backward_tasks<T>(const MamlArgs<T>&, int64_t, int64_t, int64_t);  \
  template void maml_grad_tasks<T>(const MamlArgs<T>&, int64_t, int64_t, int64_t);    \
  template void bmaml_chaser_tasks<T>(const BmamlArgs<T>&, int64_t, int64_t, int64_t);
MAML_EXT_INSTANTIATE(float)
MAML_EXT_INSTANTIATE(double)
#undef MAML_EXT_INSTANTIATE

}  // namespace maml_ext::mlp::MAML_EXT_CPU_CAPABILITY
