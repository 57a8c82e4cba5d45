// One task's SVGD step and its exact vector-Jacobian product on raw pointers: the arithmetic of
// svgd_step / svgd_step_backward (svgd_cpu.cpp), shared with the MLP engine's BMAML op
// (mlp_engine.cpp), which runs it between its per-particle passes. No torch header, so that the
// engine's per-capability builds can include it.
//
// Per task, with particles x_a (a = 0..M-1, each the concatenation of its slices of all blocks),
// scores grad log p(x_a) = s g_a (s = score_scale), S_ab = |x_a - x_b|^2,
// h = max(med(sqrt S_ab, a < b)^2 / log M, 1e-12) (h = 1 for M = 1; no gradient through h),
// K_ab = exp(-S_ab / h), c = 2 / h, r_a = sum_b K_ab, and step size e:
//   out_a = x_a + e phi_a,   phi_a = 1/M sum_b K_ab (s g_b + c (x_a - x_b)).
// Backward, given P = dL/dout:
//   dL/dg_b = e s/M sum_a K_ab P_a,
//   Kbar_ab = e/M <P_a, s g_b + c (x_a - x_b)>  (a != b; K_aa = 1 is constant),
//   B_ab = -(Kbar_ab + Kbar_ba) K_ab / h       (dL/dS, symmetrised),
//   dL/dx_a = P_a + e c/M (r_a P_a - sum_b K_ab P_b) + 2 sum_b B_ab (x_a - x_b).
// Every loop runs in a fixed order, so results do not depend on threads or alignment.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace maml_ext::svgd {
// Each MLP engine build (one per CPU capability, with its own -m flags) gets its own copy: the
// same symbols in several objects would be one arbitrary build's code at link time (the ODR).
#ifdef MAML_EXT_CPU_CAPABILITY
inline namespace MAML_EXT_CPU_CAPABILITY {
#endif

// One task's particle block [M, dim[i]] in each tensor i, row a at ptr[i] + a * dim[i].
template <typename scalar_t>
struct TaskView {
  std::vector<const scalar_t*> ptr;
  std::vector<int64_t> dim;
};

// Reductions over a row split into kLanes independent partial sums (vectorisable without
// reassociation), combined in a fixed order.
constexpr int64_t kLanes = 16;

template <typename scalar_t, typename F>
[[gnu::always_inline]] inline double lane_sum(int64_t n, F term) {
  scalar_t lanes[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
#pragma GCC unroll 16
    for (int64_t l = 0; l < kLanes; ++l) lanes[l] += term(j + l);
  }
  double total = 0;
  for (; j < n; ++j) total += static_cast<double>(term(j));
  for (int64_t l = 0; l < kLanes; ++l) total += static_cast<double>(lanes[l]);
  return total;
}

template <typename scalar_t>
[[gnu::always_inline]] inline double sq_dist_impl(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                                                  int64_t n) {
  return lane_sum<scalar_t>(n, [&](int64_t j) {
    const scalar_t d = a[j] - b[j];
    return d * d;
  });
}

template <typename scalar_t>
[[gnu::always_inline]] inline double dot_impl(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                                              int64_t n) {
  return lane_sum<scalar_t>(n, [&](int64_t j) { return a[j] * b[j]; });
}

// out_a[j] = sum_b (w_ab u_b[j] + v_ab x_b[j]) for all M rows a of one block [M, d] (v null: the
// u terms only): the direction and both backward outputs, with their diagonal terms folded into
// w and v. Blocked over j so that each block of the 2M input rows is read from memory once for all
// M outputs and the sums stay in registers; the order of operations is fixed.
template <typename scalar_t>
[[gnu::always_inline]] inline void combine_impl(int64_t m, int64_t d, const scalar_t* w, const scalar_t* u,
                                                const scalar_t* v, const scalar_t* x, scalar_t* out) {
  constexpr int64_t J = 64;
  const auto block = [&](int64_t j0, auto width) {
    const int64_t n = width;
    for (int64_t a = 0; a < m; ++a) {
      scalar_t acc[J] = {};
      for (int64_t b = 0; b < m; ++b) {
        const scalar_t wb = w[a * m + b];
        const scalar_t* __restrict__ ub = u + b * d + j0;
        for (int64_t j = 0; j < n; ++j) acc[j] += wb * ub[j];
        if (v != nullptr) {
          const scalar_t vb = v[a * m + b];
          const scalar_t* __restrict__ xb = x + b * d + j0;
          for (int64_t j = 0; j < n; ++j) acc[j] += vb * xb[j];
        }
      }
      scalar_t* __restrict__ o = out + a * d + j0;
      for (int64_t j = 0; j < n; ++j) o[j] = acc[j];
    }
  };
  int64_t j0 = 0;
  for (; j0 + J <= d; j0 += J) block(j0, std::integral_constant<int64_t, J>{});  // full blocks: fixed trip count
  if (j0 < d) block(j0, d - j0);
}

// The row primitives compiled where this header is included (the MLP engine's per-capability
// builds); svgd_cpu.cpp passes its own, compiled per instruction set by target_clones.
struct InlineRows {
  template <typename scalar_t>
  static double sq_dist(const scalar_t* a, const scalar_t* b, int64_t n) { return sq_dist_impl(a, b, n); }
  template <typename scalar_t>
  static double dot(const scalar_t* a, const scalar_t* b, int64_t n) { return dot_impl(a, b, n); }
  template <typename scalar_t>
  static void combine(int64_t m, int64_t d, const scalar_t* w, const scalar_t* u, const scalar_t* v,
                      const scalar_t* x, scalar_t* out) {
    combine_impl(m, d, w, u, v, x, out);
  }
};

inline double median_bandwidth(const std::vector<double>& sq, int64_t m) {
  if (m == 1) return 1.0;
  std::vector<double> d;
  d.reserve(m * (m - 1) / 2);
  for (int64_t a = 0; a < m; ++a)
    for (int64_t b = a + 1; b < m; ++b) d.push_back(std::sqrt(sq[a * m + b]));
  const size_t n = d.size(), mid = n / 2;
  std::nth_element(d.begin(), d.begin() + mid, d.end());
  double med = d[mid];
  if (n % 2 == 0) med = (med + *std::max_element(d.begin(), d.begin() + mid)) / 2;
  return std::max(med * med / std::log(static_cast<double>(m)), 1e-12);
}

// Per-thread work arrays of one task's step (reused across tasks).
template <typename scalar_t>
struct Scratch {
  std::vector<double> sq, pg, px, b_mat;
  std::vector<scalar_t> w, v;  // the combinations' coefficients [M, M]
  void size_for(int64_t m) {
    for (auto* a : {&sq, &pg, &px, &b_mat}) a->resize(m * m);
    w.resize(m * m);
    v.resize(m * m);
  }
};

// One task's step: out[i] (block i's [M, dim[i]] output) = x + e phi; k [M*M] receives the kernel
// matrix; returns the bandwidth h.
template <typename Rows, typename scalar_t>
double forward_task(const TaskView<scalar_t>& x, const TaskView<scalar_t>& g, int64_t m, double s, double e,
                    scalar_t* const* out, double* k, Scratch<scalar_t>& sc) {
  sc.size_for(m);
  std::vector<double>& sq = sc.sq;
  std::fill(sq.begin(), sq.end(), 0.0);
  for (size_t i = 0; i < x.ptr.size(); ++i)
    for (int64_t a = 0; a < m; ++a)
      for (int64_t b = a + 1; b < m; ++b)
        sq[a * m + b] += Rows::sq_dist(x.ptr[i] + a * x.dim[i], x.ptr[i] + b * x.dim[i], x.dim[i]);
  const double h = median_bandwidth(sq, m);
  const double c = 2.0 / h, inv_m = 1.0 / static_cast<double>(m);
  for (int64_t a = 0; a < m; ++a)
    for (int64_t b = 0; b < m; ++b) {
      const double d2 = a < b ? sq[a * m + b] : sq[b * m + a];
      k[a * m + b] = a == b ? 1.0 : std::exp(-d2 / h);
    }
  // out_a = (1 + e c r_a / M) x_a + e/M sum_b K_ab (s g_b - c x_b).
  for (int64_t a = 0; a < m; ++a) {
    double r = 0;
    for (int64_t b = 0; b < m; ++b) r += k[a * m + b];
    for (int64_t b = 0; b < m; ++b) {
      sc.w[a * m + b] = static_cast<scalar_t>(e * s * inv_m * k[a * m + b]);
      sc.v[a * m + b] = static_cast<scalar_t>(-e * c * inv_m * k[a * m + b] + (a == b ? 1.0 + e * c * inv_m * r : 0.0));
    }
  }
  for (size_t i = 0; i < x.ptr.size(); ++i)
    Rows::combine(m, x.dim[i], sc.w.data(), g.ptr[i], sc.v.data(), x.ptr[i], out[i]);
  return h;
}

// One task's vector-Jacobian product: given P = p (the cotangent of out), dx[i] and dg[i] (block
// i's [M, dim[i]]) receive dL/dx and dL/dg; k and h are forward_task's.
template <typename Rows, typename scalar_t>
void backward_task(const TaskView<scalar_t>& p, const TaskView<scalar_t>& x, const TaskView<scalar_t>& g,
                   int64_t m, double s, double e, const double* k, double h, scalar_t* const* dx,
                   scalar_t* const* dg, Scratch<scalar_t>& sc) {
  sc.size_for(m);
  std::vector<double>&pg = sc.pg, &px = sc.px, &b_mat = sc.b_mat;
  std::vector<scalar_t>&w = sc.w, &v = sc.v;
  const double c = 2.0 / h, inv_m = 1.0 / static_cast<double>(m);
  // <P_a, g_b> and <P_a, x_b>, summed over blocks.
  std::fill(pg.begin(), pg.end(), 0.0);
  std::fill(px.begin(), px.end(), 0.0);
  for (size_t i = 0; i < x.ptr.size(); ++i) {
    const int64_t d = x.dim[i];
    for (int64_t a = 0; a < m; ++a)
      for (int64_t b = 0; b < m; ++b) {
        pg[a * m + b] += Rows::dot(p.ptr[i] + a * d, g.ptr[i] + b * d, d);
        px[a * m + b] += Rows::dot(p.ptr[i] + a * d, x.ptr[i] + b * d, d);
      }
  }
  // Kbar_ab = e/M (s <P_a, g_b> + c (<P_a, x_a> - <P_a, x_b>)), B = -(Kbar + Kbar^T) K / h.
  for (int64_t a = 0; a < m; ++a)
    for (int64_t b = 0; b < m; ++b) {
      if (a == b) {
        b_mat[a * m + b] = 0;
        continue;
      }
      const double kab = e * inv_m * (s * pg[a * m + b] + c * (px[a * m + a] - px[a * m + b]));
      const double kba = e * inv_m * (s * pg[b * m + a] + c * (px[b * m + b] - px[b * m + a]));
      b_mat[a * m + b] = -(kab + kba) * k[a * m + b] / h;
    }
  // dg_a = e s/M sum_b K_ab P_b.
  for (int64_t ab = 0; ab < m * m; ++ab) w[ab] = static_cast<scalar_t>(e * s * inv_m * k[ab]);
  for (size_t i = 0; i < x.ptr.size(); ++i)
    Rows::combine(m, x.dim[i], w.data(), p.ptr[i], static_cast<const scalar_t*>(nullptr), x.ptr[i], dg[i]);
  // dx_a = (1 + e c r_a/M) P_a - e c/M sum_b K_ab P_b + 2 (sum_b B_ab) x_a - 2 sum_b B_ab x_b.
  for (int64_t a = 0; a < m; ++a) {
    double r = 0, b_sum = 0;
    for (int64_t b = 0; b < m; ++b) {
      r += k[a * m + b];
      b_sum += b_mat[a * m + b];
    }
    for (int64_t b = 0; b < m; ++b) {
      w[a * m + b] = static_cast<scalar_t>(-e * c * inv_m * k[a * m + b] + (a == b ? 1.0 + e * c * inv_m * r : 0.0));
      v[a * m + b] = static_cast<scalar_t>(-2.0 * b_mat[a * m + b] + (a == b ? 2.0 * b_sum : 0.0));
    }
  }
  for (size_t i = 0; i < x.ptr.size(); ++i)
    Rows::combine(m, x.dim[i], w.data(), p.ptr[i], v.data(), x.ptr[i], dx[i]);
}

#ifdef MAML_EXT_CPU_CAPABILITY
}  // namespace MAML_EXT_CPU_CAPABILITY
#endif
}  // namespace maml_ext::svgd
