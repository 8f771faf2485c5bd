// The selections' vectorised k-th-largest search, compiled once per instruction set (see
// isa_variants.h).

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
#elif SAE_NEON
  // a lane that passes is all ones (−1): subtracting it counts it; lanes summed once at the end
  const uint32x4_t cc = vdupq_n_u32(c);
  uint32x4_t acc = vdupq_n_u32(0);
  for (; i + 4 <= n; i += 4) acc = vsubq_u32(acc, vcgeq_u32(vreinterpretq_u32_f32(vld1q_f32(v + i)), cc));
  cnt = (size_t)vaddlvq_u32(acc);
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

extern const SelectOps kSelect;
const SelectOps kSelect = {kthLargest};
