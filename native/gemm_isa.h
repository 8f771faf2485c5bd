// The packed SGEMM, compiled once per instruction set (see isa_variants.h): the MR×NR
// register-blocked micro-kernel, the packing it reads, and its drivers — the SAE encoder's scan,
// which hands each finished tile to the selections while it is in L1, the dense accumulation
// used by the sparse passes when the codes are dense, and the host LM's linear layers.

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

// bf16 emulated on these kernels (docs/precision.md): p[i] rounded in place by the reference's
// integer rule (RNE on the dropped 16 bits; NaN made quiet), bit-identical to src/kernels/bf16.ts.
static void roundBf16(float* p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    uint32_t b;
    __builtin_memcpy(&b, p + i, 4);
    const uint32_t r = (b & 0x7fffffffu) > 0x7f800000u ? (b | 0x00400000u) & 0xffff0000u : (b + 0x7fffu + ((b >> 16) & 1u)) & 0xffff0000u;
    __builtin_memcpy(p + i, &r, 4);
  }
}

// ------------------------------------------------------------------------------ micro-kernel

#if SAE_NEON
#include "gemm_neon.h"
#else
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
#endif

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
    if (s.W && s.roundW)
      for (int mp = 0; mp < nmp; mp++) roundBf16(s.Wp + (size_t)mp * ((size_t)MR * d + MR), (size_t)MR * d);
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
          for (size_t q = 0; q < pfStep && pf < pfEnd; q++, pf += 64) prefetchL2(pf);
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

// ------------------------------------------------------------------------------- LM linear
//
// The same MR×NR register blocking with the roles turned around: outputs along the vectors (NR)
// and tokens broadcast (MR), so that a finished tile is MR row segments of y, stored as vectors.

// Tokens [0, n) of x [n×K] as micro-panels of MR tokens, panel = [k][MR] over the whole K (a
// k-block of a panel is then contiguous); tokens past n are zero. Panels [p0, p1).
static void packTokens(const float* x, int n, int K, int p0, int p1, float* Ap) {
  for (int p = p0; p < p1; p++) {
    float* __restrict dst = Ap + (size_t)p * MR * K;
    const int rows = imin(MR, n - p * MR);
    for (int r = 0; r < MR; r++) {
      const float* __restrict src = x + (size_t)(p * MR + (r < rows ? r : 0)) * K;
      for (int k = 0; k < K; k++) dst[(size_t)k * MR + r] = r < rows ? src[k] : 0.0f;
    }
  }
}

// Outputs [f0, f0+nf) and k in [k0, k0+kc) of W as panels of NR outputs, panel = [k][NR]:
// W is [K×m] when inOut ('in_out': row k holds the outputs, a straight copy), else [m×K]
// ('out_in': a transpose). Outputs past the end are zero.
static void packLinearW(const float* W, bool inOut, int K, int m, int f0, int nf, int k0, int kc, float* Bp) {
  const int npn = (nf + NR - 1) / NR;
  for (int q = 0; q < npn; q++) {
    float* __restrict dst = Bp + (size_t)q * NR * kc;
    const int o = f0 + q * NR;
    const int cols = imin(NR, nf - q * NR);
    if (inOut) {
      for (int k = 0; k < kc; k++) {
        const float* __restrict src = W + (size_t)(k0 + k) * m + o;
        if (cols == NR) {
          vstore(dst + (size_t)k * NR, vloadu(src));
          vstore(dst + (size_t)k * NR + VL, vloadu(src + VL));
        } else {
          for (int c = 0; c < NR; c++) dst[(size_t)k * NR + c] = c < cols ? src[c] : 0.0f;
        }
      }
    } else {
      for (int c = 0; c < NR; c++) {
        const float* __restrict src = W + (size_t)(o + (c < cols ? c : 0)) * K + k0;
        for (int k = 0; k < kc; k++) dst[(size_t)k * NR + c] = c < cols ? src[k] : 0.0f;
      }
    }
  }
}

// y[r][0..NR) (+)= Σ_k ap[k][r]·bp[k][NR] (+ bias) for the MR tokens of a panel: the product
// stays in registers over the k-block, then goes straight to the rows of y (first k-block:
// stored with the bias; later ones: added). rows/cols < MR/NR at the edges go through tile.
static inline void linearKernel(const float* __restrict ap, const float* __restrict bp, int kc, float* y, size_t ldy,
                                int rows, int cols, bool first, const float* bias, float* __restrict tile) {
  V a0[MR], a1[MR];
#pragma GCC unroll 16
  for (int r = 0; r < MR; r++) {
    a0[r] = vzero();
    a1[r] = vzero();
  }
  for (int k = 0; k < kc; k++) {
    const V b0 = vload(bp);
    const V b1 = vload(bp + VL);
#if SAE_ISA_LEVEL >= 256
    _mm_prefetch((const char*)(bp + 8 * NR), _MM_HINT_T0);
#endif
#pragma GCC unroll 16
    for (int r = 0; r < MR; r++) {
      const V w = vset1(ap[r]);
      a0[r] = vfma(w, b0, a0[r]);
      a1[r] = vfma(w, b1, a1[r]);
    }
    ap += MR;
    bp += NR;
  }
  if (rows == MR && cols == NR) {
    const V c0 = first && bias ? vloadu(bias) : vzero(), c1 = first && bias ? vloadu(bias + VL) : vzero();
#pragma GCC unroll 16
    for (int r = 0; r < MR; r++) {
      float* yr = y + (size_t)r * ldy;
      if (first) {
        vstoreu(yr, vadd(a0[r], c0));
        vstoreu(yr + VL, vadd(a1[r], c1));
      } else {
        vstoreu(yr, vadd(vloadu(yr), a0[r]));
        vstoreu(yr + VL, vadd(vloadu(yr + VL), a1[r]));
      }
    }
    return;
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; r++) {
    vstore(tile + r * NR, a0[r]);
    vstore(tile + r * NR + VL, a1[r]);
  }
  for (int r = 0; r < rows; r++) {
    float* yr = y + (size_t)r * ldy;
    for (int c = 0; c < cols; c++)
      yr[c] = first ? tile[r * NR + c] + (bias ? bias[c] : 0.0f) : yr[c] + tile[r * NR + c];
  }
}

// Outputs [o0, o1) of y = x·W + bias for the token panels [p0, p1), blocked like a BLIS GEMM for
// the host LM's shapes (K up to 3072): blocks of nb·NR outputs × kLinearKc of k packed into L2;
// per token panel (packed once for all threads) its k-slice stays in L1 across the block's output
// panels. y[i][j] = ((bias + Σ_k∈block0) + Σ_k∈block1) + …, each block's sum one FMA chain in k
// order: the same for any thread count or output partition.
static void linear(const LinearJob& J) {
  const int K = J.K;
  const int Nc = NR * J.nb;
  for (int f0 = J.o0; f0 < J.o1; f0 += Nc) {
    const int nf = imin(Nc, J.o1 - f0);
    const int npn = (nf + NR - 1) / NR;
    for (int k0 = 0; k0 < K; k0 += kLinearKc) {
      const int kc = imin(kLinearKc, K - k0);
      packLinearW(J.W, J.inOut, K, J.m, f0, nf, k0, kc, J.Wp);
      for (int p = J.p0; p < J.p1; p++) {
        const float* ap = J.Xp + (size_t)p * MR * K + (size_t)k0 * MR;
        const int rows = imin(MR, J.n - p * MR);
        for (int q = 0; q < npn; q++) {
          const int o = f0 + q * NR;
          linearKernel(ap, J.Wp + (size_t)q * NR * kc, kc, J.y + (size_t)p * MR * J.m + o, (size_t)J.m, rows,
                       imin(NR, nf - q * NR), k0 == 0, J.bias ? J.bias + o : nullptr, J.tile);
        }
      }
    }
  }
}

extern const GemmOps kGemm;
const GemmOps kGemm = {MR, NR, packedXFloats, packedWFloats, packX, scan, denseAccum, packTokens, linear, roundBf16};

#if SAE_ISA_LEVEL == 512 && !defined(SAE_NO_BF16_UNITS)
#include "bf16_isa.h"
#endif
#if SAE_NEON && SAE_HAVE_BFMMLA
#include "bf16_neon.h"
#endif
