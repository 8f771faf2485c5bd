// The instruction-set-specific half of the native kernels. sae_kernels.cc includes this file three
// times, each time inside a different `#pragma GCC target` region and with SAE_ISA_NS and
// SAE_ISA_LEVEL (512 = AVX-512F/BW/DQ/VL + FMA, 256 = AVX2 + FMA, 128 = baseline SSE2) defined,
// so every function here is compiled once per ISA; the dispatcher picks one table at run time
// with __builtin_cpu_supports. No include guard on purpose.
//
// Keep standard-library templates out of this file: an instantiation made inside a target region
// could be emitted with AVX-512 instructions and then shared (as a COMDAT) with baseline code.

namespace SAE_ISA_NS {

using namespace ::sae;

static inline int imin(int a, int b) { return a < b ? a : b; }

#if SAE_ISA_LEVEL == 512
typedef __m512 V;
constexpr int VL = 16;
constexpr int MR = 14;
static inline V vload(const float* p) { return _mm512_load_ps(p); }
static inline V vloadu(const float* p) { return _mm512_loadu_ps(p); }
static inline void vstore(float* p, V a) { _mm512_store_ps(p, a); }
static inline void vstoreu(float* p, V a) { _mm512_storeu_ps(p, a); }
static inline V vset1(float s) { return _mm512_set1_ps(s); }
static inline V vzero() { return _mm512_setzero_ps(); }
static inline V vadd(V a, V b) { return _mm512_add_ps(a, b); }
static inline V vfma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
static inline uint32_t vgt(V a, V b) { return (uint32_t)_mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
static const char kName[] = "avx512";
#elif SAE_ISA_LEVEL == 256
typedef __m256 V;
constexpr int VL = 8;
constexpr int MR = 6;
static inline V vload(const float* p) { return _mm256_load_ps(p); }
static inline V vloadu(const float* p) { return _mm256_loadu_ps(p); }
static inline void vstore(float* p, V a) { _mm256_store_ps(p, a); }
static inline void vstoreu(float* p, V a) { _mm256_storeu_ps(p, a); }
static inline V vset1(float s) { return _mm256_set1_ps(s); }
static inline V vzero() { return _mm256_setzero_ps(); }
static inline V vadd(V a, V b) { return _mm256_add_ps(a, b); }
static inline V vfma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
static inline uint32_t vgt(V a, V b) { return (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_GT_OQ)); }
static const char kName[] = "avx2";
#else
typedef __m128 V;
constexpr int VL = 4;
constexpr int MR = 6;
static inline V vload(const float* p) { return _mm_load_ps(p); }
static inline V vloadu(const float* p) { return _mm_loadu_ps(p); }
static inline void vstore(float* p, V a) { _mm_store_ps(p, a); }
static inline void vstoreu(float* p, V a) { _mm_storeu_ps(p, a); }
static inline V vset1(float s) { return _mm_set1_ps(s); }
static inline V vzero() { return _mm_setzero_ps(); }
static inline V vadd(V a, V b) { return _mm_add_ps(a, b); }
static inline V vfma(V a, V b, V c) { return _mm_add_ps(_mm_mul_ps(a, b), c); }
static inline uint32_t vgt(V a, V b) { return (uint32_t)_mm_movemask_ps(_mm_cmpgt_ps(a, b)); }
static const char kName[] = "sse2";
#endif

constexpr int NR = 2 * VL;  // tokens per tile (two vectors)

// ----------------------------------------------------------------------------------- packing

static size_t packedXFloats(int ntok, int d) { return (size_t)((ntok + NR - 1) / NR) * NR * (size_t)d; }
static size_t packedWFloats(int nb, int d) { return (size_t)nb * ((size_t)MR * d + MR); }

#if SAE_ISA_LEVEL == 512
// In-register transpose of 16 vectors of 16 floats: r[i][c] → r[c][i].
static inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; i++) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; i++) {
    r[4 * i + 0] = _mm512_shuffle_ps(t[4 * i + 0], t[4 * i + 2], 0x44);
    r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i + 0], t[4 * i + 2], 0xEE);
    r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  for (int c = 0; c < 4; c++) {
    t[c] = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88);
    t[4 + c] = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xDD);
    t[8 + c] = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88);
    t[12 + c] = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xDD);
  }
  for (int c = 0; c < 4; c++) {
    r[c] = _mm512_shuffle_f32x4(t[c], t[8 + c], 0x88);
    r[8 + c] = _mm512_shuffle_f32x4(t[c], t[8 + c], 0xDD);
    r[4 + c] = _mm512_shuffle_f32x4(t[4 + c], t[12 + c], 0x88);
    r[12 + c] = _mm512_shuffle_f32x4(t[4 + c], t[12 + c], 0xDD);
  }
}
#endif

// xc = x − b_dec for tokens [tok0, tok0+ntok): written row-major to xcOut (the caller's buffer;
// may be null) and as panels of NR tokens, panel p = [k][NR], for the micro-kernel. Missing tokens
// are zero; bDec may be null (nothing subtracted).
static void packX(const float* x, const float* bDec, float* xcOut, int tok0, int ntok, int d, float* Xp) {
  const int np = (ntok + NR - 1) / NR;
  for (int p = 0; p < np; p++) {
    float* __restrict dst = Xp + (size_t)p * NR * d;
    const int nvt = imin(NR, ntok - p * NR);
    int k0 = 0;
#if SAE_ISA_LEVEL == 512
    if (nvt == NR) {
      // 16 tokens × 16 features through a register transpose, both halves of the panel
      for (; k0 + 16 <= d; k0 += 16) {
        for (int h = 0; h < 2; h++) {
          __m512 r[16];
          for (int t = 0; t < 16; t++) {
            const int64_t b = tok0 + p * NR + h * 16 + t;
            __m512 v = _mm512_loadu_ps(x + b * d + k0);
            if (bDec) v = _mm512_sub_ps(v, _mm512_loadu_ps(bDec + k0));
            if (xcOut) _mm512_storeu_ps(xcOut + b * d + k0, v);
            r[t] = v;
          }
          transpose16(r);
          for (int c = 0; c < 16; c++) _mm512_store_ps(dst + (size_t)(k0 + c) * NR + h * 16, r[c]);
        }
      }
    }
#endif
    for (int t = 0; t < NR; t++) {
      if (t < nvt) {
        const int64_t b = tok0 + p * NR + t;
        const float* __restrict src = x + b * d;
        for (int k = k0; k < d; k++) {
          const float v = bDec ? src[k] - bDec[k] : src[k];
          if (xcOut) xcOut[b * d + k] = v;
          dst[(size_t)k * NR + t] = v;
        }
      } else {
        for (int k = k0; k < d; k++) dst[(size_t)k * NR + t] = 0.0f;
      }
    }
  }
}

// Features [f0, f0+nf) of WencT as micro-panels of MR rows, panel = [k][MR] then MR biases.
// Rows past the end are zero (their outputs are never consumed).
static void packW(const float* W, const float* bEnc, int f0, int nf, int d, float* Wp) {
  const int nmp = (nf + MR - 1) / MR;
  for (int mp = 0; mp < nmp; mp++) {
    float* __restrict dst = Wp + (size_t)mp * ((size_t)MR * d + MR);
    const int rows = imin(MR, nf - mp * MR);
    const float* src[MR];
    for (int r = 0; r < MR; r++) src[r] = W + (size_t)(f0 + mp * MR + (r < rows ? r : 0)) * d;
    int k0 = 0;
#if SAE_ISA_LEVEL == 512
    // 16 columns at a time through a register transpose; 14-wide masked stores
    for (; k0 + 16 <= d; k0 += 16) {
      __m512 r[16];
      for (int i = 0; i < 16; i++) r[i] = i < rows ? _mm512_loadu_ps(src[i < MR ? i : 0] + k0) : _mm512_setzero_ps();
      transpose16(r);
      for (int c = 0; c < 16; c++) _mm512_mask_storeu_ps(dst + (size_t)(k0 + c) * MR, (__mmask16)((1u << MR) - 1), r[c]);
    }
#endif
    if (rows == MR) {
      for (int k = k0; k < d; k++) {
#pragma GCC unroll 16
        for (int r = 0; r < MR; r++) dst[(size_t)k * MR + r] = src[r][k];
      }
    } else {
      for (int k = k0; k < d; k++) {
        for (int r = 0; r < MR; r++) dst[(size_t)k * MR + r] = r < rows ? src[r][k] : 0.0f;
      }
    }
    for (int r = 0; r < MR; r++) dst[(size_t)MR * d + r] = r < rows && bEnc ? bEnc[f0 + mp * MR + r] : 0.0f;
  }
}

// ------------------------------------------------------------------------------ micro-kernel

// tile[r][t] = Σ_k wp[k][r]·xp[k][t] + bias[r] over the whole K: an MR×NR block of z' that
// stays in registers until it is complete, then goes to an L1 scratch tile.
static inline void kernel(const float* __restrict wp, const float* __restrict xp, int K, float* __restrict tile) {
  V a0[MR], a1[MR];
#pragma GCC unroll 16
  for (int r = 0; r < MR; r++) {
    a0[r] = vzero();
    a1[r] = vzero();
  }
  for (int k = 0; k < K; k++) {
    const V x0 = vload(xp);
    const V x1 = vload(xp + VL);
#if SAE_ISA_LEVEL >= 256
    _mm_prefetch((const char*)(xp + 8 * NR), _MM_HINT_T0);
#endif
#pragma GCC unroll 16
    for (int r = 0; r < MR; r++) {
      const V w = vset1(wp[r]);
      a0[r] = vfma(w, x0, a0[r]);
      a1[r] = vfma(w, x1, a1[r]);
    }
    wp += MR;
    xp += NR;
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; r++) {
    const V b = vset1(wp[r]);
    vstore(tile + r * NR, vadd(a0[r], b));
    vstore(tile + r * NR + VL, vadd(a1[r], b));
  }
}

static inline uint32_t gtVec(const float* row, const float* thr) {
  return vgt(vload(row), vloadu(thr)) | (vgt(vload(row + VL), vloadu(thr + VL)) << VL);
}
static inline uint32_t gtScalar(const float* row, float s) {
  const V t = vset1(s);
  return vgt(vload(row), t) | (vgt(vload(row + VL), t) << VL);
}

// Hand a finished tile to the selections: a vector compare per row against the running
// thresholds; the (rare, once thresholds have risen) survivors go to the scalar handlers.
static inline void consume(const float* tile, int rows, int j0, int tl0, uint32_t valid, Consumer& c) {
  if (c.mode == kModeTile) {
    c.onTile(c.st, tile, rows, j0, tl0, valid);
    return;
  }
  for (int r = 0; r < rows; r++) {
    const float* row = tile + r * NR;
    const int j = j0 + r;
    uint32_t m = 0;
    switch (c.mode) {
      case kModeToken:
        m = gtVec(row, c.tokThr + tl0) & valid;
        break;
      case kModeFeature:
        m = gtScalar(row, c.featThr[j]) & valid;
        break;
      case kModeGlobal:
        m = gtScalar(row, *c.globalThr) & valid;
        break;
      case kModeDense: {
        float* out = c.denseOut + (int64_t)(c.tok0 + tl0) * c.F + j;
        for (int t = 0; t < NR; t++)
          if (valid >> t & 1u) out[(int64_t)t * c.F] = row[t];
        break;
      }
      default:
        break;
    }
    if (m) c.onMain(c.st, j, m, row, tl0);
    for (int a = 0; a < c.nAux; a++) {
      if (c.auxMask[a][j]) {
        const uint32_t ma = gtVec(row, c.auxThr[a] + tl0) & valid;
        if (ma) c.onAux(c.st, a, j, ma, row, tl0);
      }
    }
  }
}

// One thread's encoder pass: feature blocks of nb·MR features (packed once, L2-resident), for
// each panel of NR tokens (L2), every micro-panel of the block; each MR×NR tile of z' is consumed
// as soon as it is complete, so no more than a tile of the B×F matrix ever exists. Within a
// thread, a token's features arrive in ascending order and a feature's tokens in ascending order.
static void scan(const ScanJob& s) {
  const int d = s.d;
  const int F = s.F;
  const int Nc = MR * s.nb;
  const int np = (s.ntok + NR - 1) / NR;
  Consumer& c = *s.c;
  for (int f0 = 0; f0 < F; f0 += Nc) {
    const int nf = imin(Nc, F - f0);
    const int nmp = (nf + MR - 1) / MR;
    if (s.W) packW(s.W, s.bEnc, f0, nf, d, s.Wp);
    // While this block computes, pull the next block of WencT (one contiguous range) into L2.
    const char* pf = nullptr;
    const char* pfEnd = nullptr;
    size_t pfStep = 0;
    if (s.W && f0 + Nc < F) {
      pf = (const char*)(s.W + (size_t)(f0 + Nc) * d);
      pfEnd = (const char*)(s.W + (size_t)imin(F, f0 + 2 * Nc) * d);
      const size_t lines = (size_t)(pfEnd - pf) / 64 + 1;
      const size_t calls = (size_t)np * nmp;
      pfStep = (lines + calls - 1) / calls;
    }
    for (int p = 0; p < np; p++) {
      const int tl0 = p * NR;
      const int nvt = imin(NR, s.ntok - tl0);
      const uint32_t valid = nvt >= 32 ? 0xffffffffu : ((1u << nvt) - 1u);
      const float* xp = s.W ? s.Xp + (size_t)p * NR * d : nullptr;
      for (int mp = 0; mp < nmp; mp++) {
        const int rows = imin(MR, nf - mp * MR);
        const int j0 = f0 + mp * MR;
        if (s.W) {
          kernel(s.Wp + (size_t)mp * ((size_t)MR * d + MR), xp, d, s.tile);
          for (size_t q = 0; q < pfStep && pf < pfEnd; q++, pf += 64) _mm_prefetch(pf, _MM_HINT_T1);
        } else {
          for (int r = 0; r < MR; r++)
            for (int t = 0; t < NR; t++)
              s.tile[r * NR + t] = (r < rows && t < nvt) ? s.dense[(int64_t)(s.tok0 + tl0 + t) * F + j0 + r] : 0.0f;
        }
        consume(s.tile, rows, j0, tl0, valid, c);
      }
    }
  }
}

// ---------------------------------------------------------------------------- k-th largest

// Number of v[i] whose bit pattern is ≥ c (as unsigned; v[i] ≥ 0 so that orders like the value).
static inline size_t countGE(const float* v, size_t n, uint32_t c) {
  size_t cnt = 0;
  size_t i = 0;
#if SAE_ISA_LEVEL == 512
  const __m512i cc = _mm512_set1_epi32((int)c);
  for (; i + 16 <= n; i += 16)
    cnt += (size_t)__builtin_popcount(_mm512_cmpge_epu32_mask(_mm512_loadu_si512((const void*)(v + i)), cc));
  if (i < n) {
    const __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
    cnt += (size_t)__builtin_popcount(_mm512_mask_cmpge_epu32_mask(m, _mm512_maskz_loadu_epi32(m, v + i), cc));
  }
  return cnt;
#elif SAE_ISA_LEVEL == 256
  const __m256i cc = _mm256_set1_epi32((int)(c - 1));  // x ≥ c ⟺ x > c − 1 (all < 2^31)
  for (; i + 8 <= n; i += 8) {
    const __m256i x = _mm256_loadu_si256((const __m256i*)(v + i));
    cnt += (size_t)__builtin_popcount(_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(x, cc))));
  }
#else
  const __m128i cc = _mm_set1_epi32((int)(c - 1));
  for (; i + 4 <= n; i += 4) {
    const __m128i x = _mm_loadu_si128((const __m128i*)(v + i));
    cnt += (size_t)__builtin_popcount(_mm_movemask_ps(_mm_castsi128_ps(_mm_cmpgt_epi32(x, cc))));
  }
#endif
  for (; i < n; i++) {
    uint32_t x;
    __builtin_memcpy(&x, v + i, 4);
    cnt += x >= c ? 1 : 0;
  }
  return cnt;
}

// A threshold for the k largest (1 ≤ k ≤ n) of n non-negative floats, found bit by bit from the
// top: the largest t with #{v ≥ t} ≥ k, i.e. the k-th largest value — except that the search
// stops as soon as exactly k values are ≥ t (then {v ≥ t} are the k largest, and t ≤ the k-th
// largest). With bits < 31 only the top `bits` bits below the sign are resolved: t is then a
// lower bound of the k-th largest with #{v ≥ t} ≥ k. Branch-free vector counting, no data movement.
static float kthLargest(const float* v, size_t n, size_t k, int bits) {
  uint32_t p = 0;
  for (int bit = 30; bit >= 31 - bits; bit--) {
    const uint32_t c = p | (1u << bit);
    const size_t cnt = countGE(v, n, c);
    if (cnt >= k) {
      p = c;
      if (cnt == k) break;
    }
  }
  float r;
  __builtin_memcpy(&r, &p, 4);
  return r;
}

// ------------------------------------------------------------------------ sparse and streaming

#if SAE_ISA_LEVEL == 512
static inline float hsum(V v) { return _mm512_reduce_add_ps(v); }
#elif SAE_ISA_LEVEL == 256
static inline float hsum(V v) {
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  x = _mm_add_ss(x, _mm_shuffle_ps(x, x, 1));
  return _mm_cvtss_f32(x);
}
#else
static inline float hsum(V v) {
  __m128 x = _mm_add_ps(v, _mm_movehl_ps(v, v));
  x = _mm_add_ss(x, _mm_shuffle_ps(x, x, 1));
  return _mm_cvtss_f32(x);
}
#endif

// Σ a[i]·b[i] with four independent vector accumulators (the FMA latency stays hidden); a fixed
// association for a given instruction set.
static inline float dotv(const float* __restrict a, const float* __restrict b, int d) {
  V s0 = vzero(), s1 = vzero(), s2 = vzero(), s3 = vzero();
  int i = 0;
  for (; i + 4 * VL <= d; i += 4 * VL) {
    s0 = vfma(vloadu(a + i), vloadu(b + i), s0);
    s1 = vfma(vloadu(a + i + VL), vloadu(b + i + VL), s1);
    s2 = vfma(vloadu(a + i + 2 * VL), vloadu(b + i + 2 * VL), s2);
    s3 = vfma(vloadu(a + i + 3 * VL), vloadu(b + i + 3 * VL), s3);
  }
  for (; i + VL <= d; i += VL) s0 = vfma(vloadu(a + i), vloadu(b + i), s0);
  float r = hsum(vadd(vadd(s0, s1), vadd(s2, s3)));
  for (; i < d; i++) r += a[i] * b[i];
  return r;
}

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
  for (int i = 0; i < d * 4; i += 64) _mm_prefetch(c + i, _MM_HINT_T0);
}
static inline void prefetchFar(const float* p, int d) {
  const char* c = (const char*)p;
  for (int i = 0; i < d * 4; i += 64) _mm_prefetch(c + i, _MM_HINT_T2);
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

// ------------------------------------------------------------- dense accumulation (dense codes)

// Out[c] += Σ_k S(k, c)·Dense[k] for the columns c in [c0, c1), where column c's nonzeros are the
// entries p in [colPtr[c], colPtr[c+1]) at k = colK[p] (ascending) with value val[colEnt[p]] (or
// val[p] without colEnt). The same packed micro-kernel as the encoder: Dense rows of a k-block
// are packed once as MR-wide panels (A), each NR-column panel of S is scattered densely (B), and
// every tile is added to Out. Used when the codes are dense enough (ReLU early in training) that
// a GEMM beats touching a row of Dense per entry.
static void denseAccum(const AccumJob& J) {
  const int d = J.d;
  const int nrp = (d + MR - 1) / MR;
  const int kc = J.kc;
  const bool byK = J.kPtr != nullptr;
  if (!byK)
    for (int c = J.c0; c < J.c1; c++) J.cur[c - J.c0] = J.colPtr[c];
  for (int k0 = 0; k0 < J.K; k0 += kc) {
    const int kb = imin(kc, J.K - k0);
    if (byK) {
      // each k's first entry in this thread's columns
      for (int k = 0; k < kb; k++) {
        int lo = J.kPtr[k0 + k], hi = J.kPtr[k0 + k + 1];
        while (lo < hi) {
          const int mid = (lo + hi) >> 1;
          if (J.kCols[mid] < J.c0) lo = mid + 1;
          else hi = mid;
        }
        J.cur[k] = lo;
      }
    }
    const size_t pstride = (size_t)kb * MR + MR;
    // A: rows k0 .. k0+kb of Dense as [rp][k][MR] (+ MR zero "biases")
    for (int rp = 0; rp < nrp; rp++) {
      float* __restrict a = J.Ap + (size_t)rp * pstride;
      const int i0 = rp * MR;
      const int rows = imin(MR, d - i0);
#if SAE_ISA_LEVEL == 512
      const __mmask16 lm = (__mmask16)((1u << rows) - 1u);
      for (int k = 0; k < kb; k++) {
        const __m512 v = _mm512_maskz_loadu_ps(lm, J.dense + (int64_t)(k0 + k) * d + i0);
        _mm512_mask_storeu_ps(a + (size_t)k * MR, (__mmask16)((1u << MR) - 1u), v);
      }
#else
      for (int k = 0; k < kb; k++) {
        const float* src = J.dense + (int64_t)(k0 + k) * d + i0;
        for (int r = 0; r < MR; r++) a[(size_t)k * MR + r] = r < rows ? src[r] : 0.0f;
      }
#endif
      for (int r = 0; r < MR; r++) a[(size_t)kb * MR + r] = 0.0f;
    }
    for (int tp = J.c0; tp < J.c1; tp += NR) {
      const int nt = imin(NR, J.c1 - tp);
      float* __restrict bp = J.Bp;
      for (size_t q = 0; q < (size_t)kb * NR; q++) bp[q] = 0.0f;
      bool any = false;
      if (byK) {
        for (int k = 0; k < kb; k++) {
          int p = J.cur[k];
          const int end = J.kPtr[k0 + k + 1];
          while (p < end && J.kCols[p] < tp + nt) {
            const float v = J.val[p];
            bp[(size_t)k * NR + (J.kCols[p] - tp)] = v;
            if (J.colSum) J.colSum[J.kCols[p]] += v;
            p++;
            any = true;
          }
          J.cur[k] = p;
        }
      } else {
        for (int t = 0; t < nt; t++) {
          const int c = tp + t;
          int p = J.cur[c - J.c0];
          const int end = J.colPtr[c + 1];
          while (p < end && J.colK[p] < k0 + kb) {
            bp[(size_t)(J.colK[p] - k0) * NR + t] = J.val[J.colEnt ? J.colEnt[p] : p];
            p++;
            any = true;
          }
          J.cur[c - J.c0] = p;
        }
      }
      if (!any) continue;
      for (int rp = 0; rp < nrp; rp++) {
        kernel(J.Ap + (size_t)rp * pstride, bp, kb, J.tile);
        const int i0 = rp * MR;
        const int rows = imin(MR, d - i0);
#if SAE_ISA_LEVEL == 512
        // tile[r][t] → Out[t][r]: two 16×16 register transposes, then masked row updates
        const __mmask16 om = (__mmask16)((1u << rows) - 1u);
        for (int h = 0; h < 2 && h * 16 < nt; h++) {
          __m512 r16[16];
          for (int r = 0; r < 16; r++) r16[r] = r < MR ? _mm512_load_ps(J.tile + r * NR + h * 16) : _mm512_setzero_ps();
          transpose16(r16);
          const int tn = imin(16, nt - h * 16);
          for (int t = 0; t < tn; t++) {
            float* o = J.out + (int64_t)(tp + h * 16 + t) * d + i0;
            _mm512_mask_storeu_ps(o, om, _mm512_add_ps(_mm512_maskz_loadu_ps(om, o), r16[t]));
          }
        }
#else
        for (int t = 0; t < nt; t++) {
          float* o = J.out + (int64_t)(tp + t) * d + i0;
          for (int r = 0; r < rows; r++) o[r] += J.tile[r * NR + t];
        }
#endif
      }
    }
  }
}

static const IsaOps kOps = {
    kName,      MR,    NR,         packedXFloats,       packedWFloats,  packX,       scan,       kthLargest,
    decodeRows, decodeBackwardCols, encoderBackwardCols, sumSquares, adamw, projectRows, normalizeRows, denseAccum,
    weightedRowSum, projectRowsNorm, adamwRowsNormalize,
};

}  // namespace SAE_ISA_NS
