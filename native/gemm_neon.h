// The NEON micro-kernel of the packed SGEMM (the SAE encoder's scan and the dense accumulation),
// included by gemm_isa.h in the NEON variant in place of the generic kernel(). Same contract and
// the same arithmetic as the generic one (per element one fused multiply-add per k, in k order,
// then + bias), so results are those of the generic code built for NEON; only the instructions
// differ. The generic code broadcasts each of the 8 row values by its own scalar load (or an LD1R,
// which also takes an FP pipe slot on Neoverse cores); here the 8 values of a k-step come in two
// 4-float loads and feed the FMAs as lanes (FMLA by element): per k-step 16 FMLA, 2 load-pair
// instructions and the loop's own 3 or 4 (docs/performance.md, arm64).

static_assert(MR == 8 && NR == 8, "the NEON micro-kernel computes 8×8 tiles");

// tile[r][t] = Σ_k wp[k][r]·xp[k][t] + bias[r] over the whole K (bias: the MR floats after the panel).
static inline void kernel(const float* __restrict wp, const float* __restrict xp, int K, float* __restrict tile) {
  float32x4_t a0[8], a1[8];
#pragma GCC unroll 8
  for (int r = 0; r < 8; r++) {
    a0[r] = vdupq_n_f32(0.0f);
    a1[r] = vdupq_n_f32(0.0f);
  }
  for (int k = 0; k < K; k++) {
    const float32x4_t x0 = vld1q_f32(xp), x1 = vld1q_f32(xp + 4);
    const float32x4_t w0 = vld1q_f32(wp), w1 = vld1q_f32(wp + 4);
    a0[0] = vfmaq_laneq_f32(a0[0], x0, w0, 0);
    a1[0] = vfmaq_laneq_f32(a1[0], x1, w0, 0);
    a0[1] = vfmaq_laneq_f32(a0[1], x0, w0, 1);
    a1[1] = vfmaq_laneq_f32(a1[1], x1, w0, 1);
    a0[2] = vfmaq_laneq_f32(a0[2], x0, w0, 2);
    a1[2] = vfmaq_laneq_f32(a1[2], x1, w0, 2);
    a0[3] = vfmaq_laneq_f32(a0[3], x0, w0, 3);
    a1[3] = vfmaq_laneq_f32(a1[3], x1, w0, 3);
    a0[4] = vfmaq_laneq_f32(a0[4], x0, w1, 0);
    a1[4] = vfmaq_laneq_f32(a1[4], x1, w1, 0);
    a0[5] = vfmaq_laneq_f32(a0[5], x0, w1, 1);
    a1[5] = vfmaq_laneq_f32(a1[5], x1, w1, 1);
    a0[6] = vfmaq_laneq_f32(a0[6], x0, w1, 2);
    a1[6] = vfmaq_laneq_f32(a1[6], x1, w1, 2);
    a0[7] = vfmaq_laneq_f32(a0[7], x0, w1, 3);
    a1[7] = vfmaq_laneq_f32(a1[7], x1, w1, 3);
    wp += 8;
    xp += 8;
  }
#pragma GCC unroll 8
  for (int r = 0; r < 8; r++) {
    const float32x4_t b = vdupq_n_f32(wp[r]);
    vst1q_f32(tile + r * 8, vaddq_f32(a0[r], b));
    vst1q_f32(tile + r * 8 + 4, vaddq_f32(a1[r], b));
  }
}
