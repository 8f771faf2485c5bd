// The bf16 GEMMs (issue 18; docs/precision.md), part of the AVX-512 body of gemm_isa.h: operands
// rounded to bf16 by the reference's integer rule (bit-identical to src/kernels/bf16.ts), exact
// products summed in fp32 by TDPBF16PS (AMX tiles) or VDPBF16PS (AVX512-BF16). The layouts are
// isa.h's: A as bf16 rows, B as groups of 16 columns in pairs of k. Both instructions treat bf16
// subnormal inputs and fp32 subnormal results as zero; docs/precision.md bounds what that changes.

#define SAE_BF16_TARGET "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi,bmi2,popcnt,avx512bf16"
#define SAE_AMX_TARGET SAE_BF16_TARGET ",amx-tile,amx-bf16"

static inline int imax(int a, int b) { return a > b ? a : b; }

// 16 floats → 16 bf16 bit patterns: add 0x7fff + lsb and keep the top half (RNE); NaN made quiet.
static inline __m256i bf16x16(__m512 v) {
  const __m512i b = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(b, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  const __mmask16 nan = _mm512_cmpgt_epi32_mask(_mm512_and_si512(b, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
  r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(b, 16), _mm512_set1_epi32(0x40));
  return _mm512_cvtepi32_epi16(r);
}

// A row of n floats (minus sub, when given) as bf16 into dst, zeros up to Kp.
static inline void bf16Row(const float* src, const float* sub, int n, int Kp, uint16_t* dst) {
  int k = 0;
  for (; k < n; k += 16) {
    const __mmask16 m = n - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - k)) - 1u);
    __m512 v = _mm512_maskz_loadu_ps(m, src + k);
    if (sub) v = _mm512_sub_ps(v, _mm512_maskz_loadu_ps(m, sub + k));
    _mm256_mask_storeu_epi16(dst + k, m, bf16x16(v));
  }
  for (k = n; k < Kp; k++) dst[k] = 0;
}

// ------------------------------------------------------------------------------------- packing

// Row tiles [t0, t1) of x [n×K] with R rows per tile: AMX (kPairs false) keeps each tile's rows
// row-major; AVX512-BF16 (kPairs true) interleaves them as [k/2][R] pairs, so that the micro-kernel
// broadcasts from one stream.
template <int R, bool kPairs>
static void bf16PackRowsAs(const float* x, int K, int n, int t0, int t1, uint16_t* Ab) {
  const int Kp = bf16Kp(K);
  alignas(64) uint16_t row[8192];
  for (int t = t0; t < t1; t++) {
    uint16_t* tile = Ab + (size_t)t * R * Kp;
    for (int i = 0; i < R; i++) {
      const int r = t * R + i;
      if (!kPairs) {
        if (r < n) bf16Row(x + (size_t)r * K, nullptr, K, Kp, tile + (size_t)i * Kp);
        else
          for (int k = 0; k < Kp; k++) tile[(size_t)i * Kp + k] = 0;
        continue;
      }
      uint32_t* T32 = reinterpret_cast<uint32_t*>(tile);
      for (int k0 = 0; k0 < Kp; k0 += 8192) {
        const int len = imin(8192, Kp - k0);
        const int have = r < n ? (K - k0 < 0 ? 0 : imin(len, K - k0)) : 0;
        bf16Row(x + (size_t)r * K + k0, nullptr, have, len, row);
        const uint32_t* r32 = reinterpret_cast<const uint32_t*>(row);
        for (int p = 0; p < len / 2; p++) T32[(size_t)(k0 / 2 + p) * R + i] = r32[p];
      }
    }
  }
}

// xc rows (fp32, for the backward pass) and the tokens' column groups: token t of group g at
// pair p is the 32-bit word g·(Kp/2)·16 + p·16 + t.
static void bf16PackX(const float* x, const float* bDec, float* xcOut, int tok0, int ntok, int d, uint16_t* Xb) {
  const int Kp = bf16Kp(d);
  const int groups = (ntok + 31) / 32 * 2;
  alignas(64) uint16_t row[8192];
  uint32_t* X32 = reinterpret_cast<uint32_t*>(Xb);
  for (int g = 0; g < groups; g++) {
    uint32_t* G = X32 + (size_t)g * (Kp / 2) * 16;
    for (int t = 0; t < 16; t++) {
      const int tl = g * 16 + t;
      if (tl < ntok) {
        const int64_t b = tok0 + tl;
        if (xcOut) {
          for (int k = 0; k < d; k++) xcOut[b * d + k] = bDec ? x[b * d + k] - bDec[k] : x[b * d + k];
        }
        // d ≤ 8192 by construction of the caller's check; longer rows go in pieces
        for (int k0 = 0; k0 < Kp; k0 += 8192) {
          const int len = imin(8192, Kp - k0);
          const int have = d - k0 < 0 ? 0 : imin(len, d - k0);
          bf16Row(x + b * d + k0, bDec ? bDec + k0 : nullptr, have, len, row);
          const uint32_t* r32 = reinterpret_cast<const uint32_t*>(row);
          for (int p = 0; p < len / 2; p++) G[(size_t)(k0 / 2 + p) * 16 + t] = r32[p];
        }
      } else {
        for (int p = 0; p < Kp / 2; p++) G[(size_t)p * 16 + t] = 0;
      }
    }
  }
}

// Column groups [g0, g1) of W: output o = 16g + c at pair p holds W(2p, o), W(2p+1, o).
static void bf16PackLinearW(const float* W, bool inOut, int K, int m, int g0, int g1, uint16_t* Wb) {
  const int Kp = bf16Kp(K);
  alignas(64) float col[32];
  for (int g = g0; g < g1; g++) {
    uint16_t* G = Wb + (size_t)g * Kp * 16;
    for (int k = 0; k < Kp; k += 2) {
      for (int c = 0; c < 16; c++) {
        const int o = g * 16 + c;
        for (int h = 0; h < 2; h++) {
          const int kk = k + h;
          col[2 * c + h] = (o < m && kk < K) ? (inOut ? W[(size_t)kk * m + o] : W[(size_t)o * K + kk]) : 0.0f;
        }
      }
      _mm256_storeu_si256((__m256i*)(G + (size_t)k * 16), bf16x16(_mm512_loadu_ps(col)));
      _mm256_storeu_si256((__m256i*)(G + (size_t)k * 16 + 16), bf16x16(_mm512_loadu_ps(col + 16)));
    }
  }
}

// ----------------------------------------------------------------------------------- AMX tiles

// Eight tiles of 16 rows × 64 bytes: C in 0–3, A in 4–5, B in 6–7.
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t startRow = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

__attribute__((target(SAE_AMX_TARGET))) static void amxEnter() {
  TileConfig cfg;
  for (int i = 0; i < 8; i++) {
    cfg.colsb[i] = 64;
    cfg.rows[i] = 16;
  }
  _tile_loadconfig(&cfg);
}
__attribute__((target(SAE_AMX_TARGET))) static void amxLeave() { _tile_release(); }

// C[32][32] (row stride ldc floats) = A rows [32][Kp] (stride lda) × two column groups.
__attribute__((target(SAE_AMX_TARGET))) static inline void amxTile(const uint16_t* A, size_t lda, const uint16_t* B0,
                                                                   const uint16_t* B1, int Kp, float* C, size_t ldc) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int k = 0; k < Kp; k += kBf16K) {
    _tile_loadd(4, A + k, lda * 2);
    _tile_loadd(5, A + 16 * lda + k, lda * 2);
    _tile_loadd(6, B0 + (size_t)k * 16, 64);
    _tile_loadd(7, B1 + (size_t)k * 16, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, C, ldc * 4);
  _tile_stored(1, C + 16, ldc * 4);
  _tile_stored(2, C + 16 * ldc, ldc * 4);
  _tile_stored(3, C + 16 * ldc + 16, ldc * 4);
}

// C[32][32] (+)= A rows × two column groups over k in [k0, k1): C is loaded first unless `first`.
__attribute__((target(SAE_AMX_TARGET))) static inline void amxTileK(const uint16_t* A, size_t lda, const uint16_t* B0,
                                                                    const uint16_t* B1, int k0, int k1, bool first, float* C) {
  if (first) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  } else {
    _tile_loadd(0, C, 128);
    _tile_loadd(1, C + 16, 128);
    _tile_loadd(2, C + 16 * 32, 128);
    _tile_loadd(3, C + 16 * 32 + 16, 128);
  }
  for (int k = k0; k < k1; k += kBf16K) {
    _tile_loadd(4, A + k, lda * 2);
    _tile_loadd(5, A + 16 * lda + k, lda * 2);
    _tile_loadd(6, B0 + (size_t)k * 16, 64);
    _tile_loadd(7, B1 + (size_t)k * 16, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, C, 128);
  _tile_stored(1, C + 16, 128);
  _tile_stored(2, C + 16 * 32, 128);
  _tile_stored(3, C + 16 * 32 + 16, 128);
}

// --------------------------------------------------------------------------- AVX512-BF16 tiles

constexpr int kDpRows = 14;  // 28 accumulators + 2 column vectors + a broadcast fit 32 registers

// C[rows][32] (row stride ldc) = a pair-interleaved tile of kDpRows rows × two column groups.
__attribute__((target(SAE_BF16_TARGET))) static inline void dpTile(const uint16_t* A, int rows, const uint16_t* B0,
                                                                   const uint16_t* B1, int Kp, float* C, size_t ldc) {
  __m512 a0[kDpRows], a1[kDpRows];
#pragma GCC unroll 14
  for (int r = 0; r < kDpRows; r++) {
    a0[r] = _mm512_setzero_ps();
    a1[r] = _mm512_setzero_ps();
  }
  const int32_t* ap = reinterpret_cast<const int32_t*>(A);
  const int P = Kp / 2;
  for (int p = 0; p < P; p++) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(B0 + (size_t)p * 32);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(B1 + (size_t)p * 32);
    _mm_prefetch((const char*)(B0 + (size_t)p * 32 + 8 * 32), _MM_HINT_T0);
    _mm_prefetch((const char*)(B1 + (size_t)p * 32 + 8 * 32), _MM_HINT_T0);
#pragma GCC unroll 14
    for (int r = 0; r < kDpRows; r++) {
      const __m512bh a = (__m512bh)_mm512_set1_epi32(ap[r]);
      a0[r] = _mm512_dpbf16_ps(a0[r], a, b0);
      a1[r] = _mm512_dpbf16_ps(a1[r], a, b1);
    }
    ap += kDpRows;
  }
#pragma GCC unroll 14
  for (int r = 0; r < kDpRows; r++) {
    if (r >= rows) break;
    _mm512_storeu_ps(C + (size_t)r * ldc, a0[r]);
    _mm512_storeu_ps(C + (size_t)r * ldc + 16, a1[r]);
  }
}

// ------------------------------------------------------------------------------------- drivers

// The encoder scan of gemm_isa.h on bf16 tiles: per block of W_enc row tiles (packed for all
// threads beforehand, about 256 KiB: L2-resident while it meets the thread's tokens), per panel of
// 32 tokens, per row tile of `R` features; each [feature][token] tile gets its biases and goes to
// consume() while it is in L1, in the fp32 scan's order (a token's features ascending, a feature's
// tokens ascending).
template <bool kAmx>
static inline void bf16ScanBody(const ScanJob& s) {
  constexpr int R = kAmx ? 32 : kDpRows;
  const int d = s.d, F = s.F, Kp = bf16Kp(d);
  const int blockTiles = imin(64, imax(1, (256 * 1024) / (2 * R * Kp)));
  const int nTiles = (F + R - 1) / R;
  const int np = (s.ntok + 31) / 32;
  Consumer& c = *s.c;
  for (int bt = 0; bt < nTiles; bt += blockTiles) {
    const int bt1 = imin(nTiles, bt + blockTiles);
    for (int p = 0; p < np; p++) {
      const int tl0 = p * 32;
      const int nvt = imin(32, s.ntok - tl0);
      const uint32_t valid = nvt >= 32 ? 0xffffffffu : ((1u << nvt) - 1u);
      const uint16_t* B0 = s.Xb + (size_t)(2 * p) * Kp * 16;
      const uint16_t* B1 = B0 + (size_t)Kp * 16;
      for (int t = bt; t < bt1; t++) {
        const int j0 = t * R;
        const int rows = imin(R, F - j0);
        const uint16_t* A = s.Wb + (size_t)j0 * Kp;
        if constexpr (kAmx) amxTile(A, Kp, B0, B1, Kp, s.tile, 32);
        else dpTile(A, rows, B0, B1, Kp, s.tile, 32);
        for (int r = 0; r < rows; r++) {
          const __m512 b = _mm512_set1_ps(s.bEnc ? s.bEnc[j0 + r] : 0.0f);
          _mm512_storeu_ps(s.tile + r * 32, _mm512_add_ps(_mm512_loadu_ps(s.tile + r * 32), b));
          _mm512_storeu_ps(s.tile + r * 32 + 16, _mm512_add_ps(_mm512_loadu_ps(s.tile + r * 32 + 16), b));
        }
        consume(s.tile, rows, j0, tl0, valid, c);
      }
    }
  }
}

__attribute__((target(SAE_AMX_TARGET))) static void amxScan(const ScanJob& s) {
  amxEnter();
  bf16ScanBody<true>(s);
  amxLeave();
}
__attribute__((target(SAE_BF16_TARGET))) static void dpScan(const ScanJob& s) { bf16ScanBody<false>(s); }

// y[i][o] = C[i][o] + bias[o] for the rows×cols corner of a 32×32 tile C. A whole tile of aligned
// rows goes out with streaming stores: the layer's output is tens of MiB, and writing it through
// the cache (reading each line first) halved the AMX layer's speed on a 2-vCPU Xeon (0.95 → 0.59
// TFLOP/s on one core; 0.75 streamed). The caller fences.
static inline void storeTile(const float* C, int rows, int cols, const float* bias, float* y, size_t ldy) {
  const __mmask16 m0 = cols >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << cols) - 1u);
  const __mmask16 m1 = cols >= 32 ? (__mmask16)0xffff : cols <= 16 ? (__mmask16)0 : (__mmask16)((1u << (cols - 16)) - 1u);
  const __m512 c0 = bias ? _mm512_maskz_loadu_ps(m0, bias) : _mm512_setzero_ps();
  const __m512 c1 = bias ? _mm512_maskz_loadu_ps(m1, bias + 16) : _mm512_setzero_ps();
  if (cols == 32 && ((uintptr_t)y & 63) == 0 && (ldy & 15) == 0) {
    for (int i = 0; i < rows; i++) {
      _mm512_stream_ps(y + (size_t)i * ldy, _mm512_add_ps(_mm512_loadu_ps(C + i * 32), c0));
      _mm512_stream_ps(y + (size_t)i * ldy + 16, _mm512_add_ps(_mm512_loadu_ps(C + i * 32 + 16), c1));
    }
    return;
  }
  for (int i = 0; i < rows; i++) {
    _mm512_mask_storeu_ps(y + (size_t)i * ldy, m0, _mm512_add_ps(_mm512_loadu_ps(C + i * 32), c0));
    _mm512_mask_storeu_ps(y + (size_t)i * ldy + 16, m1, _mm512_add_ps(_mm512_loadu_ps(C + i * 32 + 16), c1));
  }
}

// The AMX linear layer on a piece (≤ kBf16PieceRows rows × ≤ kBf16PieceOut outputs), blocked in k:
// per k-block of kLinearKc, each row tile's block of A (32 × 256 bf16, 16 KiB) stays in L1 while it
// meets every column pair of the piece (L2), the partial sums waiting in J.tile. Measured on a
// 2-vCPU Sapphire-Rapids-class Xeon, one core: 1.19 TFLOP/s against 0.98 unblocked. Each output
// is still one fixed sequence of tile products in k order, plus the bias at the end.
__attribute__((target(SAE_AMX_TARGET))) static void amxLinear(const Bf16LinearJob& J) {
  amxEnter();
  const int Kp = bf16Kp(J.K);
  const int nr = (J.r1 - J.r0 + 31) / 32, no = (J.o1 - J.o0 + 31) / 32;
  for (int k0 = 0; k0 < Kp; k0 += kLinearKc) {
    const int k1 = imin(Kp, k0 + kLinearKc);
    for (int ri = 0; ri < nr; ri++) {
      const uint16_t* A = J.Xb + (size_t)(J.r0 + 32 * ri) * Kp;
      for (int oi = 0; oi < no; oi++) {
        const uint16_t* B0 = J.Wb + (size_t)((J.o0 + 32 * oi) / 16) * Kp * 16;
        amxTileK(A, Kp, B0, B0 + (size_t)Kp * 16, k0, k1, k0 == 0, J.tile + (size_t)(ri * no + oi) * 1024);
      }
    }
  }
  amxLeave();
  for (int ri = 0; ri < nr; ri++) {
    const int r = J.r0 + 32 * ri;
    for (int oi = 0; oi < no; oi++) {
      const int o = J.o0 + 32 * oi;
      storeTile(J.tile + (size_t)(ri * no + oi) * 1024, imin(32, J.n - r), imin(32, J.m - o), J.bias ? J.bias + o : nullptr,
                J.y + (size_t)r * J.m + o, (size_t)J.m);
    }
  }
  _mm_sfence();
}

// The AVX512-BF16 linear layer: per row tile (L1-resident while it meets every column pair of the
// piece), per pair of column groups (L2-resident across the piece's rows).
__attribute__((target(SAE_BF16_TARGET))) static void dpLinear(const Bf16LinearJob& J) {
  const int Kp = bf16Kp(J.K);
  for (int r = J.r0; r < J.r1; r += kDpRows) {
    const int rows = imin(kDpRows, J.n - r);
    const uint16_t* A = J.Xb + (size_t)r * Kp;
    for (int o = J.o0; o < J.o1; o += 32) {
      const uint16_t* B0 = J.Wb + (size_t)(o / 16) * Kp * 16;
      dpTile(A, rows, B0, B0 + (size_t)Kp * 16, Kp, J.tile, 32);
      storeTile(J.tile, rows, imin(32, J.m - o), J.bias ? J.bias + o : nullptr, J.y + (size_t)r * J.m + o, (size_t)J.m);
    }
  }
  _mm_sfence();
}

extern const Bf16Ops kBf16Amx, kBf16Dp;
const Bf16Ops kBf16Amx = {"amx", 32, bf16PackX, bf16PackRowsAs<32, false>, amxScan, bf16PackLinearW, amxLinear};
const Bf16Ops kBf16Dp = {"avx512bf16", kDpRows, bf16PackX, bf16PackRowsAs<kDpRows, true>, dpScan, bf16PackLinearW, dpLinear};
