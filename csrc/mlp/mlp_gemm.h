// Small dense kernels of the MLP engine: register-tiled GEMMs for the shapes of per-task MAML
// (few rows K, wide layers), a dot-product GEMM for h W^T, transposes, horizontal sums.
//
// Included only by mlp_engine.cpp, which is compiled once per CPU capability: everything here
// lives in that capability's namespace and its vector width follows the -m flags of the build.
// GCC vector types keep the code portable across the builds. No torch header.
//
// The GEMMs take a short list of products summed into one output ("C += A1 B1 + A2 B2"): the
// Hessian-vector product needs several pairs of products into the same matrix, and summing them
// in registers writes (and, for the K x K-independent outputs, reads) each output tile once
// instead of twice. Sums are not reassociated within a product, so results do not depend on the
// tiling.
#pragma once

#ifndef MAML_EXT_CPU_CAPABILITY
#error "mlp_gemm.h is included by the capability-specific mlp_engine.cpp builds only"
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

namespace maml_ext::mlp::MAML_EXT_CPU_CAPABILITY {
namespace {

#if defined(__AVX512F__)
constexpr int kVectorBytes = 64;
// 32 vector registers: 12 rows x 2 vectors of accumulators plus the loaded operands. With
// K = 10 examples per task one tile covers every row, so each weight matrix is streamed from
// L2 once per product instead of twice (6 + 4 rows).
constexpr int kMR = 12;
#elif defined(__AVX2__)
constexpr int kVectorBytes = 32;
constexpr int kMR = 6;  // 16 registers
#else
constexpr int kVectorBytes = 16;
constexpr int kMR = 6;
#endif

template <typename T, int VB>
struct Vec {
  static constexpr int lanes = VB / static_cast<int>(sizeof(T));
  typedef T type __attribute__((vector_size(VB)));
  typedef T unaligned __attribute__((vector_size(VB), aligned(sizeof(T))));
};

// One product A B of a sum: A(i, k) = a[i * a_rs + k * a_cs] (so A and A^T are both served),
// B row-major with leading dimension ldb, inner dimension kd.
template <typename T>
struct Prod {
  const T* a;
  int64_t a_rs, a_cs;
  const T* b;
  int64_t ldb;
  int64_t kd;
};

// f(std::integral_constant<int, 0>{}), ..., f(std::integral_constant<int, N - 1>{}): a loop
// unrolled at compile time (C++17, the standard of torch < 2.10 builds).
template <typename F, int... Q>
__attribute__((always_inline)) inline void for_each_index_impl(F&& f, std::integer_sequence<int, Q...>) {
  (f(std::integral_constant<int, Q>{}), ...);
}
template <int N, typename F>
__attribute__((always_inline)) inline void for_each_index(F&& f) {
  for_each_index_impl(f, std::make_integer_sequence<int, N>{});
}

// c += A B over one product, for the MR x NV tile at rows i0, columns j0.
template <typename T, int VB, int MR, int NV>
__attribute__((always_inline)) inline void tile_product(typename Vec<T, VB>::type (&c)[MR][NV],
                                                        const Prod<T>& p, int64_t i0, int64_t j0) {
  using V = typename Vec<T, VB>::type;
  using U = typename Vec<T, VB>::unaligned;
  constexpr int L = Vec<T, VB>::lanes;
  const int64_t rs = p.a_rs, cs = p.a_cs, ldb = p.ldb, kd = p.kd;
  const T* __restrict A = p.a + i0 * rs;
  const T* __restrict B = p.b + j0;
  int64_t k = 0;
  do {  // kd >= 1: no zero-trip path, which made GCC keep the tile in memory
    V b[NV];
    for (int j = 0; j < NV; ++j) b[j] = *reinterpret_cast<const U*>(B + k * ldb + j * L);
    for (int i = 0; i < MR; ++i) {
      const T a = A[i * rs + k * cs];
      for (int j = 0; j < NV; ++j) c[i][j] += a * b[j];
    }
  } while (++k < kd);
}

// What is written instead of the result R of a GEMM (R includes C when accumulating):
//   C = base - coef * R, and, when out2 is set, also out2 = coef2 * C (elementwise).
// With it, an SGD step (theta' = theta - alpha * g) or the reverse walk's update (v' = v - Hu,
// u' = alpha * v') happen as the gradient's tiles are stored, instead of in passes of their own
// over all parameters. base, coef, out2 and coef2 address the output's element (0, 0) and share
// its leading dimension; base may be C itself. A null coef (coef2) means the scalar coef_value
// (coef2_value), a null base means 0.
template <typename T>
struct Epilogue {
  const T* base = nullptr;
  const T* coef = nullptr;
  T coef_value = T(1);
  T* out2 = nullptr;
  const T* coef2 = nullptr;
  T coef2_value = T(1);

  // The same update for the sub-block that starts `off` elements further on.
  __attribute__((always_inline)) Epilogue shifted(int64_t off) const {
    Epilogue e = *this;
    if (e.base) e.base += off;
    if (e.coef) e.coef += off;
    if (e.out2) e.out2 += off;
    if (e.coef2) e.coef2 += off;
    return e;
  }

  // The value stored at element `i` (counted from (0, 0)) for the result `raw`; writes out2[i].
  T one(int64_t i, T raw) const {
    const T r = (coef ? coef[i] : coef_value) * raw;
    const T o = base ? base[i] - r : -r;
    if (out2) out2[i] = (coef2 ? coef2[i] : coef2_value) * o;
    return o;
  }

  // out[i] = one(i, raw[i]) for i < n; raw may be out when base is not.
  void apply(int64_t n, const T* raw, T* out) const {
    for (int64_t i = 0; i < n; ++i) out[i] = one(i, raw[i]);
  }
};

// Register tile: C[MR, NV vectors] (+)= sum_q A_q B_q. The tile stays in registers over the
// whole inner loops (the products are unrolled at compile time so that it can), so each row of
// B is loaded once per MR rows of C.
template <typename T, int VB, int MR, int NV, int NP>
inline void gemm_tile(const Prod<T>* __restrict p, int64_t i0, int64_t j0, T* __restrict C,
                      int64_t ldc, bool accumulate, const Epilogue<T>* epi) {
  using V = typename Vec<T, VB>::type;
  using U = typename Vec<T, VB>::unaligned;
  constexpr int L = Vec<T, VB>::lanes;
  V c[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) c[i][j] = V{};
  for_each_index<NP>([&](auto q) { tile_product<T, VB, MR, NV>(c, p[decltype(q)::value], i0, j0); });
  // C is added after the products (a conditional start value made GCC keep the tile in memory).
  if (accumulate) {
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NV; ++j) c[i][j] += *reinterpret_cast<const U*>(C + i * ldc + j * L);
  }
  if (epi) {
    // A local copy: the stores below could alias *epi, which would reload it for every vector.
    const Epilogue<T> e = epi->shifted(i0 * ldc + j0);
    auto at = [&](const T* base, int i, int j) {
      return V(*reinterpret_cast<const U*>(base + i * ldc + j * L));
    };
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NV; ++j) {
        const V r = e.coef ? at(e.coef, i, j) * c[i][j] : e.coef_value * c[i][j];
        c[i][j] = e.base ? at(e.base, i, j) - r : -r;
        if (e.out2) {
          *reinterpret_cast<U*>(e.out2 + i * ldc + j * L) =
              e.coef2 ? at(e.coef2, i, j) * c[i][j] : e.coef2_value * c[i][j];
        }
      }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) *reinterpret_cast<U*>(C + i * ldc + j * L) = c[i][j];
}

// Columns narrower than one vector: plain loops.
template <typename T, int NP>
inline void gemm_scalar(int64_t M, int64_t N, const Prod<T>* p, int64_t j0, T* C, int64_t ldc,
                        bool accumulate, const Epilogue<T>* epi) {
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      T acc = accumulate ? C[i * ldc + j] : T(0);
      for (int q = 0; q < NP; ++q)
        for (int64_t k = 0; k < p[q].kd; ++k)
          acc += p[q].a[i * p[q].a_rs + k * p[q].a_cs] * p[q].b[k * p[q].ldb + j0 + j];
      C[i * ldc + j] = epi ? epi->one(i * ldc + j0 + j, acc) : acc;
    }
}

// f(std::integral_constant<int, rows>{}) (1 <= rows <= MR <= 12) through one jump table.
#define MAML_EXT_ROWS_CASE(R)                                    \
  case R:                                                        \
    if constexpr (R <= MR) f(std::integral_constant<int, R>{}); \
    break;
template <int MR, typename F>
inline void with_rows(int64_t rows, F&& f) {
  static_assert(MR >= 1 && MR <= 12, "tile heights up to 12 rows");
  switch (rows) {
    MAML_EXT_ROWS_CASE(1) MAML_EXT_ROWS_CASE(2) MAML_EXT_ROWS_CASE(3) MAML_EXT_ROWS_CASE(4)
    MAML_EXT_ROWS_CASE(5) MAML_EXT_ROWS_CASE(6) MAML_EXT_ROWS_CASE(7) MAML_EXT_ROWS_CASE(8)
    MAML_EXT_ROWS_CASE(9) MAML_EXT_ROWS_CASE(10) MAML_EXT_ROWS_CASE(11) MAML_EXT_ROWS_CASE(12)
    default: break;
  }
}
#undef MAML_EXT_ROWS_CASE

// Rows [0, M) for one column block: the fewest tiles of at most MR rows, of equal heights (a
// ragged last tile of one or two rows would stream B once more for almost no work).
template <typename T, int VB, int NV, int NP, int MR>
inline void gemm_rows(int64_t M, const Prod<T>* p, int64_t j0, T* C, int64_t ldc, bool accumulate,
                      const Epilogue<T>* epi) {
  const int64_t tiles = (M + MR - 1) / MR;
  int64_t i = 0;
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t rows = (M - i) / (tiles - t);
    with_rows<MR>(rows, [&](auto r) {
      gemm_tile<T, VB, decltype(r)::value, NV, NP>(p, i, j0, C + i * ldc, ldc, accumulate, epi);
    });
    i += rows;
  }
}

// Tall outputs (more rows than one tile holds, e.g. the K x K-independent weight gradients):
// kMR / 2 rows x 4 vectors, fewer loads per multiply-add than kMR x 2.
constexpr int kMRWide = kMR / 2;

// Columns in blocks of four (tall C) or two vectors, then one vector, then narrower vectors,
// then scalars.
template <typename T, int VB, int NP>
inline void gemm_cols(int64_t M, int64_t N, const Prod<T>* p, int64_t j0, T* C, int64_t ldc,
                      bool accumulate, const Epilogue<T>* epi) {
  constexpr int L = Vec<T, VB>::lanes;
  int64_t j = 0;
  if constexpr (VB == kVectorBytes) {
    if (M > kMR) {
      for (; j + 4 * L <= N; j += 4 * L)
        gemm_rows<T, VB, 4, NP, kMRWide>(M, p, j0 + j, C + j, ldc, accumulate, epi);
    }
    for (; j + 2 * L <= N; j += 2 * L)
      gemm_rows<T, VB, 2, NP, kMR>(M, p, j0 + j, C + j, ldc, accumulate, epi);
  }
  for (; j + L <= N; j += L) gemm_rows<T, VB, 1, NP, kMR>(M, p, j0 + j, C + j, ldc, accumulate, epi);
  if (j == N) return;
  if constexpr (VB / 2 >= 16 && VB / 2 >= static_cast<int>(2 * sizeof(T))) {
    gemm_cols<T, VB / 2, NP>(M, N - j, p, j0 + j, C + j, ldc, accumulate, epi);
  } else {
    gemm_scalar<T, NP>(M, N - j, p, j0 + j, C + j, ldc, accumulate, epi);
  }
}

// C[M, N] (+)= sum_q A_q B_q, C row-major with leading dimension N, then the epilogue if any.
template <typename T, int NP>
inline void gemm_sum(int64_t M, int64_t N, const Prod<T> (&p)[NP], T* C, bool accumulate,
                     const Epilogue<T>* epi = nullptr) {
  bool column_major_a = N == 1 && M > 1;
  for (int q = 0; q < NP; ++q) column_major_a = column_major_a && p[q].a_rs == 1;
  if (column_major_a) {
    // One column (e.g. the weight gradient of a 1-wide input): as C^T[1, M] = sum_q B_q^T A_q^T,
    // same memory, vectorised over M instead of M scalar dot products.
    Prod<T> t[NP];
    for (int q = 0; q < NP; ++q) t[q] = {p[q].b, 0, p[q].ldb, p[q].a, p[q].a_cs, p[q].kd};
    return gemm_cols<T, kVectorBytes, NP>(1, M, t, 0, C, M, accumulate, epi);
  }
  gemm_cols<T, kVectorBytes, NP>(M, N, p, 0, C, N, accumulate, epi);
}

// Products of row-major matrices: A[M, Kd] B[Kd, N] ...
template <typename T>
inline Prod<T> nn(int64_t Kd, const T* A, const T* B, int64_t N) {
  return {A, Kd, 1, B, N, Kd};
}
// ... and A[Kd, M]^T B[Kd, N].
template <typename T>
inline Prod<T> tn(int64_t M, int64_t Kd, const T* A, const T* B, int64_t N) {
  return {A, 1, M, B, N, Kd};
}

// Horizontal sums of four vectors at once: two levels of pairwise shuffle-adds leave one vector
// whose lanes hold partial sums of the four, then a short scalar fold. Much cheaper than four
// separate lane-by-lane reductions, which dominated the dot-product GEMM below.
template <typename T>
struct IntOf;
template <>
struct IntOf<float> {
  using type = int32_t;
};
template <>
struct IntOf<double> {
  using type = int64_t;
};

template <typename T>
struct Reduce4 {
  static constexpr int L = Vec<T, kVectorBytes>::lanes;
  static constexpr int kBlock = L / 4;  // lanes per input after the two pairwise levels
  typedef T V __attribute__((vector_size(kVectorBytes)));
  typedef typename IntOf<T>::type I __attribute__((vector_size(kVectorBytes)));
  I lo[2], hi[2];
  I fold[4];     // lane ^ m for m = kBlock/2, ..., 1: sums each block into its first lane
  int owner[4];  // which input the q-th block of the final vector belongs to

  Reduce4() {
    int ids[4][L];
    for (int n = 0; n < 4; ++n)
      for (int l = 0; l < L; ++l) ids[n][l] = n;
    int count = 4;
    for (int level = 0; level < 2; ++level) {
      const int s = L >> (level + 1);
      int next[2][L];
      for (int l = 0; l < L; ++l) {
        const int b = l / s, o = l % s, blk = 2 * (b / 2);
        lo[level][l] = (b % 2) * L + blk * s + o;
        hi[level][l] = (b % 2) * L + (blk + 1) * s + o;
        for (int p = 0; p < count / 2; ++p) next[p][l] = ids[2 * p + b % 2][blk * s + o];
      }
      count /= 2;
      for (int p = 0; p < count; ++p)
        for (int l = 0; l < L; ++l) ids[p][l] = next[p][l];
    }
    int f = 0;
    for (int m = kBlock / 2; m >= 1; m /= 2, ++f)
      for (int l = 0; l < L; ++l) fold[f][l] = l ^ m;
    for (int q = 0; q < 4; ++q) owner[q] = ids[0][q * kBlock];
  }

  // sums[n] += the lanes of a[n], n = 0..3.
  void operator()(const V* a, T* sums) const {
    const V c0 = __builtin_shuffle(a[0], a[1], lo[0]) + __builtin_shuffle(a[0], a[1], hi[0]);
    const V c1 = __builtin_shuffle(a[2], a[3], lo[0]) + __builtin_shuffle(a[2], a[3], hi[0]);
    V d = __builtin_shuffle(c0, c1, lo[1]) + __builtin_shuffle(c0, c1, hi[1]);
    int f = 0;
    for (int m = kBlock / 2; m >= 1; m /= 2, ++f) d += __builtin_shuffle(d, fold[f]);
    for (int q = 0; q < 4; ++q) sums[owner[q]] += d[q * kBlock];
  }
};

template <typename T>
const Reduce4<T>& reduce4() {
  static const Reduce4<T> r;
  return r;
}

// Without this, the compiler folds a loaded vector into each of its NJ multiply-adds as a memory
// operand, which loads it NJ times: the dot-product tile then waits on the load ports.
template <typename V>
inline void keep_in_register(V& v) {
#if defined(__x86_64__) && defined(__GNUC__)
  asm("" : "+v"(v));
#else
  (void)v;
#endif
}

// One product of a dot-product GEMM: C(i, j) += sum_k a[i * lda + k] b[j * ldb + k].
template <typename T>
struct NtProd {
  const T* a;
  int64_t lda;
  const T* b;
  int64_t ldb;
  int64_t kd;
};

// C[MR, NJ] (+)= sum_q A_q B_q^T by dot products along the contiguous k of both, so h W^T
// needs no transposed copy of W. All rows of a task fit one tile (MR up to kMR), so each row
// of B is streamed from L2 once; the MR x NJ accumulators are reduced four at a time.
template <typename T, int MR, int NJ, int NP>
inline void gemm_nt_tile(const NtProd<T>* __restrict p, int64_t i0, int64_t j0, T* __restrict C,
                         int64_t ldc, bool accumulate) {
  using V = typename Vec<T, kVectorBytes>::type;
  using U = typename Vec<T, kVectorBytes>::unaligned;
  constexpr int L = Vec<T, kVectorBytes>::lanes;
  constexpr int N = MR * NJ;
  V acc[N];
  for (int n = 0; n < N; ++n) acc[n] = V{};
  for (int q = 0; q < NP; ++q) {
    const int64_t lda = p[q].lda, ldb = p[q].ldb, kd = p[q].kd;
    const T* __restrict A = p[q].a + i0 * lda;
    const T* __restrict B = p[q].b + j0 * ldb;
    for (int64_t k = 0; k + L <= kd; k += L) {
      V b[NJ];
      for (int j = 0; j < NJ; ++j) b[j] = *reinterpret_cast<const U*>(B + j * ldb + k);
      for (int i = 0; i < MR; ++i) {
        V a = *reinterpret_cast<const U*>(A + i * lda + k);
        keep_in_register(a);
        for (int j = 0; j < NJ; ++j) acc[i * NJ + j] += a * b[j];
      }
    }
  }
  T sums[N];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NJ; ++j) sums[i * NJ + j] = accumulate ? C[i * ldc + j] : T(0);
  int n = 0;
  if constexpr (L >= 4) {
    const Reduce4<T>& reduce = reduce4<T>();
    for (; n + 4 <= N; n += 4) reduce(acc + n, sums + n);
  }
  for (; n < N; ++n)
    for (int l = 0; l < L; ++l) sums[n] += acc[n][l];
  for (int q = 0; q < NP; ++q) {
    const int64_t lda = p[q].lda, ldb = p[q].ldb, kd = p[q].kd;
    const int64_t k0 = kd - kd % L;
    if (k0 == kd) continue;
    const T* A = p[q].a + i0 * lda;
    const T* B = p[q].b + j0 * ldb;
    for (int64_t k = k0; k < kd; ++k)  // k outermost: MR x NJ independent sums
      for (int i = 0; i < MR; ++i)
        for (int j = 0; j < NJ; ++j) sums[i * NJ + j] += A[i * lda + k] * B[j * ldb + k];
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NJ; ++j) C[i * ldc + j] = sums[i * NJ + j];
}

// C[M, N] (+)= sum_q A_q[M, Kd] B_q[N, Kd]^T, row-major, ldc = N.
template <typename T, int NP>
inline void gemm_nt_dot(int64_t M, int64_t N, const NtProd<T> (&p)[NP], T* C, bool accumulate) {
  constexpr int NJ = 2;  // kMR x 2 accumulators + 3 operands fit the register file
  const int64_t tiles = (M + kMR - 1) / kMR;
  int64_t i = 0;
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t rows = (M - i) / (tiles - t);
    with_rows<kMR>(rows, [&](auto r) {
      constexpr int R = decltype(r)::value;
      int64_t j = 0;
      for (; j + NJ <= N; j += NJ) gemm_nt_tile<T, R, NJ, NP>(p, i, j, C + i * N + j, N, accumulate);
      if (j < N) gemm_nt_tile<T, R, 1, NP>(p, i, j, C + i * N + j, N, accumulate);
    });
    i += rows;
  }
}

// B x B blocks transposed in registers (B = lanes of a 16-byte vector: 4 floats, 2 doubles),
// the ragged edges element by element.
template <typename T>
inline void transpose_block(const T* A, int64_t lda, T* At, int64_t ldat) {
  typedef typename IntOf<T>::type I16 __attribute__((vector_size(16)));
  using V = typename Vec<T, 16>::type;
  using U = typename Vec<T, 16>::unaligned;
  if constexpr (Vec<T, 16>::lanes == 4) {
    const V r0 = *reinterpret_cast<const U*>(A), r1 = *reinterpret_cast<const U*>(A + lda);
    const V r2 = *reinterpret_cast<const U*>(A + 2 * lda), r3 = *reinterpret_cast<const U*>(A + 3 * lda);
    const V t0 = __builtin_shuffle(r0, r1, I16{0, 4, 1, 5}), t1 = __builtin_shuffle(r0, r1, I16{2, 6, 3, 7});
    const V t2 = __builtin_shuffle(r2, r3, I16{0, 4, 1, 5}), t3 = __builtin_shuffle(r2, r3, I16{2, 6, 3, 7});
    *reinterpret_cast<U*>(At) = __builtin_shuffle(t0, t2, I16{0, 1, 4, 5});
    *reinterpret_cast<U*>(At + ldat) = __builtin_shuffle(t0, t2, I16{2, 3, 6, 7});
    *reinterpret_cast<U*>(At + 2 * ldat) = __builtin_shuffle(t1, t3, I16{0, 1, 4, 5});
    *reinterpret_cast<U*>(At + 3 * ldat) = __builtin_shuffle(t1, t3, I16{2, 3, 6, 7});
  } else {
    const V r0 = *reinterpret_cast<const U*>(A), r1 = *reinterpret_cast<const U*>(A + lda);
    *reinterpret_cast<U*>(At) = __builtin_shuffle(r0, r1, I16{0, 2});
    *reinterpret_cast<U*>(At + ldat) = __builtin_shuffle(r0, r1, I16{1, 3});
  }
}

template <typename T>
inline void transpose(int64_t rows, int64_t cols, const T* __restrict A, T* __restrict At) {
  constexpr int64_t B = Vec<T, 16>::lanes;
  const int64_t rb = rows - rows % B, cb = cols - cols % B;
  for (int64_t r = 0; r < rb; r += B)
    for (int64_t c = 0; c < cb; c += B) transpose_block(A + r * cols + c, cols, At + c * rows + r, rows);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = (r < rb ? cb : 0); c < cols; ++c) At[c * rows + r] = A[r * cols + c];
}

// Whether gemm_nt takes the dot-product path (else it transposes B into scratch first).
template <typename T>
constexpr bool nt_by_dots(int64_t Kd) {
  return Kd * static_cast<int64_t>(sizeof(T)) >= 512;
}

// C[M, N] (+)= sum_q A_q[M, Kd] B_q[N, Kd]^T, all row-major and contiguous. Long rows, or a
// single column: dot products (no copy of B). One-element rows: B^T has the layout of B, so
// the tiled GEMM reads B as it is. Other short rows, where the dot products' horizontal sums
// and tails would dominate: each B_q transposed into `scratch` (NP * N * Kd elements), then the
// tiled GEMM.
template <typename T, int NP>
inline void gemm_nt_sum(int64_t M, int64_t N, int64_t Kd, const T* const (&A)[NP],
                        const T* const (&B)[NP], T* C, bool accumulate, T* scratch) {
  if (Kd == 1 && N > 1) {
    Prod<T> p[NP];
    for (int q = 0; q < NP; ++q) p[q] = nn(Kd, A[q], B[q], N);
    gemm_sum<T, NP>(M, N, p, C, accumulate);
  } else if (nt_by_dots<T>(Kd) || N == 1) {
    NtProd<T> p[NP];
    for (int q = 0; q < NP; ++q) p[q] = {A[q], Kd, B[q], Kd, Kd};
    gemm_nt_dot<T, NP>(M, N, p, C, accumulate);
  } else {
    Prod<T> p[NP];
    for (int q = 0; q < NP; ++q) {
      T* bt = scratch + q * N * Kd;
      transpose(N, Kd, B[q], bt);
      p[q] = nn(Kd, A[q], bt, N);
    }
    gemm_sum<T, NP>(M, N, p, C, accumulate);
  }
}

}  // namespace
}  // namespace maml_ext::mlp::MAML_EXT_CPU_CAPABILITY
