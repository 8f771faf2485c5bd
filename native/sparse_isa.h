// The SAE's sparse passes over the codes, compiled once per instruction set (see isa_variants.h):
// decode by token, decode backward and encoder backward by feature, with software prefetching of
// the rows the next entries will touch.

// dz = Σ x[i]·w[i] and, in the same pass over x, g[i] += a·x[i].
static inline float dotAxpy(const float* __restrict x, const float* __restrict w, float* __restrict g, float a, int d) {
  V s0 = vzero(), s1 = vzero(), s2 = vzero(), s3 = vzero();
  const V av = vset1(a);
  int i = 0;
  for (; i + 4 * VL <= d; i += 4 * VL) {
    const V x0 = vloadu(x + i), x1 = vloadu(x + i + VL), x2 = vloadu(x + i + 2 * VL), x3 = vloadu(x + i + 3 * VL);
    s0 = vfma(x0, vloadu(w + i), s0);
    s1 = vfma(x1, vloadu(w + i + VL), s1);
    s2 = vfma(x2, vloadu(w + i + 2 * VL), s2);
    s3 = vfma(x3, vloadu(w + i + 3 * VL), s3);
    vstoreu(g + i, vfma(av, x0, vloadu(g + i)));
    vstoreu(g + i + VL, vfma(av, x1, vloadu(g + i + VL)));
    vstoreu(g + i + 2 * VL, vfma(av, x2, vloadu(g + i + 2 * VL)));
    vstoreu(g + i + 3 * VL, vfma(av, x3, vloadu(g + i + 3 * VL)));
  }
  for (; i + VL <= d; i += VL) {
    const V x0 = vloadu(x + i);
    s0 = vfma(x0, vloadu(w + i), s0);
    vstoreu(g + i, vfma(av, x0, vloadu(g + i)));
  }
  float r = hsum(vadd(vadd(s0, s1), vadd(s2, s3)));
  for (; i < d; i++) {
    r += x[i] * w[i];
    g[i] += a * x[i];
  }
  return r;
}

// Rows that a sparse loop will need soon: the next few into L1, further ones into L2/L3 (the L1
// miss queue is short; without the far prefetches these loops are latency-bound).
constexpr int kPfNear = 2;
constexpr int kPfFar = 8;
static inline void prefetchRow(const float* p, int d) {
  const char* c = (const char*)p;
  for (int i = 0; i < d * 4; i += 64) prefetchL1(c + i);
}
static inline void prefetchFar(const float* p, int d) {
  const char* c = (const char*)p;
  for (int i = 0; i < d * 4; i += 64) prefetchL3(c + i);
}

static inline void axpy(float* __restrict o, const float* __restrict w, float a, int d) {
  for (int i = 0; i < d; i++) o[i] += a * w[i];
}

// out[b] = bias + Σ_e value[e]·Wdec[index[e]] for tokens [b0, b1).
static void decodeRows(const float* Wdec, const float* bias, const int32_t* rowPtr, const int32_t* index,
                       const float* value, int b0, int b1, int d, float* out) {
  for (int b = b0; b < b1; b++) {
    float* __restrict o = out + (int64_t)b * d;
    if (bias) {
      for (int i = 0; i < d; i++) o[i] = bias[i];
    } else {
      for (int i = 0; i < d; i++) o[i] = 0.0f;
    }
    const int e1 = rowPtr[b + 1];
    for (int e = rowPtr[b]; e < e1; e++) {
      if (e + kPfFar < e1) prefetchFar(Wdec + (int64_t)index[e + kPfFar] * d, d);
      if (e + kPfNear < e1) prefetchRow(Wdec + (int64_t)index[e + kPfNear] * d, d);
      axpy(o, Wdec + (int64_t)index[e] * d, value[e], d);
    }
  }
}

// Features [j0, j1): gWdec[j] += Σ z·dOut[b], dz[e] = dOut[b]·Wdec[j], entries in token order.
static void decodeBackwardCols(const float* Wdec, const int32_t* colPtr, const int32_t* colEnt, const int32_t* colTok,
                               const float* value, const float* dOut, int j0, int j1, int d, float* gWdec, float* dz) {
  int next = j0;
  for (int j = j0; j < j1; j++) {
    const int p0 = colPtr[j], p1 = colPtr[j + 1];
    if (p0 == p1) continue;
    // pull in the rows of the next feature with entries while this one computes
    if (next <= j) {
      next = j + 1;
      while (next < j1 && colPtr[next] == colPtr[next + 1]) next++;
      if (next < j1) {
        prefetchRow(Wdec + (int64_t)next * d, d);
        prefetchRow(gWdec + (int64_t)next * d, d);
      }
    }
    if (j + 4 < j1 && colPtr[j + 4] != colPtr[j + 5]) {
      prefetchFar(Wdec + (int64_t)(j + 4) * d, d);
      prefetchFar(gWdec + (int64_t)(j + 4) * d, d);
    }
    const float* w = Wdec + (int64_t)j * d;
    float* g = gWdec + (int64_t)j * d;
    for (int p = p0; p < p1; p++) {
      const int e = colEnt[p];
      const float* dr = dOut + (int64_t)colTok[p] * d;
      if (p + kPfNear < colPtr[j1]) prefetchRow(dOut + (int64_t)colTok[p + kPfNear] * d, d);
      dz[e] = dotAxpy(dr, w, g, value[e], d);
    }
  }
}

// Features [j0, j1) (j0 a multiple of chunk): gWencT[j] += Σ dz·xc[b], gBenc[j] += Σ dz, and
// partial[j/chunk] = Σ_j (Σ dz)·WencT[j] (the b_dec gradient, summed over chunks in order later).
static void encoderBackwardCols(const float* WencT, const float* xc, const int32_t* colPtr, const int32_t* colEnt,
                                const int32_t* colTok, const float* dz, int j0, int j1, int d, int chunk,
                                float* gWencT, float* gBenc, float* partial) {
  int next = j0;
  for (int j = j0; j < j1; j++) {
    float* pc = partial + (int64_t)(j / chunk) * d;
    if (j % chunk == 0) {
      for (int i = 0; i < d; i++) pc[i] = 0.0f;
    }
    const int p0 = colPtr[j], p1 = colPtr[j + 1];
    if (p0 == p1) continue;
    if (next <= j) {
      next = j + 1;
      while (next < j1 && colPtr[next] == colPtr[next + 1]) next++;
      if (next < j1) {
        prefetchRow(WencT + (int64_t)next * d, d);
        if (xc) prefetchRow(gWencT + (int64_t)next * d, d);
      }
    }
    if (xc && j + 4 < j1 && colPtr[j + 4] != colPtr[j + 5]) {
      prefetchFar(WencT + (int64_t)(j + 4) * d, d);
      prefetchFar(gWencT + (int64_t)(j + 4) * d, d);
    }
    float* g = gWencT + (int64_t)j * d;
    float s = 0.0f;
    if (!xc) {  // gWencT done elsewhere (dense path): only Σ dz
      for (int p = p0; p < p1; p++) s += dz[colEnt[p]];
    }
    for (int p = p0; xc && p < p1; p++) {
      const float gz = dz[colEnt[p]];
      if (p + kPfNear < colPtr[j1]) prefetchRow(xc + (int64_t)colTok[p + kPfNear] * d, d);
      s += gz;
      axpy(g, xc + (int64_t)colTok[p] * d, gz, d);
    }
    gBenc[j] += s;
    axpy(pc, WencT + (int64_t)j * d, s, d);
  }
}

// partial[j/chunk] = Σ_{j in chunk} s[j]·W[j] for features [j0, j1) (j0 a multiple of chunk).
static void weightedRowSum(const float* W, const float* s, int j0, int j1, int d, int chunk, float* partial) {
  for (int j = j0; j < j1; j++) {
    float* pc = partial + (int64_t)(j / chunk) * d;
    if (j % chunk == 0) {
      for (int i = 0; i < d; i++) pc[i] = 0.0f;
    }
    if (s[j] != 0.0f) axpy(pc, W + (int64_t)j * d, s[j], d);
  }
}

extern const SparseOps kSparse;
const SparseOps kSparse = {decodeRows, decodeBackwardCols, encoderBackwardCols, weightedRowSum};
