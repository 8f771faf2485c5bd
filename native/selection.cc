// The selection handlers: how each selection's per-thread candidate lists grow and shrink during
// the encoder scan (the lists are finalised in encode.cc).
#include "selection.h"

#define SAE_ISA_BODY "select_isa.h"
#include "isa_variants.h"

namespace sae {

// ------------------------------------------------------------------------ handlers

static inline void tokPush(TokLists& L, float* tmp, KthFn kth, int tl, float v, int j) {
  EntJ* e = L.ent.data() + (size_t)tl * L.cap;
  size_t c = (size_t)L.cnt[tl];
  e[c++] = EntJ{v, j};
  if (c == (size_t)L.cap && c > (size_t)L.k) {
    // later features have larger j: only strictly larger values can beat the bound
    L.thr[tl] = keepLoose(e, c, (size_t)L.k, (size_t)L.cap, tmp, kth);
  }
  L.cnt[tl] = (int32_t)c;
}

void onTopK(void* sp, int j, uint32_t m, const float* row, int tl0) {
  Thread& h = *static_cast<Thread*>(sp);
  TokLists& L = h.main;
  while (m) {
    const int t = __builtin_ctz(m);
    m &= m - 1;
    const int tl = tl0 + t;
    const float v = row[t];
    if (v > L.thr[tl]) tokPush(L, h.tmpV.data(), h.kth, tl, v, j);
  }
}

void onAux(void* sp, int a, int j, uint32_t m, const float* row, int tl0) {
  Thread& h = *static_cast<Thread*>(sp);
  TokLists& L = h.aux[a];
  while (m) {
    const int t = __builtin_ctz(m);
    m &= m - 1;
    const int tl = tl0 + t;
    const float v = row[t];
    if (v > L.thr[tl]) tokPush(L, h.tmpV.data(), h.kth, tl, v, j);
  }
}

// Mutual lists are in scan order, not flat order: keep the `keep` best by (value, flat index);
// returns the worst kept entry. tmpv has room for c floats, tmp for c entries.
static EntM keepMutual(EntM* e, size_t& c, size_t keep, float* tmpv, EntM* tmp, KthFn kth) {
  for (size_t i = 0; i < c; i++) tmpv[i] = e[i].v;
  const float vk = kth(tmpv, c, keep, 31);
  size_t above = 0, eq = 0;
  for (size_t i = 0; i < c; i++) {
    const float v = tmpv[i];
    above += v > vk ? 1 : 0;
    tmp[eq] = e[i];
    eq += v == vk ? 1 : 0;
  }
  // need ≤ eq: keep the `need` entries equal to vk that come first in flat order (need = 0 when
  // exactly `keep` entries are > vk)
  const size_t need = keep - above;
  EntM worst;
  if (eq > need && need > 0) {
    std::nth_element(tmp, tmp + (need - 1), tmp + eq, BetterM());
    worst = tmp[need - 1];
  } else if (need > 0) {
    worst = tmp[0];
    for (size_t i = 1; i < eq; i++)
      if (betterM(worst, tmp[i])) worst = tmp[i];
  } else {
    // the worst of the kept (all > vk): smallest value, then largest flat index
    bool any = false;
    for (size_t i = 0; i < c; i++) {
      if (e[i].v > vk && (!any || betterM(worst, e[i]))) {
        worst = e[i];
        any = true;
      }
    }
  }
  const size_t eqOk = need > 0 ? 1 : 0;
  size_t n = 0;
  for (size_t i = 0; i < c; i++) {  // branch-free: v > vk, or v == vk and not after `worst`
    const EntM x = e[i];
    const size_t notAfter = (x.b < worst.b ? 1 : 0) | ((x.b == worst.b ? 1 : 0) & (x.j <= worst.j ? 1 : 0));
    const size_t take = (x.v > vk ? 1 : 0) | ((x.v == vk ? 1 : 0) & notAfter & eqOk);
    e[n] = x;
    n += take;
  }
  c = n;
  return worst;
}

// Shrink a thread's mutual list. Usually by a lower bound t of its M-th largest value: every
// entry below t has M better ones, and entries equal to t stay (their order is settled at the
// end), so later entries need v ≥ t. With too many ties at t, cut exactly at the M-th entry in
// (value, flat index) order instead; later entries must then beat that entry.
static void compactMutual(Thread& h) {
  float* tmpv = h.tmpV.data();
  EntM* e = h.mb.data();
  const size_t c = h.mcnt;
  for (size_t i = 0; i < c; i++) tmpv[i] = e[i].v;
  const float t = h.kth(tmpv, c, h.mkeep, 16);
  size_t n = 0;
  for (size_t i = 0; i < c; i++) n += tmpv[i] >= t ? 1 : 0;
  if (n <= h.mkeep + (h.mcap - h.mkeep) / 2) {
    n = 0;
    for (size_t i = 0; i < c; i++) {
      e[n] = e[i];
      n += tmpv[i] >= t ? 1 : 0;
    }
    h.mcnt = n;
    h.mfull = false;
    h.mthr = std::nextafter(t, -kInf);  // v ≥ t passes
  } else {
    h.mtau = keepMutual(e, h.mcnt, h.mkeep, tmpv, h.tmpM.data(), h.kth);
    h.mfull = true;
    h.mthr = std::nextafter(h.mtau.v, -kInf);  // ties at τ are then settled by position
  }
}

void onMutual(void* sp, int j, uint32_t m, const float* row, int tl0) {
  Thread& h = *static_cast<Thread*>(sp);
  while (m) {
    const int t = __builtin_ctz(m);
    m &= m - 1;
    const EntM e{row[t], h.tok0 + tl0 + t, j};
    if (h.mfull ? !betterM(e, h.mtau) : !(e.v > h.mthr)) continue;
    h.mb[h.mcnt++] = e;
    if (h.mcnt == h.mcap && h.mcnt > h.mkeep) compactMutual(h);
  }
}

void onFeature(void* sp, int j, uint32_t m, const float* row, int tl0) {
  Thread& h = *static_cast<Thread*>(sp);
  EntB* e = h.fb.data() + h.foff[j];
  size_t c = (size_t)h.fcnt[j];
  const size_t cap = (size_t)h.fcap[j];
  const size_t keep = (size_t)h.fkeep[j];
  if (keep <= (size_t)kSmallKeep) {
    // small capacities: the list is exactly this thread's best `keep` so far, sorted by value
    // (equal values in token order), so the threshold rises with every insertion
    while (m) {
      const int t = __builtin_ctz(m);
      m &= m - 1;
      const float v = row[t];
      if (!(v > h.fthr[j])) continue;
      size_t i = c < keep ? c++ : keep - 1;  // when full, the worst kept makes room
      while (i > 0 && e[i - 1].v < v) {
        e[i] = e[i - 1];
        i--;
      }
      e[i] = EntB{v, tl0 + t};
      if (c == keep) h.fthr[j] = e[keep - 1].v;  // later tokens lose ties
    }
    h.fcnt[j] = (int32_t)c;
    return;
  }
  while (m) {
    const int t = __builtin_ctz(m);
    m &= m - 1;
    const float v = row[t];
    if (!(v > h.fthr[j])) continue;
    e[c++] = EntB{v, tl0 + t};
    if (c == cap && c > (size_t)h.fkeep[j]) {
      h.fthr[j] = keepLoose(e, c, (size_t)h.fkeep[j], cap, h.tmpV.data(), h.kth);  // later tokens have larger b
    }
  }
  h.fcnt[j] = (int32_t)c;
}

void onRelu(void* sp, int j, uint32_t m, const float* row, int tl0) {
  Thread& h = *static_cast<Thread*>(sp);
  if (h.oom) return;
  const size_t need = h.rn + (size_t)__builtin_popcount(m);
  if (need > h.rl.capacity() && !h.rl.reserve(std::max(need, h.rl.capacity() * 2), h.rn)) {
    h.oom = true;
    return;
  }
  while (m) {
    const int t = __builtin_ctz(m);
    m &= m - 1;
    h.rl[h.rn++] = ReluEnt{tl0 + t, j, row[t]};
    h.rcount[tl0 + t]++;
  }
}


}  // namespace sae
