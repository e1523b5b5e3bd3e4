// zerolevel hash-grid encoding: CPU kernel (float32). Built and loaded by zerolevel/fields/hashgrid_kernel.py.
// Same arithmetic as the torch reference there: u = clamp((x + 1) * 0.5, 0, 1), pos = u * N,
// cell = min(floor(pos), N - 1), t = pos - cell, w = (a_x * a_y) * a_z with a = (1 - t, t).
// Levels are processed one at a time (a level's table slice stays in cache); points are handled in
// blocks of BLOCK: locate all (and prefetch their corner rows), then gather / scatter.
#include <algorithm>
#include <cstdint>
#include <cstring>

namespace {

constexpr uint32_t PRIME_Y = 2654435761u, PRIME_Z = 805459861u;
constexpr int BLOCK = 16;

typedef float v4f __attribute__((vector_size(16)));
template <int F> struct Vec { typedef float type __attribute__((vector_size(sizeof(float) * F))); };
template <int F> inline typename Vec<F>::type load(const float* p) {
  typename Vec<F>::type v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <int F> inline void store(float* p, typename Vec<F>::type v) { std::memcpy(p, &v, sizeof(v)); }

struct Grid {
  const int32_t* res;     // (L,) cells per axis
  const int64_t* offset;  // (L + 1,) first row of each level
  const int32_t* hashed;  // (L,) 1: spatial hash, 0: dense index
  int L;
  uint32_t mask;          // table size - 1
  int64_t rows(int l) const { return offset[l + 1] - offset[l]; }
};

// A point's cell at one level; corner k has bit 0: +x, bit 1: +y, bit 2: +z.
struct Cell {
  uint32_t idx[8];  // row of corner k inside the level's slice
  float w[8];       // trilinear weight of corner k
  float t[3];       // position inside the cell, in [0, 1]
};

inline uint32_t row(const Cell& c, int k) { return c.idx[k]; }
inline float weight(const Cell& c, int k) { return c.w[k]; }

// 1 where the coordinate lies in [-1, 1] (not clamped: the features depend on it), else 0
inline void inside(const float* xp, float m[3]) {
  for (int d = 0; d < 3; ++d) {
    const float u = (xp[d] + 1.0f) * 0.5f;
    m[d] = (u >= 0.0f && u <= 1.0f) ? 1.0f : 0.0f;
  }
}

inline void locate(const float* xp, int res, int hashed, uint32_t mask, Cell& c) {
  uint32_t i0[3];
  float a0[3];
  for (int d = 0; d < 3; ++d) {
    float u = (xp[d] + 1.0f) * 0.5f;
    if (!(u >= 0.0f)) u = 0.0f;  // also maps NaN to 0: never an out-of-range row
    if (!(u <= 1.0f)) u = 1.0f;
    const float p = u * (float)res;
    int i = (int)p;  // p >= 0: truncation is floor
    if (i > res - 1) i = res - 1;
    i0[d] = (uint32_t)i;
    c.t[d] = p - (float)i;
    a0[d] = 1.0f - c.t[d];
  }
  // weights (a_x * a_y) * a_z, the reference's order of products
  const v4f ax = {a0[0], c.t[0], a0[0], c.t[0]};
  const v4f ay = {a0[1], a0[1], c.t[1], c.t[1]};
  const v4f axy = ax * ay;
  const v4f wlo = axy * a0[2], whi = axy * c.t[2];
  std::memcpy(c.w, &wlo, sizeof(wlo));
  std::memcpy(c.w + 4, &whi, sizeof(whi));
  if (hashed) {
    const uint32_t hy0 = i0[1] * PRIME_Y, hy1 = hy0 + PRIME_Y;
    const uint32_t hz0 = i0[2] * PRIME_Z, hz1 = hz0 + PRIME_Z;
    const uint32_t yz[4] = {hy0 ^ hz0, hy1 ^ hz0, hy0 ^ hz1, hy1 ^ hz1};
    for (int j = 0; j < 4; ++j) {
      c.idx[2 * j] = (i0[0] ^ yz[j]) & mask;
      c.idx[2 * j + 1] = ((i0[0] + 1u) ^ yz[j]) & mask;
    }
  } else {
    const uint32_t s = (uint32_t)res + 1u, s2 = s * s;
    const uint32_t base = i0[0] + (i0[1] + i0[2] * s) * s;
    const uint32_t step[8] = {0u, 1u, s, s + 1u, s2, s2 + 1u, s2 + s, s2 + s + 1u};
    for (int k = 0; k < 8; ++k) c.idx[k] = base + step[k];
  }
}

// d w_k / d t
inline void dweight(const Cell& c, int k, float dw[3]) {
  const int b0 = k & 1, b1 = (k >> 1) & 1, b2 = k >> 2;
  const float A0 = b0 ? c.t[0] : 1.0f - c.t[0], A1 = b1 ? c.t[1] : 1.0f - c.t[1],
              A2 = b2 ? c.t[2] : 1.0f - c.t[2];
  dw[0] = (b0 ? 1.0f : -1.0f) * A1 * A2;
  dw[1] = A0 * (b1 ? 1.0f : -1.0f) * A2;
  dw[2] = A0 * A1 * (b2 ? 1.0f : -1.0f);
}

// H_k v, H_k the Hessian of w_k w.r.t. t (zero diagonal: w is linear in each t_d)
inline void hessian_times(const Cell& c, int k, const float v[3], float out[3]) {
  const int b0 = k & 1, b1 = (k >> 1) & 1, b2 = k >> 2;
  const float s0 = b0 ? 1.0f : -1.0f, s1 = b1 ? 1.0f : -1.0f, s2 = b2 ? 1.0f : -1.0f;
  const float A0 = b0 ? c.t[0] : 1.0f - c.t[0], A1 = b1 ? c.t[1] : 1.0f - c.t[1],
              A2 = b2 ? c.t[2] : 1.0f - c.t[2];
  out[0] = s0 * (s1 * A2 * v[1] + s2 * A1 * v[2]);
  out[1] = s1 * (s0 * A2 * v[0] + s2 * A0 * v[2]);
  out[2] = s2 * (s0 * A1 * v[0] + s1 * A0 * v[1]);
}

// Locate points lo..lo+cnt at one level and prefetch their corner rows of `rows` (for writing if W).
template <int F, bool W>
inline void locate_block(const float* x, int64_t lo, int cnt, int res, int hashed, uint32_t mask,
                         const float* rows, Cell* cs) {
  for (int i = 0; i < cnt; ++i) {
    locate(x + 3 * (lo + i), res, hashed, mask, cs[i]);
    for (int k = 0; k < 8; ++k) __builtin_prefetch(rows + (int64_t)row(cs[i], k) * F, W ? 1 : 0);
  }
}

// Features: out (n, L*F). Points in parallel, level after level.
template <int F>
void forward(const float* x, int64_t n, const float* table, float* out, const Grid& g, int nt) {
  typedef typename Vec<F>::type vf;
  const int64_t LF = (int64_t)g.L * F, nb = (n + BLOCK - 1) / BLOCK;
#pragma omp parallel num_threads(nt) if (n > 4096)
  for (int l = 0; l < g.L; ++l) {
    const float* T = table + g.offset[l] * F;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t lo = b * BLOCK;
      const int cnt = (int)std::min<int64_t>(BLOCK, n - lo);
      Cell cs[BLOCK];
      locate_block<F, false>(x, lo, cnt, g.res[l], g.hashed[l], g.mask, T, cs);
      for (int i = 0; i < cnt; ++i) {
        const Cell& c = cs[i];
        vf acc = load<F>(T + (int64_t)row(c, 0) * F) * weight(c, 0);
        for (int k = 1; k < 8; ++k) acc += load<F>(T + (int64_t)row(c, k) * F) * weight(c, k);
        store<F>(out + (lo + i) * LF + l * F, acc);
      }
    }
  }
}

// Gradient w.r.t. the points only: gx (n, 3) = sum over levels of (d features / d x)^T gy.
// Points in parallel (each thread owns its points), level after level.
template <int F>
void backward_points(const float* x, int64_t n, const float* table, const float* gy, float* gx,
                     const Grid& g, int nt) {
  typedef typename Vec<F>::type vf;
  const int64_t LF = (int64_t)g.L * F, nb = (n + BLOCK - 1) / BLOCK;
  std::memset(gx, 0, sizeof(float) * 3 * n);
#pragma omp parallel num_threads(nt) if (n > 4096)
  for (int l = 0; l < g.L; ++l) {
    const float* T = table + g.offset[l] * F;
    const float scale = 0.5f * (float)g.res[l];  // d t / d x
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t lo = b * BLOCK;
      const int cnt = (int)std::min<int64_t>(BLOCK, n - lo);
      Cell cs[BLOCK];
      locate_block<F, false>(x, lo, cnt, g.res[l], g.hashed[l], g.mask, T, cs);
      for (int i = 0; i < cnt; ++i) {
        const Cell& c = cs[i];
        const int64_t p = lo + i;
        const vf gv = load<F>(gy + p * LF + l * F);
        float S[8];  // gy . features of corner k
        for (int k = 0; k < 8; ++k) {
          const vf prod = load<F>(T + (int64_t)row(c, k) * F) * gv;
          float s = 0.0f;
          for (int f = 0; f < F; ++f) s += prod[f];
          S[k] = s;
        }
        // d/dt_d of sum_k w_k S_k: differences of S along axis d, weighted by the other two axes
        const float x0 = 1.0f - c.t[0], x1 = c.t[0], y0 = 1.0f - c.t[1], y1 = c.t[1];
        const float z0 = 1.0f - c.t[2], z1 = c.t[2];
        const float dx = y0 * z0 * (S[1] - S[0]) + y1 * z0 * (S[3] - S[2]) + y0 * z1 * (S[5] - S[4]) +
                         y1 * z1 * (S[7] - S[6]);
        const float dy = x0 * z0 * (S[2] - S[0]) + x1 * z0 * (S[3] - S[1]) + x0 * z1 * (S[6] - S[4]) +
                         x1 * z1 * (S[7] - S[5]);
        const float dz = x0 * y0 * (S[4] - S[0]) + x1 * y0 * (S[5] - S[1]) + x0 * y1 * (S[6] - S[2]) +
                         x1 * y1 * (S[7] - S[3]);
        float m[3];
        inside(x + 3 * p, m);
        gx[3 * p + 0] += scale * m[0] * dx;
        gx[3 * p + 1] += scale * m[1] * dy;
        gx[3 * p + 2] += scale * m[2] * dz;
      }
    }
  }
}

// Gradient w.r.t. the table: scatter-add of w * gy. Each thread owns whole levels (disjoint table
// slices): no atomics, and the slice a thread works on stays in its cache. (Computing the points'
// gradient in the same pass, with per-thread partial sums, measured ~2x slower than two passes.)
template <int F>
void backward_table(const float* x, int64_t n, const float* gy, float* gtable, const Grid& g, int nt) {
  typedef typename Vec<F>::type vf;
  const int64_t LF = (int64_t)g.L * F;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int j = 0; j < g.L; ++j) {
    const int l = g.L - 1 - j;  // finest (slowest) levels first: better balance
    float* G = gtable + g.offset[l] * F;
    std::memset(G, 0, sizeof(float) * F * g.rows(l));
    Cell cs[BLOCK];
    for (int64_t lo = 0; lo < n; lo += BLOCK) {
      const int cnt = (int)std::min<int64_t>(BLOCK, n - lo);
      locate_block<F, true>(x, lo, cnt, g.res[l], g.hashed[l], g.mask, G, cs);
      for (int i = 0; i < cnt; ++i) {
        const Cell& c = cs[i];
        const vf gv = load<F>(gy + (lo + i) * LF + l * F);
        for (int k = 0; k < 8; ++k) {
          float* e = G + (int64_t)row(c, k) * F;
          store<F>(e, load<F>(e) + gv * weight(c, k));
        }
      }
    }
  }
}

// Second order. Given ggx (n, 3), the gradient w.r.t. gx = backward_points(x, table, gy):
//   g_gy (n, L*F) = d<ggx, gx>/d gy,  gtable (rows, F) = d<ggx, gx>/d table,  gx2 (n, 3) = d<ggx, gx>/d x.
template <int F>
void backward_backward(const float* x, int64_t n, const float* table, const float* gy, const float* ggx,
                       float* g_gy, float* gtable, float* gx2, const Grid& g, int nt) {
  typedef typename Vec<F>::type vf;
  const int64_t LF = (int64_t)g.L * F, nb = (n + BLOCK - 1) / BLOCK;
  if (g_gy || gx2) {
    if (gx2) std::memset(gx2, 0, sizeof(float) * 3 * n);
#pragma omp parallel num_threads(nt) if (n > 4096)
    for (int l = 0; l < g.L; ++l) {
      const float* T = table + g.offset[l] * F;
      const float scale = 0.5f * (float)g.res[l];
#pragma omp for schedule(static)
      for (int64_t b = 0; b < nb; ++b) {
        const int64_t lo = b * BLOCK;
        const int cnt = (int)std::min<int64_t>(BLOCK, n - lo);
        Cell cs[BLOCK];
        locate_block<F, false>(x, lo, cnt, g.res[l], g.hashed[l], g.mask, T, cs);
        for (int i = 0; i < cnt; ++i) {
          const Cell& c = cs[i];
          const int64_t p = lo + i;
          float v[3];
          float m[3];
          inside(x + 3 * p, m);
          for (int d = 0; d < 3; ++d) v[d] = ggx[3 * p + d] * m[d] * scale;
          const vf gv = load<F>(gy + p * LF + l * F);
          vf acc = {};
          float h3[3] = {0.0f, 0.0f, 0.0f};
          for (int k = 0; k < 8; ++k) {
            const vf e = load<F>(T + (int64_t)row(c, k) * F);
            if (g_gy) {
              float dw[3];
              dweight(c, k, dw);
              acc += e * (dw[0] * v[0] + dw[1] * v[1] + dw[2] * v[2]);
            }
            if (gx2) {
              const vf prod = e * gv;
              float s = 0.0f;
              for (int f = 0; f < F; ++f) s += prod[f];
              float hv[3];
              hessian_times(c, k, v, hv);
              for (int d = 0; d < 3; ++d) h3[d] += s * hv[d];
            }
          }
          if (g_gy) store<F>(g_gy + p * LF + l * F, acc);
          if (gx2)
            for (int d = 0; d < 3; ++d) gx2[3 * p + d] += scale * m[d] * h3[d];
        }
      }
    }
  }
  if (gtable) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
    for (int j = 0; j < g.L; ++j) {
      const int l = g.L - 1 - j;
      float* G = gtable + g.offset[l] * F;
      std::memset(G, 0, sizeof(float) * F * g.rows(l));
      const float scale = 0.5f * (float)g.res[l];
      Cell cs[BLOCK];
      for (int64_t lo = 0; lo < n; lo += BLOCK) {
        const int cnt = (int)std::min<int64_t>(BLOCK, n - lo);
        locate_block<F, true>(x, lo, cnt, g.res[l], g.hashed[l], g.mask, G, cs);
        for (int i = 0; i < cnt; ++i) {
          const Cell& c = cs[i];
          const int64_t p = lo + i;
          float v[3];
          float m[3];
          inside(x + 3 * p, m);
          for (int d = 0; d < 3; ++d) v[d] = ggx[3 * p + d] * m[d] * scale;
          const vf gv = load<F>(gy + p * LF + l * F);
          for (int k = 0; k < 8; ++k) {
            float dw[3];
            dweight(c, k, dw);
            float* e = G + (int64_t)row(c, k) * F;
            store<F>(e, load<F>(e) + gv * (dw[0] * v[0] + dw[1] * v[1] + dw[2] * v[2]));
          }
        }
      }
    }
  }
}

}  // namespace

#define ZL_DISPATCH(F_, CALL)                       \
  switch (F_) {                                     \
    case 1: { constexpr int FF = 1; CALL; break; }  \
    case 2: { constexpr int FF = 2; CALL; break; }  \
    case 4: { constexpr int FF = 4; CALL; break; }  \
    case 8: { constexpr int FF = 8; CALL; break; }  \
    default: return -1;                             \
  }

extern "C" {

int zl_hashgrid_forward(const float* x, int64_t n, const float* table, float* out, const int32_t* res,
                        const int64_t* offset, const int32_t* hashed, int L, int F, uint32_t mask, int nt) {
  const Grid g{res, offset, hashed, L, mask};
  ZL_DISPATCH(F, forward<FF>(x, n, table, out, g, nt))
  return 0;
}

// gtable and/or gx may be null; the others are fully overwritten.
int zl_hashgrid_backward(const float* x, int64_t n, const float* table, const float* gy, float* gtable,
                         float* gx, const int32_t* res, const int64_t* offset, const int32_t* hashed,
                         int L, int F, uint32_t mask, int nt) {
  const Grid g{res, offset, hashed, L, mask};
  if (gtable) {
    ZL_DISPATCH(F, backward_table<FF>(x, n, gy, gtable, g, nt))
  }
  if (gx) {
    ZL_DISPATCH(F, backward_points<FF>(x, n, table, gy, gx, g, nt))
  }
  return 0;
}

// g_gy, gtable and gx2 may be null; the others are fully overwritten.
int zl_hashgrid_backward_backward(const float* x, int64_t n, const float* table, const float* gy,
                                  const float* ggx, float* g_gy, float* gtable, float* gx2,
                                  const int32_t* res, const int64_t* offset, const int32_t* hashed,
                                  int L, int F, uint32_t mask, int nt) {
  const Grid g{res, offset, hashed, L, mask};
  ZL_DISPATCH(F, backward_backward<FF>(x, n, table, gy, ggx, g_gy, gtable, gx2, g, nt))
  return 0;
}

}  // extern "C"
