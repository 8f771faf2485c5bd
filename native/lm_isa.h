// The host LM's non-GEMM ops (issue 8), compiled once per instruction set (see isa_variants.h):
// LayerNorm, GELU (tanh and erf), the residual add, rotary embedding, causal attention and
// cross-entropy. Each works on a range of rows or elements given by lm_ops.cc, and every output
// element's arithmetic depends on its own row only, so results do not depend on the split.

// ------------------------------------------------------------------------ more vector math

#if SAE_ISA_LEVEL == 512
typedef __mmask16 M;
typedef __m512i VI;
static inline V vsub(V a, V b) { return _mm512_sub_ps(a, b); }
static inline V vmul(V a, V b) { return _mm512_mul_ps(a, b); }
static inline V vdiv(V a, V b) { return _mm512_div_ps(a, b); }
static inline V vmax(V a, V b) { return _mm512_max_ps(a, b); }
static inline V vmin(V a, V b) { return _mm512_min_ps(a, b); }
static inline V vand(V a, uint32_t m) { return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(a), _mm512_set1_epi32((int)m))); }
static inline M vlt(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
static inline V vsel(M m, V a, V b) { return _mm512_mask_blend_ps(m, b, a); }  // m ? a : b
static inline bool vany(M m) { return m != 0; }
static inline M vinrange(V a, float lo, float hi) {  // lo ≤ a < hi
  return _mm512_cmp_ps_mask(a, _mm512_set1_ps(hi), _CMP_LT_OQ) & _mm512_cmp_ps_mask(a, _mm512_set1_ps(lo), _CMP_GE_OQ);
}
static inline V vround(V a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
// 2^n for integral n in [-126, 127]
static inline V vpow2i(V n) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23));
}
static inline V vmaskload(const float* p, int n) { return _mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1u), p); }
#elif SAE_ISA_LEVEL == 256
typedef __m256 M;
static inline V vsub(V a, V b) { return _mm256_sub_ps(a, b); }
static inline V vmul(V a, V b) { return _mm256_mul_ps(a, b); }
static inline V vdiv(V a, V b) { return _mm256_div_ps(a, b); }
static inline V vmax(V a, V b) { return _mm256_max_ps(a, b); }
static inline V vmin(V a, V b) { return _mm256_min_ps(a, b); }
static inline V vand(V a, uint32_t m) { return _mm256_and_ps(a, _mm256_castsi256_ps(_mm256_set1_epi32((int)m))); }
static inline M vlt(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
static inline V vsel(M m, V a, V b) { return _mm256_blendv_ps(b, a, m); }
static inline bool vany(M m) { return _mm256_movemask_ps(m) != 0; }
static inline M vinrange(V a, float lo, float hi) {
  return _mm256_and_ps(_mm256_cmp_ps(a, _mm256_set1_ps(hi), _CMP_LT_OQ), _mm256_cmp_ps(a, _mm256_set1_ps(lo), _CMP_GE_OQ));
}
static inline V vround(V a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline V vpow2i(V n) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
}
static inline V vmaskload(const float* p, int n) {
  float b[VL] = {0};
  for (int i = 0; i < n; i++) b[i] = p[i];
  return vloadu(b);
}
#elif SAE_NEON
typedef uint32x4_t M;
static inline V vsub(V a, V b) { return vsubq_f32(a, b); }
static inline V vmul(V a, V b) { return vmulq_f32(a, b); }
static inline V vdiv(V a, V b) { return vdivq_f32(a, b); }
static inline V vmax(V a, V b) { return vmaxq_f32(a, b); }
static inline V vmin(V a, V b) { return vminq_f32(a, b); }
static inline V vand(V a, uint32_t m) { return vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(a), vdupq_n_u32(m))); }
static inline M vlt(V a, V b) { return vcltq_f32(a, b); }  // false for NaN, like _CMP_LT_OQ
static inline V vsel(M m, V a, V b) { return vbslq_f32(m, a, b); }
static inline bool vany(M m) { return vmaxvq_u32(m) != 0; }
static inline M vinrange(V a, float lo, float hi) { return vandq_u32(vcltq_f32(a, vdupq_n_f32(hi)), vcgeq_f32(a, vdupq_n_f32(lo))); }
static inline V vround(V a) { return vrndnq_f32(a); }  // to nearest, ties to even (FRINTN)
static inline V vpow2i(V n) {
  return vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(vcvtnq_s32_f32(n), vdupq_n_s32(127)), 23));
}
static inline V vmaskload(const float* p, int n) {
  float b[VL] = {0};
  for (int i = 0; i < n; i++) b[i] = p[i];
  return vloadu(b);
}
#else
typedef __m128 M;
static inline V vsub(V a, V b) { return _mm_sub_ps(a, b); }
static inline V vmul(V a, V b) { return _mm_mul_ps(a, b); }
static inline V vdiv(V a, V b) { return _mm_div_ps(a, b); }
static inline V vmax(V a, V b) { return _mm_max_ps(a, b); }
static inline V vmin(V a, V b) { return _mm_min_ps(a, b); }
static inline V vand(V a, uint32_t m) { return _mm_and_ps(a, _mm_castsi128_ps(_mm_set1_epi32((int)m))); }
static inline M vlt(V a, V b) { return _mm_cmplt_ps(a, b); }
static inline V vsel(M m, V a, V b) { return _mm_or_ps(_mm_and_ps(m, a), _mm_andnot_ps(m, b)); }
static inline bool vany(M m) { return _mm_movemask_ps(m) != 0; }
static inline M vinrange(V a, float lo, float hi) { return _mm_and_ps(_mm_cmplt_ps(a, _mm_set1_ps(hi)), _mm_cmpge_ps(a, _mm_set1_ps(lo))); }
// SSE2 has no round instruction: cvtps_epi32 rounds to nearest even (the default MXCSR mode)
static inline V vround(V a) { return _mm_cvtepi32_ps(_mm_cvtps_epi32(a)); }
static inline V vpow2i(V n) {
  return _mm_castsi128_ps(_mm_slli_epi32(_mm_add_epi32(_mm_cvtps_epi32(n), _mm_set1_epi32(127)), 23));
}
static inline V vmaskload(const float* p, int n) {
  float b[VL] = {0};
  for (int i = 0; i < n; i++) b[i] = p[i];
  return vloadu(b);
}
#endif

static inline float hmax(V v) {
  float b[VL];
  vstoreu(b, v);
  float m = b[0];
  for (int i = 1; i < VL; i++) m = b[i] > m ? b[i] : m;
  return m;
}

// e^x to about 2 ulp for x in [−87.3, 88.7] (clamped outside): x = n·ln2 + r with |r| ≤ ln2/2
// (Cody–Waite: ln2 split in a part exact in float and a correction), e^r by its Taylor series to
// r⁷ (truncation error < 0.35⁸/8! ≈ 6e−9), then scaled by 2^n through the exponent bits.
static inline V vexp(V x) {
  x = vmin(vmax(x, vset1(-87.33654f)), vset1(88.72283f));
  const V n = vround(vmul(x, vset1(1.44269504088896341f)));
  V r = vfma(n, vset1(-0.693359375f), x);
  r = vfma(n, vset1(2.12194440e-4f), r);
  V p = vset1(1.0f / 5040);
  p = vfma(p, r, vset1(1.0f / 720));
  p = vfma(p, r, vset1(1.0f / 120));
  p = vfma(p, r, vset1(1.0f / 24));
  p = vfma(p, r, vset1(1.0f / 6));
  p = vfma(p, r, vset1(0.5f));
  p = vfma(p, r, vset1(1.0f));
  p = vfma(p, r, vset1(1.0f));
  // n = −127 (x near the lower clamp) would underflow the exponent field: scale in two steps
  const V n1 = vmax(n, vset1(-126.0f));
  return vmul(vmul(p, vpow2i(n1)), vpow2i(vsub(n, n1)));
}

// ------------------------------------------------------------------------------ LayerNorm

// Σ over a row with VL·4 float partial sums, combined in double: the order is fixed by d alone.
static inline double rowSum(const float* x, int d) {
  V s0 = vzero(), s1 = vzero(), s2 = vzero(), s3 = vzero();
  int i = 0;
  for (; i + 4 * VL <= d; i += 4 * VL) {
    s0 = vadd(s0, vloadu(x + i));
    s1 = vadd(s1, vloadu(x + i + VL));
    s2 = vadd(s2, vloadu(x + i + 2 * VL));
    s3 = vadd(s3, vloadu(x + i + 3 * VL));
  }
  double s = (double)hsum(s0) + (double)hsum(s1) + (double)hsum(s2) + (double)hsum(s3);
  for (; i < d; i++) s += x[i];
  return s;
}

// torch.nn.LayerNorm: (x − mean)/sqrt(var + eps)·w + b with the biased variance, two passes over
// the row (the variance of the centred values, no cancellation). y may alias x.
static void layerNorm(const float* x, int r0, int r1, int d, const float* w, const float* b, float eps, float* y) {
  for (int r = r0; r < r1; r++) {
    const float* xr = x + (size_t)r * d;
    float* yr = y + (size_t)r * d;
    const float mean = (float)(rowSum(xr, d) / d);
    const V mv = vset1(mean);
    V q0 = vzero(), q1 = vzero();
    int i = 0;
    for (; i + 2 * VL <= d; i += 2 * VL) {
      const V a = vsub(vloadu(xr + i), mv), c = vsub(vloadu(xr + i + VL), mv);
      q0 = vfma(a, a, q0);
      q1 = vfma(c, c, q1);
    }
    double var = (double)hsum(q0) + (double)hsum(q1);
    for (; i < d; i++) var += (double)(xr[i] - mean) * (xr[i] - mean);
    const float inv = (float)(1.0 / __builtin_sqrt(var / d + eps));
    const V iv = vset1(inv);
    i = 0;
    for (; i + VL <= d; i += VL) vstoreu(yr + i, vfma(vmul(vsub(vloadu(xr + i), mv), iv), vloadu(w + i), vloadu(b + i)));
    for (; i < d; i++) yr[i] = (xr[i] - mean) * inv * w[i] + b[i];
  }
}

// ------------------------------------------------------------------------------------ GELU

// gelu_new (GPT-2): 0.5·v·(1 + tanh u), u = √(2/π)·(v + 0.044715·v³), computed as v / (1 + e^(−2u))
// (the same function: 1 + tanh u = 2/(1 + e^(−2u))), which has no cancellation for negative v.
static inline V geluTanhV(V v) {
  const V u = vmul(vmul(v, vset1(0.7978845608028654f)), vfma(vmul(v, v), vset1(0.044715f), vset1(1.0f)));
  return vdiv(v, vadd(vset1(1.0f), vexp(vmul(u, vset1(-2.0f)))));
}
static void geluTanh(float* x, size_t n) {
  size_t i = 0;
  for (; i + VL <= n; i += VL) vstoreu(x + i, geluTanhV(vloadu(x + i)));
  if (i < n) {
    float b[VL] = {0};
    for (size_t j = i; j < n; j++) b[j - i] = x[j];
    vstoreu(b, geluTanhV(vloadu(b)));
    for (size_t j = i; j < n; j++) x[j] = b[j - i];
  }
}

// e^(−(w + wlo)²) for w ≥ 0 (wlo: a small correction to w) without the rounding of w² amplified
// by the exponential: w + wlo = h + l with h holding the top 12 bits of w (h² exact), w² = h² +
// (2h + l)·l, the small part applied as a second factor. (The usual splitting trick; without it
// the relative error grows like w²·2⁻²⁴.)
static inline V expMinusSquare(V w, V wlo) {
  const V h = vand(w, 0xFFFFF000u);
  const V l = vadd(vsub(w, h), wlo);
  return vmul(vexp(vmul(h, vsub(vzero(), h))), vexp(vmul(vfma(vset1(2.0f), h, l), vsub(vzero(), l))));
}

// erfc(w) for any w with float32 relative accuracy, by W. J. Cody's rational approximations
// ("Rational Chebyshev approximations for the error function", Math. Comp. 1969), the same the
// reference uses (src/kernels/lm-reference.ts): erf by an odd rational for |w| < 0.5, erfc(w) =
// e^(−w²)·R(w) above, erfc(−w) = 2 − erfc(w). Only the branches some lane needs are evaluated.
static inline V erfcV(V w, V wlo) {
  const V aw = vand(w, 0x7FFFFFFFu);
  const M small = vlt(aw, vset1(0.5f));
  V res = vzero();
  if (vany(small)) {
    const V t = vmul(w, w);
    V num = vfma(vset1(0.1857777061846031526730f), t, vset1(3.161123743870565596947f));
    num = vfma(num, t, vset1(113.8641541510501556495f));
    num = vfma(num, t, vset1(377.4852376853020208137f));
    num = vfma(num, t, vset1(3209.377589138469472562f));
    V den = vadd(t, vset1(23.60129095234412093499f));
    den = vfma(den, t, vset1(244.0246379344441733056f));
    den = vfma(den, t, vset1(1282.616526077372275645f));
    den = vfma(den, t, vset1(2844.236833439170622273f));
    res = vsub(vset1(1.0f), vdiv(vmul(w, num), den));
  }
  const M mid = vlt(aw, vset1(4.0f));
  const bool needMid = vany(vinrange(aw, 0.5f, 4.0f));
  const bool needFar = vany(vinrange(aw, 4.0f, kInf));
  V tail = vzero();
  bool anyTail = false;
  if (needMid) {
    const V x = aw;
    V num = vfma(vset1(-1.36864857382716707e-7f), x, vset1(0.564195517478973971f));
    num = vfma(num, x, vset1(7.21175825088309366f));
    num = vfma(num, x, vset1(43.1622272220567353f));
    num = vfma(num, x, vset1(152.989285046940404f));
    num = vfma(num, x, vset1(339.320816734343687f));
    num = vfma(num, x, vset1(451.918953711872942f));
    num = vfma(num, x, vset1(300.459261020161601f));
    V den = vadd(x, vset1(12.7827273196294235f));
    den = vfma(den, x, vset1(77.0001529352294730f));
    den = vfma(den, x, vset1(277.585444743988643f));
    den = vfma(den, x, vset1(638.980264465631167f));
    den = vfma(den, x, vset1(931.354094850609888f));
    den = vfma(den, x, vset1(790.950925327898027f));
    den = vfma(den, x, vset1(300.459260956983293f));
    tail = vdiv(num, den);
    anyTail = true;
  }
  if (needFar) {
    const V x = vmax(aw, vset1(4.0f));
    const V z = vdiv(vset1(1.0f), vmul(x, x));
    V num = vfma(vset1(0.0223192459734184686f), z, vset1(0.278661308609647779f));
    num = vfma(num, z, vset1(0.226956593539686930f));
    num = vfma(num, z, vset1(0.0494730910623250734f));
    num = vfma(num, z, vset1(0.00299610707703542174f));
    V den = vadd(z, vset1(1.98733201817135256f));
    den = vfma(den, z, vset1(1.05167510706793207f));
    den = vfma(den, z, vset1(0.191308926107829841f));
    den = vfma(den, z, vset1(0.0106209230528467918f));
    const V far = vdiv(vsub(vset1(0.5641895835477563f), vdiv(vmul(z, num), den)), x);
    tail = anyTail ? vsel(mid, tail, far) : far;
    anyTail = true;
  }
  if (anyTail) {
    // erfc(|w|) = e^(−w²)·R; for negative w, erfc(w) = 2 − erfc(|w|)
    // past |w| ≈ 9.3, erfc(|w|) < 2⁻¹²⁶: flushed to zero rather than scaled by a clamped e^x
    const V sgn = vsel(vlt(w, vzero()), vset1(-1.0f), vset1(1.0f));
    V e = vsel(vlt(aw, vset1(9.3f)), vmul(expMinusSquare(vmin(aw, vset1(9.3f)), vmul(wlo, sgn)), tail), vzero());
    e = vsel(vlt(w, vzero()), vsub(vset1(2.0f), e), e);
    res = vsel(small, res, e);
  }
  return res;
}

// exact GELU (GPT-NeoX): v·Φ(v) = 0.5·v·erfc(−v/√2), accurate in relative terms for negative v
// too: w = −v/√2 is carried as w + wlo (the product's rounding error by FMA, plus 1/√2's own).
static inline V geluErfV(V v) {
  const V nv = vsub(vzero(), v);
  const V c = vset1(0.70710678f);
  const V w = vmul(nv, c);
  const V wlo = vfma(nv, vset1((float)(0.70710678118654752 - (double)0.70710678f)), vfma(nv, c, vsub(vzero(), w)));
  return vmul(vmul(vset1(0.5f), v), erfcV(w, wlo));
}
static void geluErf(float* x, size_t n) {
  size_t i = 0;
  for (; i + VL <= n; i += VL) vstoreu(x + i, geluErfV(vloadu(x + i)));
  if (i < n) {
    float b[VL] = {0};
    for (size_t j = i; j < n; j++) b[j - i] = x[j];
    vstoreu(b, geluErfV(vloadu(b)));
    for (size_t j = i; j < n; j++) x[j] = b[j - i];
  }
}

static void add(float* a, const float* b, size_t n) {
  size_t i = 0;
  for (; i + VL <= n; i += VL) vstoreu(a + i, vadd(vloadu(a + i), vloadu(b + i)));
  for (; i < n; i++) a[i] += b[i];
}

// ------------------------------------------------------------------------------- rotary

// GPT-NeoX rotate_half on the first 2·half features of every head, rows [r0, r1) (row r is
// position r mod T): x1' = x1·cos − x2·sin, x2' = x2·cos + x1·sin.
static void rotary(float* x, int r0, int r1, int T, int H, int hd, int half, const float* cs, const float* sn) {
  for (int r = r0; r < r1; r++) {
    const int t = r % T;
    const float* c = cs + (size_t)t * half;
    const float* s = sn + (size_t)t * half;
    for (int h = 0; h < H; h++) {
      float* x1 = x + (size_t)r * H * hd + (size_t)h * hd;
      float* x2 = x1 + half;
      int i = 0;
      for (; i + VL <= half; i += VL) {
        const V a = vloadu(x1 + i), b = vloadu(x2 + i), cv = vloadu(c + i), sv = vloadu(s + i);
        vstoreu(x1 + i, vsub(vmul(a, cv), vmul(b, sv)));
        vstoreu(x2 + i, vfma(a, sv, vmul(b, cv)));
      }
      for (; i < half; i++) {
        const float a = x1[i], b = x2[i];
        x1[i] = a * c[i] - b * s[i];
        x2[i] = b * c[i] + a * s[i];
      }
    }
  }
}

// ------------------------------------------------------------------------------ attention

// Units [u0, u1) of (sequence b, head h, block of QB queries). Per unit, the keys 0..(last query)
// of the head are transposed into kt [hd][Tp] so that the scores of VL keys come out of one
// vector FMA chain over the head dimension (no horizontal sums); then per query the causal
// softmax (max-subtracted, e^x vectorised) and Σ p·v over the keys, scaled by 1/Σp at the end.
static void attention(const AttnJob& J) {
  const int T = J.T, H = J.H, hd = J.hd, width = H * hd;
  const int nq = (T + J.QB - 1) / J.QB;
  const int Tp = (T + VL - 1) / VL * VL;
  for (int64_t u = J.u0; u < J.u1; u++) {
    const int qb = (int)(u % nq);
    const int h = (int)((u / nq) % H);
    const int b = (int)(u / ((int64_t)nq * H));
    const int t0 = qb * J.QB, t1 = imin(T, t0 + J.QB);
    const int nk = t1;  // keys 0..t1−1
    const int nkp = (nk + VL - 1) / VL * VL;
    const size_t base = (size_t)b * T * width + (size_t)h * hd;
    for (int s = 0; s < nkp; s++) {
      const float* kr = J.k + base + (size_t)s * width;
      for (int e = 0; e < hd; e++) J.kt[(size_t)e * Tp + s] = s < nk ? kr[e] : 0.0f;
    }
    for (int t = t0; t < t1; t++) {
      const float* qr = J.q + base + (size_t)t * width;
      const int ns = t + 1;
      const int nsv = (ns + VL - 1) / VL;
      // scores, four key vectors at a time
      int sv = 0;
      for (; sv + 4 <= nsv; sv += 4) {
        V a0 = vzero(), a1 = vzero(), a2 = vzero(), a3 = vzero();
        const float* kp = J.kt + (size_t)sv * VL;
        for (int e = 0; e < hd; e++) {
          const V qe = vset1(qr[e]);
          const float* ke = kp + (size_t)e * Tp;
          a0 = vfma(qe, vloadu(ke), a0);
          a1 = vfma(qe, vloadu(ke + VL), a1);
          a2 = vfma(qe, vloadu(ke + 2 * VL), a2);
          a3 = vfma(qe, vloadu(ke + 3 * VL), a3);
        }
        const V sc = vset1(J.scale);
        vstoreu(J.s + (size_t)sv * VL, vmul(a0, sc));
        vstoreu(J.s + (size_t)(sv + 1) * VL, vmul(a1, sc));
        vstoreu(J.s + (size_t)(sv + 2) * VL, vmul(a2, sc));
        vstoreu(J.s + (size_t)(sv + 3) * VL, vmul(a3, sc));
      }
      for (; sv < nsv; sv++) {
        V a0 = vzero();
        const float* kp = J.kt + (size_t)sv * VL;
        for (int e = 0; e < hd; e++) a0 = vfma(vset1(qr[e]), vloadu(kp + (size_t)e * Tp), a0);
        vstoreu(J.s + (size_t)sv * VL, vmul(a0, vset1(J.scale)));
      }
      // softmax over keys 0..t (the lanes past t hold other keys' scores: left out of the max,
      // zeroed after the exponential)
      const int full = ns / VL;
      V mx = vset1(-kInf);
      for (int i = 0; i < full; i++) mx = vmax(mx, vloadu(J.s + (size_t)i * VL));
      float m = hmax(mx);
      for (int s = full * VL; s < ns; s++) m = J.s[s] > m ? J.s[s] : m;
      const V mv = vset1(m);
      V sum = vzero();
      for (int i = 0; i < nsv; i++) {
        V p = vexp(vsub(vloadu(J.s + (size_t)i * VL), mv));
        if ((i + 1) * VL > ns) {
          float tmp[VL];
          vstoreu(tmp, p);
          for (int l = ns - i * VL; l < VL; l++) tmp[l] = 0.0f;
          p = vloadu(tmp);
        }
        vstoreu(J.s + (size_t)i * VL, p);
        sum = vadd(sum, p);
      }
      const float inv = 1.0f / hsum(sum);
      // out = (Σ p_s·v_s)·(1/Σp), four vectors of the head dimension at a time in registers
      float* o = J.out + base + (size_t)t * width;
      const float* vb = J.v + base;
      int e0 = 0;
      for (; e0 + 4 * VL <= hd; e0 += 4 * VL) {
        V c0 = vzero(), c1 = vzero(), c2 = vzero(), c3 = vzero();
        for (int s = 0; s < ns; s++) {
          const V ps = vset1(J.s[s]);
          const float* vr = vb + (size_t)s * width + e0;
          c0 = vfma(ps, vloadu(vr), c0);
          c1 = vfma(ps, vloadu(vr + VL), c1);
          c2 = vfma(ps, vloadu(vr + 2 * VL), c2);
          c3 = vfma(ps, vloadu(vr + 3 * VL), c3);
        }
        const V iv = vset1(inv);
        vstoreu(o + e0, vmul(c0, iv));
        vstoreu(o + e0 + VL, vmul(c1, iv));
        vstoreu(o + e0 + 2 * VL, vmul(c2, iv));
        vstoreu(o + e0 + 3 * VL, vmul(c3, iv));
      }
      for (; e0 + VL <= hd; e0 += VL) {
        V c0 = vzero();
        for (int s = 0; s < ns; s++) c0 = vfma(vset1(J.s[s]), vloadu(vb + (size_t)s * width + e0), c0);
        vstoreu(o + e0, vmul(c0, vset1(inv)));
      }
      for (; e0 < hd; e0++) {
        float c = 0.0f;
        for (int s = 0; s < ns; s++) c += J.s[s] * vb[(size_t)s * width + e0];
        o[e0] = c * inv;
      }
      if (J.pattern) {
        float* pr = J.pattern + (((size_t)b * H + h) * T + t) * T;
        for (int s = 0; s < ns; s++) pr[s] = J.s[s] * inv;
        for (int s = ns; s < T; s++) pr[s] = 0.0f;
      }
    }
  }
}

// -------------------------------------------------------------------------- cross-entropy

// log Σ e^(x − max) of one row, and its max: Σ in 4·VL float partial sums added in double (a row
// of 50k terms keeps ~1e−7 relative accuracy).
static double rowLse(const float* x, int V_, float* maxOut) {
  V m0 = vset1(-kInf), m1 = m0;
  int i = 0;
  for (; i + 2 * VL <= V_; i += 2 * VL) {
    m0 = vmax(m0, vloadu(x + i));
    m1 = vmax(m1, vloadu(x + i + VL));
  }
  float m = hmax(vmax(m0, m1));
  for (; i < V_; i++) m = x[i] > m ? x[i] : m;
  const V mv = vset1(m);
  V s0 = vzero(), s1 = vzero(), s2 = vzero(), s3 = vzero();
  i = 0;
  for (; i + 4 * VL <= V_; i += 4 * VL) {
    s0 = vadd(s0, vexp(vsub(vloadu(x + i), mv)));
    s1 = vadd(s1, vexp(vsub(vloadu(x + i + VL), mv)));
    s2 = vadd(s2, vexp(vsub(vloadu(x + i + 2 * VL), mv)));
    s3 = vadd(s3, vexp(vsub(vloadu(x + i + 3 * VL), mv)));
  }
  for (; i + VL <= V_; i += VL) s0 = vadd(s0, vexp(vsub(vloadu(x + i), mv)));
  double sum = (double)hsum(s0) + (double)hsum(s1) + (double)hsum(s2) + (double)hsum(s3);
  if (i < V_) {
    float tmp[VL];
    vstoreu(tmp, vexp(vsub(vmaskload(x + i, V_ - i), mv)));
    for (int l = 0; l < V_ - i; l++) sum += tmp[l];
  }
  *maxOut = m;
  return __builtin_log(sum);
}

// loss = logsumexp(row) − row[target]
static void crossEntropy(const float* logits, int r0, int r1, int V_, const int32_t* targets, float* loss) {
  for (int r = r0; r < r1; r++) {
    const float* x = logits + (size_t)r * V_;
    float m;
    const double lse = rowLse(x, V_, &m);
    loss[r] = (float)((double)m + lse - (double)x[targets[r]]);
  }
}

// KL(softmax(p) ‖ softmax(q)) per row = Σ_j P_j·(p_j − q_j) − lse(p) + lse(q), taken on centred
// logits (p_j − max p) − (q_j − max q) so that the expectation adds values of a few units, not of
// the logits' size, and the small KL is not lost to cancellation. qStride 0: one q row for all.
static inline float rowMax(const float* x, int V_) {
  V m0 = vset1(-kInf), m1 = m0;
  int i = 0;
  for (; i + 2 * VL <= V_; i += 2 * VL) {
    m0 = vmax(m0, vloadu(x + i));
    m1 = vmax(m1, vloadu(x + i + VL));
  }
  float m = hmax(vmax(m0, m1));
  for (; i < V_; i++) m = x[i] > m ? x[i] : m;
  return m;
}

// Two passes per row: the maxima, then one pass with the exponentials of p (and of q when q has
// a row of its own) and the expectation.
static void klDivergence(const float* p, const float* q, int r0, int r1, int V_, int64_t qStride, float* out) {
  float mq0 = 0;
  const double lq0 = qStride == 0 ? rowLse(q, V_, &mq0) : 0;
  for (int r = r0; r < r1; r++) {
    const float* x = p + (size_t)r * V_;
    const float* y = q + (size_t)r * qStride;
    const float mp = rowMax(x, V_), mq = qStride == 0 ? mq0 : rowMax(y, V_);
    const V mpv = vset1(mp), mqv = vset1(mq);
    V e0 = vzero(), e1 = vzero(), s0 = vzero(), s1 = vzero(), t0 = vzero(), t1 = vzero();
    int i = 0;
    for (; i + 2 * VL <= V_; i += 2 * VL) {
      const V a0 = vsub(vloadu(x + i), mpv), a1 = vsub(vloadu(x + i + VL), mpv);
      const V c0 = vsub(vloadu(y + i), mqv), c1 = vsub(vloadu(y + i + VL), mqv);
      const V w0 = vexp(a0), w1 = vexp(a1);
      e0 = vfma(w0, vsub(a0, c0), e0);
      e1 = vfma(w1, vsub(a1, c1), e1);
      s0 = vadd(s0, w0);
      s1 = vadd(s1, w1);
      if (qStride != 0) {
        t0 = vadd(t0, vexp(c0));
        t1 = vadd(t1, vexp(c1));
      }
    }
    double e = (double)hsum(e0) + (double)hsum(e1), s = (double)hsum(s0) + (double)hsum(s1);
    double t = (double)hsum(t0) + (double)hsum(t1);
    for (; i < V_; i++) {
      const float a = x[i] - mp, c = y[i] - mq, w = __builtin_expf(a);
      e += (double)w * (double)(a - c);
      s += w;
      t += __builtin_expf(c);
    }
    // Σ P·(centred p − centred q) − log Σ e^(p−mp) + log Σ e^(q−mq); P = e^(p−mp) / s
    out[r] = (float)(e / s - __builtin_log(s) + (qStride == 0 ? lq0 : __builtin_log(t)));
  }
}

extern const LmOps kLm;
const LmOps kLm = {layerNorm, geluTanh, geluErf, add, rotary, attention, crossEntropy, klDivergence};
