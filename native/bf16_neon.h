// The bf16 GEMMs on arm64 (issue 18; docs/precision.md), part of the NEON body of gemm_isa.h, for
// CPUs with FEAT_BF16 (Neoverse V1/N2/V2, Apple M2 and later, Graviton 3/4): BFMMLA multiplies a
// 2×4 block of bf16 A by a 4×2 block of B into a 2×2 block of fp32 C (16 products per
// instruction). Operands are rounded by the reference's integer rule (bit-identical to
// src/kernels/bf16.ts). BFMMLA flushes bf16 subnormal inputs and fp32 subnormal results and rounds
// its sums to odd; each step still errs by less than an fp32 ulp, inside the tests' bound.
//
// Layouts (isa.h leaves them to the unit): k in quads; an A tile of 8 rows is [k/4][4 row pairs]
// [2 rows][4 k] (64 bytes per quad: four BFMMLA operands), a B panel of 8 columns likewise with
// column pairs; a group of 16 columns is two panels. One 8×8 tile of C is 16 accumulators.

#define SAE_BFMMLA_TARGET "arch=armv8.2-a+bf16"

static inline uint16_t bf16BitsOf(float v) {
  uint32_t b;
  __builtin_memcpy(&b, &v, 4);
  if ((b & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((b >> 16) | 0x40u);
  return (uint16_t)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

// Element (i, k) of an 8-row tile / 8-column panel, within its tile.
static inline size_t mmlaAt(int i, int k) { return (size_t)(k >> 2) * 32 + (size_t)(i >> 1) * 8 + (size_t)(i & 1) * 4 + (k & 3); }

static void mmlaPackRows(const float* x, int K, int n, int t0, int t1, uint16_t* Ab) {
  const int Kp = bf16Kp(K);
  for (int t = t0; t < t1; t++) {
    uint16_t* tile = Ab + (size_t)t * 8 * Kp;
    for (int i = 0; i < 8; i++) {
      const int r = t * 8 + i;
      for (int k = 0; k < Kp; k++) tile[mmlaAt(i, k)] = r < n && k < K ? bf16BitsOf(x[(size_t)r * K + k]) : 0;
    }
  }
}

// x − b_dec of tokens [tok0, tok0+ntok): fp32 rows to xcOut, bf16 panels of 8 tokens to Xb.
static void mmlaPackX(const float* x, const float* bDec, float* xcOut, int tok0, int ntok, int d, uint16_t* Xb) {
  const int Kp = bf16Kp(d);
  const int panels = (ntok + 31) / 32 * 4;
  for (int p = 0; p < panels; p++) {
    uint16_t* P = Xb + (size_t)p * 8 * Kp;
    for (int t = 0; t < 8; t++) {
      const int tl = p * 8 + t;
      const int64_t b = tok0 + tl;
      for (int k = 0; k < Kp; k++) {
        uint16_t h = 0;
        if (tl < ntok && k < d) {
          const float v = bDec ? x[b * d + k] - bDec[k] : x[b * d + k];
          if (xcOut) xcOut[b * d + k] = v;
          h = bf16BitsOf(v);
        }
        P[mmlaAt(t, k)] = h;
      }
    }
  }
}

// Column groups [g0, g1) of W (16 outputs: panels 2g and 2g+1).
static void mmlaPackLinearW(const float* W, bool inOut, int K, int m, int g0, int g1, uint16_t* Wb) {
  const int Kp = bf16Kp(K);
  for (int g = g0; g < g1; g++) {
    for (int c = 0; c < 16; c++) {
      const int o = g * 16 + c;
      uint16_t* P = Wb + (size_t)(2 * g + c / 8) * 8 * Kp;
      for (int k = 0; k < Kp; k++)
        P[mmlaAt(c % 8, k)] = o < m && k < K ? bf16BitsOf(inOut ? W[(size_t)k * m + o] : W[(size_t)o * K + k]) : 0;
    }
  }
}

// C[8][8] (row stride ldc) = an A tile × a B panel over Kp.
__attribute__((target(SAE_BFMMLA_TARGET))) static inline void mmlaTile(const uint16_t* A, const uint16_t* B, int Kp, float* C,
                                                                       size_t ldc) {
  float32x4_t acc[4][4];
#pragma GCC unroll 4
  for (int i = 0; i < 4; i++)
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) acc[i][j] = vdupq_n_f32(0.0f);
  for (int q = 0; q < Kp / 4; q++) {
    bfloat16x8_t a[4], b[4];
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
      a[i] = vreinterpretq_bf16_u16(vld1q_u16(A + (size_t)q * 32 + 8 * i));
      b[i] = vreinterpretq_bf16_u16(vld1q_u16(B + (size_t)q * 32 + 8 * i));
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++)
#pragma GCC unroll 4
      for (int j = 0; j < 4; j++) acc[i][j] = vbfmmlaq_f32(acc[i][j], a[i], b[j]);
  }
  // acc[i][j] = [C(2i, 2j), C(2i, 2j+1), C(2i+1, 2j), C(2i+1, 2j+1)]
#pragma GCC unroll 4
  for (int i = 0; i < 4; i++) {
    float* r0 = C + (size_t)(2 * i) * ldc;
    float* r1 = r0 + ldc;
    vst1q_f32(r0, vcombine_f32(vget_low_f32(acc[i][0]), vget_low_f32(acc[i][1])));
    vst1q_f32(r0 + 4, vcombine_f32(vget_low_f32(acc[i][2]), vget_low_f32(acc[i][3])));
    vst1q_f32(r1, vcombine_f32(vget_high_f32(acc[i][0]), vget_high_f32(acc[i][1])));
    vst1q_f32(r1 + 4, vcombine_f32(vget_high_f32(acc[i][2]), vget_high_f32(acc[i][3])));
  }
}

// The encoder scan of gemm_isa.h on BFMMLA tiles: per block of W_enc tiles (packed for all threads
// beforehand, about 256 KiB), per panel of NR = 8 tokens, per tile of 8 features; each tile of z'
// gets its biases and goes to consume(), in the fp32 scan's order.
__attribute__((target(SAE_BFMMLA_TARGET))) static void mmlaScan(const ScanJob& s) {
  const int d = s.d, F = s.F, Kp = bf16Kp(d);
  int blockTiles = (256 * 1024) / (2 * 8 * Kp);
  blockTiles = blockTiles < 1 ? 1 : blockTiles > 256 ? 256 : blockTiles;
  const int nTiles = (F + 7) / 8;
  const int np = (s.ntok + 7) / 8;
  Consumer& c = *s.c;
  for (int bt = 0; bt < nTiles; bt += blockTiles) {
    const int bt1 = imin(nTiles, bt + blockTiles);
    for (int p = 0; p < np; p++) {
      const int tl0 = p * 8;
      const int nvt = imin(8, s.ntok - tl0);
      const uint32_t valid = (1u << nvt) - 1u;
      const uint16_t* B = s.Xb + (size_t)p * 8 * Kp;
      for (int t = bt; t < bt1; t++) {
        const int j0 = t * 8;
        const int rows = imin(8, F - j0);
        mmlaTile(s.Wb + (size_t)j0 * Kp, B, Kp, s.tile, 8);
        for (int r = 0; r < rows; r++) {
          const float32x4_t bias = vdupq_n_f32(s.bEnc ? s.bEnc[j0 + r] : 0.0f);
          vst1q_f32(s.tile + r * 8, vaddq_f32(vld1q_f32(s.tile + r * 8), bias));
          vst1q_f32(s.tile + r * 8 + 4, vaddq_f32(vld1q_f32(s.tile + r * 8 + 4), bias));
        }
        consume(s.tile, rows, j0, tl0, valid, c);
      }
    }
  }
}

// y rows [r0, r1) × outputs [o0, o1) = x·W + bias: per tile of 8 rows, per panel of 8 outputs.
__attribute__((target(SAE_BFMMLA_TARGET))) static void mmlaLinear(const Bf16LinearJob& J) {
  const int Kp = bf16Kp(J.K);
  for (int r = J.r0; r < J.r1; r += 8) {
    const int rows = imin(8, J.n - r);
    const uint16_t* A = J.Xb + (size_t)r * Kp;
    for (int o = J.o0; o < J.o1; o += 8) {
      mmlaTile(A, J.Wb + (size_t)o * Kp, Kp, J.tile, 8);
      const int cols = imin(8, J.m - o);
      for (int i = 0; i < rows; i++) {
        float* yr = J.y + (size_t)(r + i) * J.m + o;
        for (int c = 0; c < cols; c++) yr[c] = J.tile[i * 8 + c] + (J.bias ? J.bias[o + c] : 0.0f);
      }
    }
  }
}

extern const Bf16Ops kBf16Mmla;
const Bf16Ops kBf16Mmla = {"bfmmla", 8, mmlaPackX, mmlaPackRows, mmlaScan, mmlaPackLinearW, mmlaLinear};
