// The optimizer's streaming passes, compiled once per instruction set (see isa_variants.h): Σx²,
// AdamW, the decoder-gradient projection, row normalisation, and the two passes of the fused step.

static double sumSquares(const float* a, size_t n) {
  double acc[32];
  for (int l = 0; l < 32; l++) acc[l] = 0.0;
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
#pragma GCC unroll 32
    for (int l = 0; l < 32; l++) {
      const double x = a[i + l];
      acc[l] += x * x;
    }
  }
  for (int l = 0; i < n; i++, l++) acc[l] += (double)a[i] * a[i];
  for (int w = 16; w >= 1; w /= 2)
    for (int l = 0; l < w; l++) acc[l] += acc[l + w];
  return acc[0];
}

// coef: gradScale, beta1, 1−beta1, beta2, 1−beta2, 1/c1, 1/c2, lr, eps, shrink
static void adamw(float* __restrict p, float* __restrict g, float* __restrict m, float* __restrict v, size_t n,
                  const float* coef) {
  const float gs = coef[0], b1 = coef[1], ob1 = coef[2], b2 = coef[3], ob2 = coef[4], ic1 = coef[5], ic2 = coef[6],
              lr = coef[7], eps = coef[8], shrink = coef[9];
  for (size_t i = 0; i < n; i++) {
    const float gg = g[i] * gs;
    const float mm = b1 * m[i] + ob1 * gg;
    const float vv = b2 * v[i] + ob2 * (gg * gg);
    m[i] = mm;
    v[i] = vv;
    const float mh = mm * ic1;
    const float vh = vv * ic2;
    p[i] = p[i] * shrink - (lr * mh) / (__builtin_sqrtf(vh) + eps);
    g[i] = 0.0f;
  }
}

static inline void rowStats(const float* __restrict w, const float* __restrict g, int d, double* dotOut, double* nnOut) {
  V d0 = vzero(), d1 = vzero(), n0 = vzero(), n1 = vzero();
  int i = 0;
  for (; i + 2 * VL <= d; i += 2 * VL) {
    const V w0 = vloadu(w + i), w1 = vloadu(w + i + VL);
    d0 = vfma(w0, vloadu(g + i), d0);
    d1 = vfma(w1, vloadu(g + i + VL), d1);
    n0 = vfma(w0, w0, n0);
    n1 = vfma(w1, w1, n1);
  }
  double sd = hsum(vadd(d0, d1)), sn = hsum(vadd(n0, n1));
  for (; i < d; i++) {
    sd += (double)w[i] * g[i];
    sn += (double)w[i] * w[i];
  }
  *dotOut = sd;
  *nnOut = sn;
}

static void projectRows(const float* W, float* gW, int r0, int r1, int d) {
  for (int r = r0; r < r1; r++) {
    const float* __restrict w = W + (int64_t)r * d;
    float* __restrict g = gW + (int64_t)r * d;
    double dt, nn;
    rowStats(w, g, d, &dt, &nn);
    if (nn == 0) continue;
    const float c = (float)(dt / nn);
    for (int i = 0; i < d; i++) g[i] -= c * w[i];
  }
}

static void normalizeRows(float* W, int r0, int r1, int d) {
  for (int r = r0; r < r1; r++) {
    float* __restrict w = W + (int64_t)r * d;
    double dt, nn;
    rowStats(w, w, d, &dt, &nn);
    if (nn == 0) continue;
    const float inv = (float)(1.0 / __builtin_sqrt(nn));
    for (int i = 0; i < d; i++) w[i] *= inv;
  }
}

// ----------------------------------------------------------------- the fused optimizer step

// Pass 1 for W_dec rows [r0, r1): c[r] = (w·g)/(w·w) (0 for a zero row: the projection is skipped)
// and the return value Σ_rows Σ_i (g_i − c·w_i)² accumulated in double, the projected gradient
// rounded to float exactly as projectRows writes it. W and gW are only read: pass 2 recomputes the
// projected gradient from c while the row is in cache.
static double projectRowsNorm(const float* W, const float* gW, float* cOut, int r0, int r1, int d) {
  double acc[16];
  for (int l = 0; l < 16; l++) acc[l] = 0.0;
  for (int r = r0; r < r1; r++) {
    const float* __restrict w = W + (int64_t)r * d;
    const float* __restrict g = gW + (int64_t)r * d;
    double dt, nn;
    rowStats(w, g, d, &dt, &nn);
    const float c = nn == 0 ? 0.0f : (float)(dt / nn);
    cOut[r] = c;
    int i = 0;
    for (; i + 16 <= d; i += 16) {
#pragma GCC unroll 16
      for (int l = 0; l < 16; l++) {
        const double x = (float)(g[i + l] - c * w[i + l]);
        acc[l] += x * x;
      }
    }
    for (int l = 0; i < d; i++, l++) {
      const double x = (float)(g[i] - c * w[i]);
      acc[l] += x * x;
    }
  }
  for (int w = 8; w >= 1; w /= 2)
    for (int l = 0; l < w; l++) acc[l] += acc[l + w];
  return acc[0];
}

// Pass 2 for W_dec rows [r0, r1): the AdamW step (coef as adamw's) on the projected gradient
// g − c[r]·w, the gradient zeroed, then the row renormalised to unit norm while it is in cache.
static void adamwRowsNormalize(float* W, float* gW, float* mW, float* vW, const float* cRow, int r0, int r1, int d,
                               const float* coef) {
  const float gs = coef[0], b1 = coef[1], ob1 = coef[2], b2 = coef[3], ob2 = coef[4], ic1 = coef[5], ic2 = coef[6],
              lr = coef[7], eps = coef[8], shrink = coef[9];
  for (int r = r0; r < r1; r++) {
    float* __restrict p = W + (int64_t)r * d;
    float* __restrict g = gW + (int64_t)r * d;
    float* __restrict m = mW + (int64_t)r * d;
    float* __restrict v = vW + (int64_t)r * d;
    const float c = cRow[r];
    for (int i = 0; i < d; i++) {
      const float gp = g[i] - c * p[i];
      const float gg = gp * gs;
      const float mm = b1 * m[i] + ob1 * gg;
      const float vv = b2 * v[i] + ob2 * (gg * gg);
      m[i] = mm;
      v[i] = vv;
      const float mh = mm * ic1;
      const float vh = vv * ic2;
      p[i] = p[i] * shrink - (lr * mh) / (__builtin_sqrtf(vh) + eps);
      g[i] = 0.0f;
    }
    double dt, nn;
    rowStats(p, p, d, &dt, &nn);
    if (nn == 0) continue;
    const float inv = (float)(1.0 / __builtin_sqrt(nn));
    for (int i = 0; i < d; i++) p[i] *= inv;
  }
}

extern const OptimizerOps kOptimizer;
const OptimizerOps kOptimizer = {sumSquares, adamw, projectRows, normalizeRows, projectRowsNorm, adamwRowsNormalize};
