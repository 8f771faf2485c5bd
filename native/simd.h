// The vector primitives of one instruction set, included by isa_variants.h inside each ISA
// namespace (SAE_ISA_LEVEL 512, 256 or 128; 128 with SAE_NEON set is arm64's NEON). VL floats per
// vector; MR×NR is the GEMM micro-tile (MR rows broadcast, NR = two vectors), sized to the
// register file. No include guard on purpose.

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
#elif SAE_NEON
typedef float32x4_t V;
constexpr int VL = 4;
// 8×8 tile: 16 accumulators + 2 vectors of x + 8 row values (each a by-element FMA operand) fit
// the 32 q registers without spills; 12 rows spill accumulators (see docs/performance.md, arm64)
constexpr int MR = 8;
static inline V vload(const float* p) { return vld1q_f32(p); }
static inline V vloadu(const float* p) { return vld1q_f32(p); }
static inline void vstore(float* p, V a) { vst1q_f32(p, a); }
static inline void vstoreu(float* p, V a) { vst1q_f32(p, a); }
static inline V vset1(float s) { return vdupq_n_f32(s); }
static inline V vzero() { return vdupq_n_f32(0.0f); }
static inline V vadd(V a, V b) { return vaddq_f32(a, b); }
static inline V vfma(V a, V b, V c) { return vfmaq_f32(c, a, b); }
// NEON has no movemask: keep lane i's bit of the all-ones compare result, then add the lanes
static inline uint32_t vgt(V a, V b) {
  const uint32x4_t bit = {1u, 2u, 4u, 8u};
  return vaddvq_u32(vandq_u32(vcgtq_f32(a, b), bit));
}
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
#endif

constexpr int NR = 2 * VL;  // columns of a micro-tile (two vectors)

#if SAE_ISA_LEVEL == 512
static inline float hsum(V v) { return _mm512_reduce_add_ps(v); }
#elif SAE_ISA_LEVEL == 256
static inline float hsum(V v) {
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  x = _mm_add_ss(x, _mm_shuffle_ps(x, x, 1));
  return _mm_cvtss_f32(x);
}
#elif SAE_NEON
// (v0 + v2) + (v1 + v3), the SSE2 version's order, spelled out (no across-lanes reduction whose
// order a reader would have to look up)
static inline float hsum(V v) {
  const float32x2_t p = vadd_f32(vget_low_f32(v), vget_high_f32(v));
  return vget_lane_f32(p, 0) + vget_lane_f32(p, 1);
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

// Software prefetch of the cache line at p towards L1, L2 or (far ahead) L3.
#if SAE_X86
static inline void prefetchL1(const void* p) { _mm_prefetch((const char*)p, _MM_HINT_T0); }
static inline void prefetchL2(const void* p) { _mm_prefetch((const char*)p, _MM_HINT_T1); }
static inline void prefetchL3(const void* p) { _mm_prefetch((const char*)p, _MM_HINT_T2); }
#else
static inline void prefetchL1(const void* p) { __builtin_prefetch(p, 0, 3); }
static inline void prefetchL2(const void* p) { __builtin_prefetch(p, 0, 2); }
static inline void prefetchL3(const void* p) { __builtin_prefetch(p, 0, 1); }
#endif
