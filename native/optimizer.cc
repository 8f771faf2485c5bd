// The parameter update: Σx², AdamW, the decoder-gradient projection and row normalisation, and
// the fused optimizer step, split over fixed chunks so that every sum has one order.
#include <cmath>

#include "instance.h"

#define SAE_ISA_BODY "optimizer_isa.h"
#include "isa_variants.h"

namespace sae {

double Instance::sumSquares(const float* a, size_t n) {
  const size_t chunk = 1 << 16;
  const size_t nch = (n + chunk - 1) / chunk;
  need(sums_.reserve(std::max<size_t>(nch, 1)));
  const int T = T_;
  pool().run([&](int t) {
    const size_t c0 = nch * t / T, c1 = nch * (t + 1) / T;
    for (size_t c = c0; c < c1; c++) {
      const size_t i0 = c * chunk, i1 = std::min(n, i0 + chunk);
      sums_[c] = ops_->opt->sumSquares(a + i0, i1 - i0);
    }
  });
  double s = 0;
  for (size_t c = 0; c < nch; c++) s += sums_[c];
  return s;
}

void Instance::adamw(float* p, float* g, float* m, float* v, size_t n, const float* coef) {
  const int T = T_;
  pool().run([&](int t) {
    const size_t i0 = (n * t / T) & ~size_t(15);
    const size_t i1 = t + 1 == T ? n : ((n * (t + 1) / T) & ~size_t(15));
    if (i1 > i0) ops_->opt->adamw(p + i0, g + i0, m + i0, v + i0, i1 - i0, coef);
  });
}

void Instance::projectRows(const float* W, float* g, int rows, int d) {
  const int T = T_;
  pool().run([&](int t) {
    const int r0 = (int)((int64_t)rows * t / T), r1 = (int)((int64_t)rows * (t + 1) / T);
    if (r1 > r0) ops_->opt->projectRows(W, g, r0, r1, d);
  });
}

void Instance::normalizeRows(float* W, int rows, int d) {
  const int T = T_;
  pool().run([&](int t) {
    const int r0 = (int)((int64_t)rows * t / T), r1 = (int)((int64_t)rows * (t + 1) / T);
    if (r1 > r0) ops_->opt->normalizeRows(W, r0, r1, d);
  });
}

double Instance::optimizerStep(const OptTensor* t, int F, int d, double lr, double b1, double b2, double eps, double wd,
                     double step, double maxGradNorm) {
  const size_t chunk = 1 << 16;
  const size_t nE = (t[0].n + chunk - 1) / chunk;
  const int rowsPer = std::max(1, (int)((chunk / 2) / (size_t)std::max(d, 1)));
  const size_t nD = ((size_t)F + rowsPer - 1) / rowsPer;
  const size_t total = nE + nD;
  need(sums_.reserve(std::max<size_t>(total, 1)));
  need(projC_.reserve(std::max<size_t>((size_t)F, 1)));
  const int T = T_;
  pool().run([&](int th) {
    const size_t c0 = total * th / T, c1 = total * (th + 1) / T;
    for (size_t c = c0; c < c1; c++) {
      if (c < nE) {
        const size_t i0 = c * chunk, i1 = std::min(t[0].n, i0 + chunk);
        sums_[c] = ops_->opt->sumSquares(t[0].g + i0, i1 - i0);
      } else {
        const int r0 = (int)(c - nE) * rowsPer, r1 = std::min(F, r0 + rowsPer);
        sums_[c] = ops_->opt->projectRowsNorm(t[2].p, t[2].g, projC_.data(), r0, r1, d);
      }
    }
  });
  double sq = 0;
  for (size_t c = 0; c < nE; c++) sq += sums_[c];
  sq += ops_->opt->sumSquares(t[1].g, t[1].n);
  for (size_t c = nE; c < total; c++) sq += sums_[c];
  sq += ops_->opt->sumSquares(t[3].g, t[3].n);
  const double norm = std::sqrt(sq);
  const double gs = maxGradNorm > 0 && norm > maxGradNorm ? maxGradNorm / norm : 1;
  const double c1 = 1 - std::pow(b1, step), c2 = 1 - std::pow(b2, step);
  float coefD[10] = {(float)gs,       (float)b1,       (float)(1 - b1), (float)b2,  (float)(1 - b2),
                     (float)(1 / c1), (float)(1 / c2), (float)lr,       (float)eps, (float)(1 - lr * wd)};
  float coefB[10];
  std::memcpy(coefB, coefD, sizeof(coefD));
  coefB[9] = 1.0f;  // no decay on the biases
  const size_t nW = t[0].n;
  pool().run([&](int th) {
    const size_t i0 = (nW * th / T) & ~size_t(15);
    const size_t i1 = th + 1 == T ? nW : ((nW * (th + 1) / T) & ~size_t(15));
    if (i1 > i0) ops_->opt->adamw(t[0].p + i0, t[0].g + i0, t[0].m + i0, t[0].v + i0, i1 - i0, coefD);
    const int r0 = (int)((int64_t)F * th / T), r1 = (int)((int64_t)F * (th + 1) / T);
    if (r1 > r0) ops_->opt->adamwRowsNormalize(t[2].p, t[2].g, t[2].m, t[2].v, projC_.data(), r0, r1, d, coefD);
    if (th == T - 1) {
      ops_->opt->adamw(t[1].p, t[1].g, t[1].m, t[1].v, t[1].n, coefB);
      ops_->opt->adamw(t[3].p, t[3].g, t[3].m, t[3].v, t[3].n, coefB);
    }
  });
  return norm;
}

}  // namespace sae
