// The selections' candidate lists (issue 3): each thread keeps, per token / per feature / for the
// whole batch, the candidates that may still make the cut while the encoder scan hands it tiles;
// the handlers below are called for the (rare, once thresholds have risen) entries that pass the
// vector filter. The selections reproduce src/sae/selection.ts exactly (same tie rules) given the
// same z'.
#pragma once

#include <cmath>

#include "instance.h"

namespace sae {

// Lists kept in key order (per-token lists in feature order, per-feature lists in token order):
// keep the `keep` best in place and in order, ties at the boundary to the earlier entries; returns
// the value of the worst kept entry. tmpv has room for c floats.
// (Every value in these lists is > 0.)

template <class E>
static float keepOrdered(E* e, size_t& c, size_t keep, float* tmpv, KthFn kth) {
  for (size_t i = 0; i < c; i++) tmpv[i] = e[i].v;
  const float vk = kth(tmpv, c, keep, 31);
  size_t above = 0;
  for (size_t i = 0; i < c; i++) above += tmpv[i] > vk ? 1 : 0;
  size_t eq = keep - above;
  size_t n = 0;
  for (size_t i = 0; i < c; i++) {  // branch-free in-place compaction (n ≤ i)
    const float v = tmpv[i];
    const size_t isEq = v == vk ? 1 : 0;
    const size_t take = (v > vk ? 1 : 0) | (isEq & (eq > 0 ? 1 : 0));
    e[n] = e[i];
    n += take;
    eq -= isEq & take;
  }
  c = n;
  return vk;
}

// During the scan a list only has to shrink, not to hold exactly `keep`: drop what lies below a
// lower bound t of the keep-th largest value (16 bits of it, half the work of the exact search)
// and keep every v ≥ t — at least `keep` entries; returns t. Later entries need v > t (lists in
// key order: the ≥ keep entries ≥ t all come first). Falls back to the exact cut when ties at t
// would leave the list too full to make progress.
template <class E>
static float keepLoose(E* e, size_t& c, size_t keep, size_t cap, float* tmpv, KthFn kth) {
  for (size_t i = 0; i < c; i++) tmpv[i] = e[i].v;
  const float t = kth(tmpv, c, keep, 16);
  size_t n = 0;
  for (size_t i = 0; i < c; i++) n += tmpv[i] >= t ? 1 : 0;
  if (n > keep + (cap - keep) / 2) return keepOrdered(e, c, keep, tmpv, kth);
  n = 0;
  for (size_t i = 0; i < c; i++) {
    e[n] = e[i];
    n += tmpv[i] >= t ? 1 : 0;
  }
  c = n;
  return t;
}

struct BetterM {
  bool operator()(const EntM& x, const EntM& y) const { return betterM(x, y); }
};

// Feature Choice lists this short are kept sorted instead of compacted in bulk.
constexpr int kSmallKeep = 8;

static size_t slackCap(int64_t keep, int64_t limit) {
  if (keep <= 0) return 0;
  if (keep >= limit) return (size_t)limit;
  const int64_t c = keep + (keep <= 64 ? std::max<int64_t>(3 * keep, 32) : keep / 4);
  return (size_t)std::min(c, limit);
}

// Consumer handlers (see Consumer in isa.h); sp is the thread's Thread.
void onTopK(void* sp, int j, uint32_t m, const float* row, int tl0);
void onAux(void* sp, int a, int j, uint32_t m, const float* row, int tl0);
void onMutual(void* sp, int j, uint32_t m, const float* row, int tl0);
void onFeature(void* sp, int j, uint32_t m, const float* row, int tl0);
void onRelu(void* sp, int j, uint32_t m, const float* row, int tl0);

}  // namespace sae
