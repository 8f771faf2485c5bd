// Native SAE kernels (issue 3): a Node-API addon implementing the numeric hot path of
// src/kernels/types.ts `SaeKernels` for float32 on x86-64.
//
// - Encoder: a packed, register-blocked SGEMM (AVX-512, AVX2/FMA or SSE2 micro-kernel, chosen at
//   run time) computed in feature blocks; every MR×NR tile of z' = (x − b_dec)·W_enc + b_enc is
//   consumed by the selection while it is still in L1 (TopK, Mutual Choice, Feature Choice, ReLU,
//   thresholds, and the masked TopK of aux_k / aux_zipf), so the B×F matrix never exists.
// - Sparse decode (by token), decode backward and encoder backward (by feature, through a CSC
//   transpose of the codes), fused AdamW, Σx², decoder-gradient projection, row normalisation,
//   and the whole parameter update fused into two passes (optimizerStep).
// - Work is partitioned statically (tokens for the encoder and decode, features for the
//   backward passes, fixed chunks for reductions): no two threads write the same address and
//   every summation order is fixed, so results are identical from run to run.
//
// The selections reproduce src/sae/selection.ts exactly (same tie rules) given the same z'.

#include <node_api.h>
#include <sched.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <string>

#include "common.h"

// ------------------------------------------------------------- instruction-set variants
#if SAE_X86
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi,bmi2,popcnt")
#define SAE_ISA_NS isa512
#define SAE_ISA_LEVEL 512
#include "isa_body.h"
#undef SAE_ISA_NS
#undef SAE_ISA_LEVEL
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi,popcnt")
#define SAE_ISA_NS isa256
#define SAE_ISA_LEVEL 256
#include "isa_body.h"
#undef SAE_ISA_NS
#undef SAE_ISA_LEVEL
#pragma GCC pop_options

#define SAE_ISA_NS isa128
#define SAE_ISA_LEVEL 128
#include "isa_body.h"
#undef SAE_ISA_NS
#undef SAE_ISA_LEVEL
#else
#error "the native SAE kernels need x86-64"
#endif

namespace sae {

// Bumped whenever the JS-facing signatures change, so that a stale build is detected.
constexpr int kApiVersion = 2;

static const float kInf = std::numeric_limits<float>::infinity();

struct UserErr {
  std::string msg;
  bool range;
};
[[noreturn]] static void fail(const std::string& m) { throw UserErr{m, false}; }
[[noreturn]] static void failRange(const std::string& m) { throw UserErr{m, true}; }

// ----------------------------------------------------------------------- ISA selection

static bool cpuHas512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma");
}
static bool cpuHas256() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
static const IsaOps* isaByName(const std::string& name) {
  if (name == "avx512") return cpuHas512() ? &isa512::kOps : nullptr;
  if (name == "avx2") return cpuHas256() ? &isa256::kOps : nullptr;
  if (name == "sse2") return &isa128::kOps;
  return nullptr;
}
static const IsaOps* bestIsa() {
  const char* env = std::getenv("SAE_ISA");
  if (env && *env) {
    const IsaOps* o = isaByName(env);
    if (o) return o;
  }
  if (cpuHas512()) return &isa512::kOps;
  if (cpuHas256()) return &isa256::kOps;
  return &isa128::kOps;
}

// --------------------------------------------------------------------------- the pool

static int poolSizeFromEnv() {
  const char* env = std::getenv("SAE_THREADS");
  if (env && *env) {
    const int n = std::atoi(env);
    if (n >= 1 && n <= 256) return n;
  }
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n >= 1) return std::min(n, 64);
  }
  const unsigned h = std::thread::hardware_concurrency();
  return h >= 1 ? (int)std::min(h, 64u) : 1;
}

static Pool& pool() {
  // Intentionally leaked: worker threads live for the life of the process.
  static Pool* p = new Pool(poolSizeFromEnv());
  return *p;
}

// ------------------------------------------------------------------------ the instance

using KthFn = float (*)(const float*, size_t, size_t, int);

struct TokLists {
  int k = 0;    // keep
  int cap = 0;  // room per token
  Buf<EntJ> ent;
  Buf<int32_t> cnt;
  Buf<float> thr;
};

struct ReluEnt {
  int32_t tl;
  int32_t j;
  float v;
};

struct Thread {
  int tok0 = 0;
  int ntok = 0;
  Buf<float> Xp, Wp, tile;
  TokLists main;
  TokLists aux[kMaxAux];
  Buf<float> tmpV;
  KthFn kth = nullptr;
  // Mutual Choice
  Buf<EntM> mb;
  Buf<EntM> tmpM;
  size_t mcnt = 0, mcap = 0, mkeep = 0;
  float mthr = 0;
  EntM mtau{};
  bool mfull = false;
  // Feature Choice
  Buf<EntB> fb;
  Buf<int64_t> foff;
  Buf<int32_t> fcnt, fkeep, fcap;
  Buf<float> fthr;
  // ReLU / thresholds
  Buf<ReluEnt> rl;
  size_t rn = 0;
  Buf<int32_t> rcount;
  bool oom = false;
  // sampling z' at given entries (dense decode backward)
  const int32_t* sRowPtr = nullptr;
  const int32_t* sIndex = nullptr;
  float* sOut = nullptr;
  int NR = 0;
  Buf<int32_t> scur;
  // dense accumulation scratch
  Buf<float> Ap, Bp;
  // finalisation
  Buf<int32_t> tokCount;
  size_t total = 0;
  Consumer cons;
};

struct Dest {
  int32_t* rowPtr;
  int32_t* index;
  float* value;
};

// A JS destination for a SparseCodes (rowPtr length ≥ B+1 checked by the caller).
struct Out {
  int32_t* rowPtr = nullptr;
  int32_t* index = nullptr;
  float* value = nullptr;
  size_t cap = 0;
};

// Codes that did not fit the caller's arrays wait here until emit().
struct Result {
  Buf<int32_t> rowPtr, index;
  Buf<float> value;
  size_t nnz = 0;
  int B = 0;
  bool pending = false;
};

enum SelKind : int {
  kSelNone = 0,
  kSelDense = 1,
  kSelTopK = 2,
  kSelMutual = 3,
  kSelFeature = 4,
  kSelRelu = 5,
  kSelJumpRelu = 6,
  kSelGlobal = 7,
};

struct SelSpec {
  int kind = kSelNone;
  int64_t num = 0;               // k or M
  const int32_t* cap = nullptr;  // feature capacities (F)
  const float* thr = nullptr;    // jumprelu thresholds (F)
  double gthr = 0;               // global threshold
  float* dense = nullptr;        // kSelDense output (B×F)
};

struct AuxSpec {
  const uint8_t* mask;
  int64_t k;
};

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

static void onTopK(void* sp, int j, uint32_t m, const float* row, int tl0) {
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

static void onAux(void* sp, int a, int j, uint32_t m, const float* row, int tl0) {
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

static void onMutual(void* sp, int j, uint32_t m, const float* row, int tl0) {
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

static void onFeature(void* sp, int j, uint32_t m, const float* row, int tl0) {
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

static void onRelu(void* sp, int j, uint32_t m, const float* row, int tl0) {
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

// z' of a tile at the entries of its tokens that fall in its features (scan order: a token's
// features ascend, so one cursor per token suffices).
static void onSample(void* sp, const float* tile, int rows, int j0, int tl0, uint32_t valid) {
  Thread& h = *static_cast<Thread*>(sp);
  const int jEnd = j0 + rows;
  const int NR = h.NR;
  while (valid) {
    const int t = __builtin_ctz(valid);
    valid &= valid - 1;
    const int tl = tl0 + t;
    const int b = h.tok0 + tl;
    int p = h.scur[tl];
    const int end = h.sRowPtr[b + 1];
    while (p < end && h.sIndex[p] < jEnd) {
      h.sOut[p] = tile[(h.sIndex[p] - j0) * NR + t];
      p++;
    }
    h.scur[tl] = p;
  }
}

// ------------------------------------------------------------------------ instance

class Instance {
 public:
  Instance(int d, int F, int maxB, const IsaOps* ops) : d_(d), F_(F), maxB_(maxB), ops_(ops), T_(pool().size()) {
    th_.resize(T_);
    // L2-resident feature blocks of about 384 KiB
    nb_ = (int)std::max<int64_t>(1, std::min<int64_t>(64, (384 * 1024) / ((int64_t)ops_->MR * d_ * 4)));
  }

  const IsaOps* ops() const { return ops_; }
  int d() const { return d_; }
  int F() const { return F_; }
  int maxB() const { return maxB_; }
  int threads() const { return T_; }

  // z' = (x − b_dec)·W_enc + b_enc (W given) or z' given (z), then the selection and the aux
  // selections. outs[0] is the main output (selections only), then one per aux.
  void encode(const float* W, const float* bEnc, const float* bDec, const float* x, const float* z, int B,
              float* xc, const SelSpec& sel, const AuxSpec* aux, int nAux, const Out* outs, int64_t* nnz,
              bool* written) {
    if (B < 0 || B > maxB_) failRange("batch of " + std::to_string(B) + " exceeds kernel capacity " + std::to_string(maxB_));
    if (nAux > kMaxAux) failRange("at most " + std::to_string(kMaxAux) + " aux selections");
    const int T = T_;
    const int d = d_, F = F_;
    const bool gemm = W != nullptr;
    const int NR = ops_->NR;
    const int kind = sel.kind;
    const double t0 = now();

    // ---- set up every thread's state (all allocation happens here, on the calling thread)
    if (kind == kSelRelu || kind == kSelJumpRelu || kind == kSelGlobal) {
      need(cut_.reserve((size_t)F));
      for (int j = 0; j < F; j++) {
        float c = 0.0f;
        if (kind == kSelJumpRelu) c = std::max(sel.thr[j], 0.0f);
        if (kind == kSelGlobal) c = std::max((float)sel.gthr, 0.0f);
        if (kind == kSelJumpRelu && std::isnan(sel.thr[j])) c = sel.thr[j];
        if (kind == kSelGlobal && std::isnan(sel.gthr)) c = (float)sel.gthr;
        cut_[j] = c;
      }
    }
    int64_t featKeepTotal = 0;
    int64_t M = 0;
    if (kind == kSelMutual) M = std::min<int64_t>(sel.num, (int64_t)B * F);
    for (int t = 0; t < T; t++) {
      Thread& h = th_[t];
      h.kth = ops_->kthLargest;
      h.tok0 = (int)((int64_t)B * t / T);
      h.ntok = (int)((int64_t)B * (t + 1) / T) - h.tok0;
      const size_t padded = (size_t)((h.ntok + NR - 1) / NR) * NR + NR;
      if (gemm) {
        need(h.Xp.reserve(ops_->packedXFloats(h.ntok, d)));
        need(h.Wp.reserve(ops_->packedWFloats(nb_, d)));
      }
      need(h.tile.reserve((size_t)ops_->MR * NR));
      Consumer& c = h.cons;
      c = Consumer();
      c.st = &h;
      c.tok0 = h.tok0;
      c.F = F;
      size_t tmpV = 1;
      switch (kind) {
        case kSelDense:
          c.mode = kModeDense;
          c.denseOut = sel.dense;
          break;
        case kSelTopK: {
          c.mode = kModeToken;
          c.onMain = onTopK;
          setupTok(h.main, std::min<int64_t>(sel.num, F), h.ntok, padded);
          c.tokThr = h.main.thr.data();
          tmpV = std::max<size_t>(tmpV, (size_t)h.main.cap);
          break;
        }
        case kSelMutual: {
          c.mode = kModeGlobal;
          c.onMain = onMutual;
          const int64_t all = (int64_t)h.ntok * F;
          h.mkeep = (size_t)std::min(M, all);
          h.mcap = slackCap((int64_t)h.mkeep, all);
          if (h.mkeep > 0 && (int64_t)h.mcap < all) h.mcap = std::max<size_t>(h.mcap, 2 * h.mkeep + 4096);
          h.mcap = std::min<size_t>(h.mcap, (size_t)all);
          need(h.mb.reserve(std::max<size_t>(h.mcap, 1)));
          need(h.rcount.reserve((size_t)h.ntok + 1));
          need(h.tmpM.reserve(std::max<size_t>(h.mcap, 1)));
          tmpV = std::max(tmpV, h.mcap);
          h.mcnt = 0;
          h.mfull = false;
          h.mthr = h.mkeep > 0 ? 0.0f : kInf;
          c.globalThr = &h.mthr;
          break;
        }
        case kSelFeature: {
          c.mode = kModeFeature;
          c.onMain = onFeature;
          need(h.foff.reserve((size_t)F + 1));
          need(h.fcnt.reserve((size_t)F));
          need(h.fkeep.reserve((size_t)F));
          need(h.fcap.reserve((size_t)F));
          need(h.fthr.reserve((size_t)F));
          int64_t off = 0;
          size_t widest = 1;
          for (int j = 0; j < F; j++) {
            const int64_t keepAll = std::min<int64_t>(std::max<int32_t>(sel.cap[j], 0), B);
            if (t == 0) featKeepTotal += keepAll;
            const int64_t keep = std::min<int64_t>(keepAll, h.ntok);
            const size_t cap = keep <= 0 ? 0 : keep <= kSmallKeep ? (size_t)keep : (keep >= h.ntok ? (size_t)h.ntok : slackCap(keep, h.ntok));
            h.fkeep[j] = (int32_t)keep;
            h.fcap[j] = (int32_t)cap;
            h.fcnt[j] = 0;
            h.fthr[j] = keep > 0 ? 0.0f : kInf;
            h.foff[j] = off;
            off += (int64_t)cap;
            widest = std::max(widest, cap);
          }
          h.foff[F] = off;
          need(h.fb.reserve(std::max<int64_t>(off, 1)));
          tmpV = std::max(tmpV, widest);
          c.featThr = h.fthr.data();
          break;
        }
        case kSelRelu:
        case kSelJumpRelu:
        case kSelGlobal: {
          c.mode = kModeFeature;
          c.onMain = onRelu;
          c.featThr = cut_.data();
          need(h.rl.reserve((size_t)h.ntok * std::min(F, 64) + 1024));
          need(h.rcount.reserve((size_t)h.ntok + 1));
          h.rn = 0;
          h.oom = false;
          break;
        }
        default:
          c.mode = kModeNone;
          break;
      }
      c.nAux = nAux;
      c.onAux = onAux;
      for (int a = 0; a < nAux; a++) {
        setupTok(h.aux[a], std::min<int64_t>(aux[a].k, F), h.ntok, padded);
        c.auxMask[a] = aux[a].mask;
        c.auxThr[a] = h.aux[a].thr.data();
        tmpV = std::max<size_t>(tmpV, (size_t)h.aux[a].cap);
      }
      need(h.tmpV.reserve(tmpV));
    }

    // ---- the encoder pass
    const double tSetup = now();
    pool().run([&](int t) {
      Thread& h = th_[t];
      if (kind == kSelTopK) resetTok(h.main, h.ntok);
      for (int a = 0; a < nAux; a++) resetTok(h.aux[a], h.ntok);
      if (kind == kSelRelu || kind == kSelJumpRelu || kind == kSelGlobal)
        std::memset(h.rcount.data(), 0, sizeof(int32_t) * (size_t)h.ntok);
      if (h.ntok == 0) return;
      ScanJob job;
      job.W = W;
      job.bEnc = bEnc;
      job.dense = z;
      job.d = d;
      job.F = F;
      job.tok0 = h.tok0;
      job.ntok = h.ntok;
      job.nb = nb_;
      job.tile = h.tile.data();
      job.c = &h.cons;
      if (gemm) {
        ops_->packX(x, bDec, xc, h.tok0, h.ntok, d, h.Xp.data());
        job.Xp = h.Xp.data();
        job.Wp = h.Wp.data();
      }
      ops_->scan(job);
    });
    for (int t = 0; t < T; t++)
      if (th_[t].oom) fail("out of memory while collecting the selected entries");

    const double tScan = now();
    // ---- emit
    int o = 0;
    if (kind >= kSelTopK) {
      int64_t n = 0;
      switch (kind) {
        case kSelTopK:
          n = finalizeTok(-1, B, outs[0], res_[0], written[0]);
          break;
        case kSelMutual:
          n = finalizeMutual(M, B, outs[0], res_[0], written[0]);
          break;
        case kSelFeature:
          n = finalizeFeature(sel.cap, featKeepTotal, B, outs[0], res_[0], written[0]);
          break;
        default:
          n = finalizeRelu(B, outs[0], res_[0], written[0]);
          break;
      }
      nnz[0] = n;
      o = 1;
    }
    for (int a = 0; a < nAux; a++) nnz[o + a] = finalizeTok(a, B, outs[o + a], res_[o + a], written[o + a]);
    if (profile_) {
      const double tEnd = now();
      std::fprintf(stderr, "sae-native encode kind=%d B=%d aux=%d: setup %.2f ms, scan %.2f ms, finalize %.2f ms\n", kind, B, nAux,
                   (tSetup - t0) * 1e3, (tScan - tSetup) * 1e3, (tEnd - tScan) * 1e3);
    }
  }

  // Copy a pending result into (larger) caller arrays.
  int64_t emitChecked(int which, const Out& out, size_t rowPtrLen) {
    if (which < 0 || which > kMaxAux) failRange("emit: no such output");
    Result& r = res_[which];
    if (!r.pending) fail("emit: nothing pending for this output");
    if (out.cap < r.nnz) failRange("emit: arrays too small");
    if (rowPtrLen < (size_t)r.B + 1) failRange("emit: rowPtr too small");
    std::memcpy(out.rowPtr, r.rowPtr.data(), sizeof(int32_t) * ((size_t)r.B + 1));
    std::memcpy(out.index, r.index.data(), sizeof(int32_t) * r.nnz);
    std::memcpy(out.value, r.value.data(), sizeof(float) * r.nnz);
    r.pending = false;
    return (int64_t)r.nnz;
  }

  // Codes this dense (ReLU early in training) go through GEMMs: above about 1/12 of the B×F entries,
  // a dense pass at ~500 GFLOP/s costs less than one row of W per entry.
  bool denseCodes(int64_t nnz, int B) const { return (double)nnz * 12.0 > (double)B * (double)F_; }

  void decode(const float* Wdec, const float* bias, const int32_t* rowPtr, const int32_t* index, const float* value,
              int B, float* out) {
    const int T = T_;
    if (denseCodes((int64_t)rowPtr[B] - rowPtr[0], B)) {
      // out[b] = bias + Σ_j z_bj·Wdec[j]: columns = tokens, k = features
      const int d = d_;
      prepareAccum((B + T - 1) / T + 1);
      pool().run([&](int t) {
        const int c0 = (int)((int64_t)B * t / T), c1 = (int)((int64_t)B * (t + 1) / T);
        for (int b = c0; b < c1; b++) {
          float* o = out + (int64_t)b * d;
          for (int i = 0; i < d; i++) o[i] = bias ? bias[i] : 0.0f;
        }
        if (c1 > c0) ops_->denseAccum(accumJob(t, c0, c1, F_, rowPtr, index, nullptr, value, Wdec, out));
      });
      return;
    }
    // token ranges of about equal cost (entries + 1 per token)
    std::vector<int> cut(T + 1);
    const int64_t base = rowPtr[0];
    const int64_t total = (int64_t)rowPtr[B] - base + B;
    cut[0] = 0;
    cut[T] = B;
    for (int t = 1; t < T; t++) {
      const int64_t target = total * t / T;
      int lo = cut[t - 1], hi = B;
      while (lo < hi) {
        const int mid = (lo + hi) / 2;
        if ((int64_t)rowPtr[mid] - base + mid < target) lo = mid + 1;
        else hi = mid;
      }
      cut[t] = lo;
    }
    pool().run([&](int t) {
      if (cut[t] < cut[t + 1]) ops_->decodeRows(Wdec, bias, rowPtr, index, value, cut[t], cut[t + 1], d_, out);
    });
  }

  void decodeBackward(const float* Wdec, const int32_t* rowPtr, const int32_t* index, const float* value, int B,
                      const float* dOut, float* gWdec, float* dz) {
    const int T = T_;
    if (denseCodes((int64_t)rowPtr[B] - rowPtr[0], B)) {
      // dz[e] = dOut[b]·Wdec[j]: the encoder's GEMM on (dOut, Wdec), sampled at the entries
      sampleProducts(Wdec, dOut, rowPtr, index, B, dz);
      // gWdec[j] += Σ_b z_bj·dOut[b]: columns = features, k = tokens (the codes by token)
      prepareAccum((F_ + T - 1) / T + 1);
      pool().run([&](int t) {
        const int c0 = (int)((int64_t)F_ * t / T), c1 = (int)((int64_t)F_ * (t + 1) / T);
        if (c1 > c0) ops_->denseAccum(accumJobByK(t, c0, c1, B, rowPtr, index, value, nullptr, dOut, gWdec));
      });
      return;
    }
    buildCsc(rowPtr, index, B);
    std::vector<int> cut;
    splitFeatures(1, cut);
    pool().run([&](int t) {
      if (cut[t] < cut[t + 1])
        ops_->decodeBackwardCols(Wdec, colPtr_.data(), colEnt_.data(), colTok_.data(), value, dOut, cut[t], cut[t + 1],
                                 d_, gWdec, dz);
    });
  }

  void encoderBackward(const float* WencT, const float* xc, const int32_t* rowPtr, const int32_t* index, int B,
                       const float* dz, float* gWencT, float* gBenc, float* gBdec) {
    const int T = T_;
    const int chunk = kChunk;
    const int nch = (F_ + chunk - 1) / chunk;
    need(partial_.reserve((size_t)nch * d_));
    if (denseCodes((int64_t)rowPtr[B] - rowPtr[0], B)) {
      // gWencT[j] += Σ_b dz_bj·xc[b] and s_j = Σ_b dz_bj: columns = features, k = tokens
      prepareAccum((F_ + T - 1) / T + 1);
      need(colSum_.reserve((size_t)F_));
      float* sj = colSum_.data();
      pool().run([&](int t) {
        // whole chunks per thread, so that the b_dec partials below need no other thread's s_j
        const int nchT = (int)((int64_t)nch * t / T), nchT1 = (int)((int64_t)nch * (t + 1) / T);
        const int c0 = std::min(F_, nchT * chunk), c1 = std::min(F_, nchT1 * chunk);
        if (c1 <= c0) return;
        std::memset(sj + c0, 0, sizeof(float) * (size_t)(c1 - c0));
        ops_->denseAccum(accumJobByK(t, c0, c1, B, rowPtr, index, dz, sj, xc, gWencT));
        for (int j = c0; j < c1; j++) gBenc[j] += sj[j];
        ops_->weightedRowSum(WencT, sj, c0, c1, d_, chunk, partial_.data());
      });
    } else {
      // gWencT, gBenc and the b_dec gradient partials by feature
      buildCsc(rowPtr, index, B);
      std::vector<int> cut;
      splitFeatures(chunk, cut);
      pool().run([&](int t) {
        if (cut[t] < cut[t + 1])
          ops_->encoderBackwardCols(WencT, xc, colPtr_.data(), colEnt_.data(), colTok_.data(), dz, cut[t], cut[t + 1], d_,
                                    chunk, gWencT, gBenc, partial_.data());
      });
    }
    // b_dec gradient: fixed chunk order, independent of the thread count
    const int d = d_;
    for (int c = 0; c < nch; c++) {
      const float* pc = partial_.data() + (size_t)c * d;
      for (int i = 0; i < d; i++) gBdec[i] -= pc[i];
    }
  }

  double sumSquares(const float* a, size_t n) {
    const size_t chunk = 1 << 16;
    const size_t nch = (n + chunk - 1) / chunk;
    need(sums_.reserve(std::max<size_t>(nch, 1)));
    const int T = T_;
    pool().run([&](int t) {
      const size_t c0 = nch * t / T, c1 = nch * (t + 1) / T;
      for (size_t c = c0; c < c1; c++) {
        const size_t i0 = c * chunk, i1 = std::min(n, i0 + chunk);
        sums_[c] = ops_->sumSquares(a + i0, i1 - i0);
      }
    });
    double s = 0;
    for (size_t c = 0; c < nch; c++) s += sums_[c];
    return s;
  }

  void adamw(float* p, float* g, float* m, float* v, size_t n, const float* coef) {
    const int T = T_;
    pool().run([&](int t) {
      const size_t i0 = (n * t / T) & ~size_t(15);
      const size_t i1 = t + 1 == T ? n : ((n * (t + 1) / T) & ~size_t(15));
      if (i1 > i0) ops_->adamw(p + i0, g + i0, m + i0, v + i0, i1 - i0, coef);
    });
  }

  void projectRows(const float* W, float* g, int rows, int d) {
    const int T = T_;
    pool().run([&](int t) {
      const int r0 = (int)((int64_t)rows * t / T), r1 = (int)((int64_t)rows * (t + 1) / T);
      if (r1 > r0) ops_->projectRows(W, g, r0, r1, d);
    });
  }

  void normalizeRows(float* W, int rows, int d) {
    const int T = T_;
    pool().run([&](int t) {
      const int r0 = (int)((int64_t)rows * t / T), r1 = (int)((int64_t)rows * (t + 1) / T);
      if (r1 > r0) ops_->normalizeRows(W, r0, r1, d);
    });
  }

  // The whole parameter update (SaeKernels.optimizerStep) in two passes over memory. t: WencT, bEnc,
  // Wdec, bDec. Pass 1: per W_dec row the projection coefficient and the squared norm of the
  // projected gradient, and Σg² of the other gradients, as partial sums over fixed chunks (their
  // bounds depend on the sizes only) added in order, so the norm is the same for any thread count.
  // Pass 2: AdamW with the clip scale folded in; W_dec row by row, each row renormalised right
  // after its update. Returns the pre-clip global gradient norm.
  struct OptTensor {
    float* p;
    float* g;
    float* m;
    float* v;
    size_t n;
  };
  double optimizerStep(const OptTensor* t, int F, int d, double lr, double b1, double b2, double eps, double wd,
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
          sums_[c] = ops_->sumSquares(t[0].g + i0, i1 - i0);
        } else {
          const int r0 = (int)(c - nE) * rowsPer, r1 = std::min(F, r0 + rowsPer);
          sums_[c] = ops_->projectRowsNorm(t[2].p, t[2].g, projC_.data(), r0, r1, d);
        }
      }
    });
    double sq = 0;
    for (size_t c = 0; c < nE; c++) sq += sums_[c];
    sq += ops_->sumSquares(t[1].g, t[1].n);
    for (size_t c = nE; c < total; c++) sq += sums_[c];
    sq += ops_->sumSquares(t[3].g, t[3].n);
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
      if (i1 > i0) ops_->adamw(t[0].p + i0, t[0].g + i0, t[0].m + i0, t[0].v + i0, i1 - i0, coefD);
      const int r0 = (int)((int64_t)F * th / T), r1 = (int)((int64_t)F * (th + 1) / T);
      if (r1 > r0) ops_->adamwRowsNormalize(t[2].p, t[2].g, t[2].m, t[2].v, projC_.data(), r0, r1, d, coefD);
      if (th == T - 1) {
        ops_->adamw(t[1].p, t[1].g, t[1].m, t[1].v, t[1].n, coefB);
        ops_->adamw(t[3].p, t[3].g, t[3].m, t[3].v, t[3].n, coefB);
      }
    });
    return norm;
  }

 private:
  static constexpr int kChunk = 256;
  static double now() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
  }
  const bool profile_ = std::getenv("SAE_PROFILE") != nullptr;

  static void need(bool ok) {
    if (!ok) fail("out of memory (native kernel scratch)");
  }

  static constexpr int kAccumK = 256;

  // Scratch for denseAccum on every thread (cols: the most columns one thread gets).
  void prepareAccum(int cols) {
    const size_t nrp = (size_t)(d_ + ops_->MR - 1) / ops_->MR;
    for (int t = 0; t < T_; t++) {
      Thread& h = th_[t];
      need(h.Ap.reserve(nrp * ((size_t)kAccumK * ops_->MR + ops_->MR)));
      need(h.Bp.reserve((size_t)kAccumK * ops_->NR));
      need(h.tile.reserve((size_t)ops_->MR * ops_->NR));
      need(h.scur.reserve((size_t)std::max(cols, kAccumK) + 1));
    }
  }
  AccumJob accumJobByK(int t, int c0, int c1, int K, const int32_t* kPtr, const int32_t* kCols, const float* val,
                       float* colSum, const float* dense, float* out) {
    AccumJob J = accumJob(t, c0, c1, K, nullptr, nullptr, nullptr, val, dense, out);
    J.kPtr = kPtr;
    J.kCols = kCols;
    J.colSum = colSum;
    return J;
  }
  AccumJob accumJob(int t, int c0, int c1, int K, const int32_t* colPtr, const int32_t* colK, const int32_t* colEnt,
                    const float* val, const float* dense, float* out) {
    Thread& h = th_[t];
    AccumJob J;
    J.d = d_;
    J.K = K;
    J.c0 = c0;
    J.c1 = c1;
    J.kc = kAccumK;
    J.colPtr = colPtr;
    J.colK = colK;
    J.colEnt = colEnt;
    J.val = val;
    J.dense = dense;
    J.out = out;
    J.Ap = h.Ap.data();
    J.Bp = h.Bp.data();
    J.tile = h.tile.data();
    J.cur = h.scur.data();
    return J;
  }

  // out[e] = Y[b]·W[j] for every entry e = (b, j) of the codes: the encoder's GEMM with Y in
  // place of xc and no biases, each tile sampled at the entries it covers.
  void sampleProducts(const float* W, const float* Y, const int32_t* rowPtr, const int32_t* index, int B, float* out) {
    const int T = T_;
    const int NR = ops_->NR;
    for (int t = 0; t < T; t++) {
      Thread& h = th_[t];
      h.tok0 = (int)((int64_t)B * t / T);
      h.ntok = (int)((int64_t)B * (t + 1) / T) - h.tok0;
      need(h.Xp.reserve(ops_->packedXFloats(h.ntok, d_)));
      need(h.Wp.reserve(ops_->packedWFloats(nb_, d_)));
      need(h.tile.reserve((size_t)ops_->MR * NR));
      need(h.scur.reserve((size_t)h.ntok + NR));
      h.NR = NR;
      h.sRowPtr = rowPtr;
      h.sIndex = index;
      h.sOut = out;
      Consumer& c = h.cons;
      c = Consumer();
      c.mode = kModeTile;
      c.onTile = onSample;
      c.st = &h;
      c.tok0 = h.tok0;
      c.F = F_;
    }
    pool().run([&](int t) {
      Thread& h = th_[t];
      if (h.ntok == 0) return;
      for (int tl = 0; tl < h.ntok; tl++) h.scur[tl] = rowPtr[h.tok0 + tl];
      ops_->packX(Y, nullptr, nullptr, h.tok0, h.ntok, d_, h.Xp.data());
      ScanJob job;
      job.W = W;
      job.bEnc = nullptr;
      job.d = d_;
      job.F = F_;
      job.tok0 = h.tok0;
      job.ntok = h.ntok;
      job.nb = nb_;
      job.tile = h.tile.data();
      job.c = &h.cons;
      job.Xp = h.Xp.data();
      job.Wp = h.Wp.data();
      ops_->scan(job);
    });
  }

  static void setupTok(TokLists& L, int64_t k, int ntok, size_t padded) {
    L.k = (int)std::max<int64_t>(k, 0);
    L.cap = (int)slackCap(L.k, (int64_t)1 << 30);
    if (L.cap == 0) L.cap = 1;
    need(L.ent.reserve((size_t)ntok * L.cap + 1));
    need(L.cnt.reserve((size_t)ntok + 1));
    need(L.thr.reserve(padded));
    (void)padded;
  }
  static void resetTok(TokLists& L, int ntok) {
    std::memset(L.cnt.data(), 0, sizeof(int32_t) * (size_t)ntok);
    const float t0 = L.k > 0 ? 0.0f : kInf;
    float* thr = L.thr.data();
    const size_t cap = L.thr.capacity();
    for (size_t i = 0; i < cap; i++) thr[i] = i < (size_t)ntok ? t0 : kInf;
  }

  Dest dest(const Out& out, Result& r, int64_t nnz, int B, bool& written) {
    r.B = B;
    r.nnz = (size_t)nnz;
    if ((size_t)nnz <= out.cap) {
      written = true;
      r.pending = false;
      return Dest{out.rowPtr, out.index, out.value};
    }
    need(r.rowPtr.reserve((size_t)B + 1));
    need(r.index.reserve((size_t)nnz));
    need(r.value.reserve((size_t)nnz));
    written = false;
    r.pending = true;
    return Dest{r.rowPtr.data(), r.index.data(), r.value.data()};
  }

  // Per-token lists (TopK when which < 0, aux `which` otherwise) → CSR.
  int64_t finalizeTok(int which, int B, const Out& out, Result& r, bool& written) {
    const int T = T_;
    pool().run([&](int t) {
      Thread& h = th_[t];
      TokLists& L = which < 0 ? h.main : h.aux[which];
      size_t tot = 0;
      for (int tl = 0; tl < h.ntok; tl++) {
        size_t c = (size_t)L.cnt[tl];
        if (c > (size_t)L.k) {
          keepOrdered(L.ent.data() + (size_t)tl * L.cap, c, (size_t)L.k, h.tmpV.data(), h.kth);
          L.cnt[tl] = (int32_t)c;
        }
        tot += c;
      }
      h.total = tot;
    });
    int64_t nnz = 0;
    for (int t = 0; t < T; t++) nnz += (int64_t)th_[t].total;
    if (nnz > INT32_MAX) fail("too many selected entries for Int32 indices");
    const Dest D = dest(out, r, nnz, B, written);
    pool().run([&](int t) {
      Thread& h = th_[t];
      TokLists& L = which < 0 ? h.main : h.aux[which];
      int64_t off = 0;
      for (int u = 0; u < t; u++) off += (int64_t)th_[u].total;
      for (int tl = 0; tl < h.ntok; tl++) {
        D.rowPtr[h.tok0 + tl] = (int32_t)off;
        const EntJ* e = L.ent.data() + (size_t)tl * L.cap;
        const int c = L.cnt[tl];
        for (int i = 0; i < c; i++) {
          D.index[off + i] = e[i].j;
          D.value[off + i] = e[i].v;
        }
        off += c;
      }
    });
    D.rowPtr[B] = (int32_t)nnz;
    return nnz;
  }

  int64_t finalizeMutual(int64_t M, int B, const Out& out, Result& r, bool& written) {
    const int T = T_;
    size_t N = 0;
    for (int t = 0; t < T; t++) N += th_[t].mcnt;
    bool all = (int64_t)N <= M;
    EntM tau{kInf, -1, -1};  // with M = 0 nothing is better-or-equal
    if (M == 0) all = false;
    if (!all && M > 0) {
      // The M-th best of every thread's candidates (each holds its own top M and more): its value
      // by a vectorised search over all candidate values, then, among the entries with exactly
      // that value, the boundary in flat order.
      need(mval_.reserve(N));
      size_t o = 0;
      for (int t = 0; t < T; t++) {
        const Thread& h = th_[t];
        for (size_t i = 0; i < h.mcnt; i++) mval_[o + i] = h.mb[i].v;
        o += h.mcnt;
      }
      const float vk = ops_->kthLargest(mval_.data(), N, (size_t)M, 31);
      size_t above = 0, eq = 0;
      for (size_t i = 0; i < N; i++) {
        above += mval_[i] > vk ? 1 : 0;
        eq += mval_[i] == vk ? 1 : 0;
      }
      need(mtmp_.reserve(std::max<size_t>(eq, 1)));
      eq = 0;
      for (int t = 0; t < T; t++) {
        const Thread& h = th_[t];
        for (size_t i = 0; i < h.mcnt; i++)
          if (h.mb[i].v == vk) mtmp_[eq++] = h.mb[i];
      }
      const size_t needEq = (size_t)M - above;  // ≤ eq; 0 when exactly M values are > vk
      if (needEq > 0) {
        std::nth_element(mtmp_.data(), mtmp_.data() + (needEq - 1), mtmp_.data() + eq, BetterM());
        tau = mtmp_[needEq - 1];
      } else {
        tau = EntM{vk, INT32_MAX, INT32_MAX};  // selects exactly the values > vk
      }
    }
    pool().run([&](int t) {
      Thread& h = th_[t];
      std::memset(h.rcount.data(), 0, sizeof(int32_t) * ((size_t)h.ntok + 1));
      size_t n = 0;
      for (size_t i = 0; i < h.mcnt; i++) {
        const EntM& e = h.mb[i];
        if (all || !betterM(tau, e)) {
          h.mb[n++] = e;
          h.rcount[e.b - h.tok0]++;
        }
      }
      h.mcnt = n;
      h.total = n;
    });
    int64_t nnz = 0;
    for (int t = 0; t < T; t++) nnz += (int64_t)th_[t].total;
    if (nnz > INT32_MAX) fail("too many selected entries for Int32 indices");
    const Dest D = dest(out, r, nnz, B, written);
    pool().run([&](int t) { scatterByToken(th_[t], t, D); });
    D.rowPtr[B] = (int32_t)nnz;
    return nnz;
  }

  // Thread t owns a contiguous range of tokens whose per-token counts are in h.rcount: write their
  // CSR row starts (after the entries of threads < t) and turn rcount into write cursors.
  int32_t* rowCursors(Thread& h, int t, const Dest& D) {
    int64_t off = 0;
    for (int u = 0; u < t; u++) off += (int64_t)th_[u].total;
    int32_t* cur = h.rcount.data();
    for (int tl = 0; tl < h.ntok; tl++) {
      const int32_t c = cur[tl];
      D.rowPtr[h.tok0 + tl] = (int32_t)off;
      cur[tl] = (int32_t)off;
      off += c;
    }
    return cur;
  }

  // Thread t's selected mutual entries (scan order: per token ascending j) → its CSR rows.
  void scatterByToken(Thread& h, int t, const Dest& D) {
    int32_t* cur = rowCursors(h, t, D);
    for (size_t i = 0; i < h.mcnt; i++) {
      const EntM& e = h.mb[i];
      const int32_t p = cur[e.b - h.tok0]++;
      D.index[p] = e.j;
      D.value[p] = e.v;
    }
  }

  int64_t finalizeFeature(const int32_t* capacity, int64_t keepTotal, int B, const Out& out, Result& r,
                          bool& written) {
    const int T = T_;
    const int F = F_;
    need(fgoff_.reserve((size_t)F + 1));
    need(fgcnt_.reserve((size_t)F));
    int64_t off = 0;
    for (int j = 0; j < F; j++) {
      fgoff_[j] = off;
      for (int t = 0; t < T; t++) off += th_[t].fcnt[j];
    }
    fgoff_[F] = off;
    (void)keepTotal;
    need(ftmp_.reserve(std::max<int64_t>(off, 1)));
    for (int t = 0; t < T; t++) {
      need(th_[t].tokCount.reserve((size_t)B + 1));
      need(th_[t].tmpV.reserve((size_t)std::max(B, 1)));
    }
    // phase 1 (features split evenly): merge the threads' lists, keep the best m_j
    pool().run([&](int t) {
      Thread& h = th_[t];
      std::memset(h.tokCount.data(), 0, sizeof(int32_t) * (size_t)B);
      const int j0 = (int)((int64_t)F * t / T), j1 = (int)((int64_t)F * (t + 1) / T);
      for (int j = j0; j < j1; j++) {
        EntB* dst = ftmp_.data() + fgoff_[j];
        size_t n = 0;
        for (int u = 0; u < T; u++) {
          const Thread& g = th_[u];
          const EntB* src = g.fb.data() + g.foff[j];
          const int c = g.fcnt[j];
          for (int i = 0; i < c; i++) dst[n++] = EntB{src[i].v, src[i].b + g.tok0};
        }
        const size_t keep = (size_t)std::min<int64_t>(std::max<int32_t>(capacity[j], 0), B);
        if (n > keep) {
          if (keep == 0) {
            n = 0;
          } else {
            keepOrdered(dst, n, keep, h.tmpV.data(), h.kth);
          }
        }
        fgcnt_[j] = (int32_t)n;
        for (size_t i = 0; i < n; i++) h.tokCount[dst[i].b]++;
      }
    });
    // rows, and where each thread's entries of each row start (threads own ascending features)
    int64_t nnz = 0;
    for (int b = 0; b < B; b++)
      for (int t = 0; t < T; t++) nnz += th_[t].tokCount[b];
    if (nnz > INT32_MAX) fail("too many selected entries for Int32 indices");
    const Dest D = dest(out, r, nnz, B, written);
    int64_t pos = 0;
    for (int b = 0; b < B; b++) {
      D.rowPtr[b] = (int32_t)pos;
      for (int t = 0; t < T; t++) {
        const int32_t c = th_[t].tokCount[b];
        th_[t].tokCount[b] = (int32_t)pos;
        pos += c;
      }
    }
    D.rowPtr[B] = (int32_t)nnz;
    pool().run([&](int t) {
      Thread& h = th_[t];
      const int j0 = (int)((int64_t)F * t / T), j1 = (int)((int64_t)F * (t + 1) / T);
      for (int j = j0; j < j1; j++) {
        const EntB* e = ftmp_.data() + fgoff_[j];
        const int n = fgcnt_[j];
        for (int i = 0; i < n; i++) {
          const int32_t p = h.tokCount[e[i].b]++;
          D.index[p] = j;
          D.value[p] = e[i].v;
        }
      }
    });
    return nnz;
  }

  int64_t finalizeRelu(int B, const Out& out, Result& r, bool& written) {
    const int T = T_;
    int64_t nnz = 0;
    for (int t = 0; t < T; t++) {
      th_[t].total = th_[t].rn;
      nnz += (int64_t)th_[t].rn;
    }
    if (nnz > INT32_MAX) fail("too many selected entries for Int32 indices");
    const Dest D = dest(out, r, nnz, B, written);
    pool().run([&](int t) {
      Thread& h = th_[t];
      int32_t* cur = rowCursors(h, t, D);
      for (size_t i = 0; i < h.rn; i++) {
        const ReluEnt& e = h.rl[i];
        const int32_t p = cur[e.tl]++;
        D.index[p] = e.j;
        D.value[p] = e.v;
      }
    });
    D.rowPtr[B] = (int32_t)nnz;
    return nnz;
  }

  // Entries grouped by feature, each group in token order: a stable counting sort, with every
  // thread counting and then placing the entries of its own token range.
  void buildCsc(const int32_t* rowPtr, const int32_t* index, int B) {
    const int F = F_;
    const int T = T_;
    const int64_t e0 = rowPtr[0], e1 = rowPtr[B];
    const size_t nnz = (size_t)(e1 - e0);
    need(colPtr_.reserve((size_t)F + 2));
    need(colEnt_.reserve(std::max<size_t>(nnz, 1)));
    need(colTok_.reserve(std::max<size_t>(nnz, 1)));
    for (int t = 0; t < T; t++) need(th_[t].tokCount.reserve((size_t)F + 1));
    pool().run([&](int t) {
      int32_t* cnt = th_[t].tokCount.data();
      std::memset(cnt, 0, sizeof(int32_t) * (size_t)F);
      const int b0 = (int)((int64_t)B * t / T), b1 = (int)((int64_t)B * (t + 1) / T);
      for (int32_t e = rowPtr[b0]; e < rowPtr[b1]; e++) cnt[index[e]]++;
    });
    // colPtr, and each thread's first slot in every column (threads in token order)
    int32_t* cp = colPtr_.data();
    int32_t pos = 0;
    for (int j = 0; j < F; j++) {
      cp[j] = pos;
      for (int t = 0; t < T; t++) {
        int32_t* cnt = th_[t].tokCount.data();
        const int32_t c = cnt[j];
        cnt[j] = pos;
        pos += c;
      }
    }
    cp[F] = pos;
    pool().run([&](int t) {
      int32_t* cur = th_[t].tokCount.data();
      const int b0 = (int)((int64_t)B * t / T), b1 = (int)((int64_t)B * (t + 1) / T);
      for (int b = b0; b < b1; b++) {
        for (int32_t e = rowPtr[b]; e < rowPtr[b + 1]; e++) {
          const int32_t p = cur[index[e]]++;
          colEnt_[p] = e;
          colTok_[p] = b;
        }
      }
    });
  }

  // Feature ranges (multiples of `align`) of about equal cost (entries + 1 per feature).
  void splitFeatures(int align, std::vector<int>& cut) {
    const int T = T_;
    const int F = F_;
    cut.assign(T + 1, F);
    cut[0] = 0;
    const int32_t* cp = colPtr_.data();
    const int64_t total = (int64_t)cp[F] + F;
    for (int t = 1; t < T; t++) {
      const int64_t target = total * t / T;
      int lo = cut[t - 1], hi = F;
      while (lo < hi) {
        const int mid = (lo + hi) / 2;
        if ((int64_t)cp[mid] + mid < target) lo = mid + 1;
        else hi = mid;
      }
      int j = (lo / align) * align;
      if (j < cut[t - 1]) j = cut[t - 1];
      cut[t] = j;
    }
  }

  const int d_, F_, maxB_;
  const IsaOps* ops_;
  const int T_;
  int nb_ = 1;
  std::vector<Thread> th_;
  Result res_[1 + kMaxAux];
  Buf<float> cut_;
  Buf<EntM> mtmp_;
  Buf<float> mval_;
  Buf<EntB> ftmp_;
  Buf<int64_t> fgoff_;
  Buf<int32_t> fgcnt_;
  Buf<int32_t> colPtr_, colEnt_, colTok_;
  Buf<float> partial_;
  Buf<float> colSum_;
  Buf<double> sums_;
  Buf<float> projC_;
};

// ============================================================================ Node-API glue

#define CHECK_NAPI(call)                                  \
  do {                                                    \
    if ((call) != napi_ok) fail("internal N-API failure"); \
  } while (0)

template <class T>
struct Arr {
  T* data = nullptr;
  size_t len = 0;
};

static bool nullish(napi_env env, napi_value v) {
  napi_valuetype t;
  CHECK_NAPI(napi_typeof(env, v, &t));
  return t == napi_null || t == napi_undefined;
}

template <class T>
static Arr<T> typed(napi_env env, napi_value v, napi_typedarray_type want, const char* what, const char* name,
                    bool optional = false) {
  Arr<T> a;
  if (optional && nullish(env, v)) return a;
  bool is = false;
  CHECK_NAPI(napi_is_typedarray(env, v, &is));
  if (!is) fail(std::string(name) + " must be a " + what);
  napi_typedarray_type type;
  size_t len;
  void* data;
  napi_value ab;
  size_t off;
  CHECK_NAPI(napi_get_typedarray_info(env, v, &type, &len, &data, &ab, &off));
  if (type != want) fail(std::string(name) + " must be a " + what);
  a.data = static_cast<T*>(data);
  a.len = len;
  return a;
}
static Arr<float> f32(napi_env env, napi_value v, const char* name, bool optional = false) {
  return typed<float>(env, v, napi_float32_array, "Float32Array", name, optional);
}
static Arr<int32_t> i32(napi_env env, napi_value v, const char* name, bool optional = false) {
  return typed<int32_t>(env, v, napi_int32_array, "Int32Array", name, optional);
}
static Arr<uint8_t> u8(napi_env env, napi_value v, const char* name) {
  return typed<uint8_t>(env, v, napi_uint8_array, "Uint8Array", name);
}
static double num(napi_env env, napi_value v, const char* name) {
  double x;
  if (napi_get_value_double(env, v, &x) != napi_ok) fail(std::string(name) + " must be a number");
  return x;
}
static int64_t count(napi_env env, napi_value v, const char* name, int64_t max = INT64_MAX) {
  const double x = num(env, v, name);
  if (!(x >= 0) || x != std::floor(x) || x > (double)max)
    failRange(std::string(name) + " must be a non-negative integer" + (max < INT64_MAX ? " ≤ " + std::to_string(max) : ""));
  return (int64_t)x;
}
static int batchArg(napi_env env, napi_value v, const char* name, int maxB) {
  const int64_t B = count(env, v, name, INT32_MAX);
  if (B > maxB) failRange("batch of " + std::to_string(B) + " exceeds kernel capacity " + std::to_string(maxB));
  return (int)B;
}
static void atLeast(size_t len, int64_t n, const char* name) {
  if ((int64_t)len < n) failRange(std::string(name) + " holds " + std::to_string(len) + " values, need " + std::to_string(n));
}
static Instance* inst(napi_env env, napi_value v) {
  napi_valuetype t;
  CHECK_NAPI(napi_typeof(env, v, &t));
  if (t != napi_external) fail("not a native kernel instance");
  void* p;
  CHECK_NAPI(napi_get_value_external(env, v, &p));
  return static_cast<Instance*>(p);
}
static napi_value mkNum(napi_env env, double x) {
  napi_value r;
  CHECK_NAPI(napi_create_double(env, x, &r));
  return r;
}
static napi_value mkStr(napi_env env, const char* s) {
  napi_value r;
  CHECK_NAPI(napi_create_string_utf8(env, s, NAPI_AUTO_LENGTH, &r));
  return r;
}
static void args(napi_env env, napi_callback_info info, size_t want, napi_value* argv) {
  size_t argc = want;
  CHECK_NAPI(napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr));
  if (argc < want) fail("expected " + std::to_string(want) + " arguments");
}
static uint32_t arrayLength(napi_env env, napi_value v, const char* name) {
  bool is = false;
  CHECK_NAPI(napi_is_array(env, v, &is));
  if (!is) fail(std::string(name) + " must be an array");
  uint32_t n;
  CHECK_NAPI(napi_get_array_length(env, v, &n));
  return n;
}
static napi_value elem(napi_env env, napi_value arr, uint32_t i) {
  napi_value r;
  CHECK_NAPI(napi_get_element(env, arr, i, &r));
  return r;
}

template <class Fn>
static napi_value guard(napi_env env, Fn&& fn) {
  try {
    return fn();
  } catch (const UserErr& e) {
    if (e.range) napi_throw_range_error(env, nullptr, e.msg.c_str());
    else napi_throw_type_error(env, nullptr, e.msg.c_str());
  } catch (const std::bad_alloc&) {
    napi_throw_error(env, nullptr, "out of memory in the native kernels");
  } catch (const std::exception& e) {
    napi_throw_error(env, nullptr, e.what());
  }
  return nullptr;
}

// Codes passed from JS: validate rowPtr/index so that no kernel can read out of bounds.
struct CodesArg {
  Arr<int32_t> rowPtr, index;
  Arr<float> value;
  int B;
};
static CodesArg codesArg(napi_env env, napi_value* a, int F, int maxB, bool needValue) {
  CodesArg c;
  c.rowPtr = i32(env, a[0], "codes.rowPtr");
  c.index = i32(env, a[1], "codes.index");
  if (needValue) c.value = f32(env, a[2], "codes.value");
  const int64_t B = batchArg(env, a[3], "codes.B", maxB);
  c.B = (int)B;
  atLeast(c.rowPtr.len, B + 1, "codes.rowPtr");
  const int32_t* rp = c.rowPtr.data;
  if (rp[0] < 0) failRange("codes.rowPtr[0] is negative");
  uint32_t bad = 0;  // branch-free scans (these run on every call, over every entry)
  for (int64_t b = 0; b < B; b++) bad |= rp[b] > rp[b + 1] ? 1u : 0u;
  if (bad) failRange("codes.rowPtr is not non-decreasing");
  const int64_t end = rp[B];
  atLeast(c.index.len, end, "codes.index");
  if (needValue) atLeast(c.value.len, end, "codes.value");
  const uint32_t* ix = reinterpret_cast<const uint32_t*>(c.index.data);
  for (int64_t e = rp[0]; e < end; e++) bad |= ix[e] >= (uint32_t)F ? 1u : 0u;
  if (bad) failRange("codes.index holds a feature outside [0, F)");
  return c;
}

static void finalizeInstance(napi_env, void* data, void*) { delete static_cast<Instance*>(data); }

// create(d, F, maxB, isa) → handle
static napi_value jsCreate(napi_env env, napi_callback_info info) {
  return guard(env, [&]() -> napi_value {
    napi_value a[4];
    args(env, info, 4, a);
    const int64_t d = count(env, a[0], "d", INT32_MAX), F = count(env, a[1], "F", INT32_MAX),
                  maxB = count(env, a[2], "maxB", INT32_MAX);
    if (d < 1 || F < 1 || maxB < 1) failRange("d, F and maxB must be ≥ 1");
    const IsaOps* ops = nullptr;
    if (nullish(env, a[3])) {
      ops = bestIsa();
    } else {
      char buf[32];
      size_t n;
      CHECK_NAPI(napi_get_value_string_utf8(env, a[3], buf, sizeof(buf), &n));
      ops = isaByName(std::string(buf, n));
      if (!ops) failRange(std::string("instruction set ") + buf + " is not available on this CPU");
    }
    Instance* in = new Instance((int)d, (int)F, (int)maxB, ops);
    napi_value ext;
    if (napi_create_external(env, in, finalizeInstance, nullptr, &ext) != napi_ok) {
      delete in;
      fail("could not create the kernel instance");
    }
    return ext;
  });
}

// info() → { apiVersion, threads, isa, isas }
static napi_value jsInfo(napi_env env, napi_callback_info) {
  return guard(env, [&]() -> napi_value {
    napi_value o, list;
    CHECK_NAPI(napi_create_object(env, &o));
    CHECK_NAPI(napi_set_named_property(env, o, "apiVersion", mkNum(env, kApiVersion)));
    CHECK_NAPI(napi_set_named_property(env, o, "threads", mkNum(env, pool().size())));
    CHECK_NAPI(napi_set_named_property(env, o, "isa", mkStr(env, bestIsa()->name)));
    CHECK_NAPI(napi_create_array(env, &list));
    uint32_t n = 0;
    if (cpuHas512()) CHECK_NAPI(napi_set_element(env, list, n++, mkStr(env, "avx512")));
    if (cpuHas256()) CHECK_NAPI(napi_set_element(env, list, n++, mkStr(env, "avx2")));
    CHECK_NAPI(napi_set_element(env, list, n++, mkStr(env, "sse2")));
    CHECK_NAPI(napi_set_named_property(env, o, "isas", list));
    return o;
  });
}

// Shared tail of encode / selectDense: selection spec, aux, outputs, the call, the result array.
// a[0..4] = kind, num, arr, auxMasks, auxKs; a[5] = outs (flat [rowPtr, index, value] triples).
static napi_value runSelect(napi_env env, Instance* in, napi_value* a, const float* W, const float* bEnc,
                            const float* bDec, const float* x, const float* z, int B, float* xc) {
  const int F = in->F();
  SelSpec sel;
  sel.kind = (int)count(env, a[0], "kind", kSelGlobal);
  switch (sel.kind) {
    case kSelTopK:
      sel.num = count(env, a[1], "k", INT32_MAX);
      break;
    case kSelMutual:
      sel.num = count(env, a[1], "M");
      break;
    case kSelFeature: {
      Arr<int32_t> cap = i32(env, a[2], "capacity");
      atLeast(cap.len, F, "capacity");
      if (cap.len != (size_t)F) failRange("capacity must have F entries");
      sel.cap = cap.data;
      break;
    }
    case kSelJumpRelu: {
      Arr<float> t = f32(env, a[2], "threshold");
      if (t.len != (size_t)F) failRange("threshold must have F entries");
      sel.thr = t.data;
      break;
    }
    case kSelGlobal:
      sel.gthr = num(env, a[1], "threshold");
      break;
    case kSelDense: {
      if (!W) fail("dense output needs the encoder");
      Arr<float> o = f32(env, a[2], "affinities");
      atLeast(o.len, (int64_t)B * F, "affinities");
      sel.dense = o.data;
      break;
    }
    default:
      break;
  }
  const uint32_t nAux = arrayLength(env, a[3], "auxMasks");
  if (arrayLength(env, a[4], "auxKs") != nAux) fail("auxMasks and auxKs differ in length");
  if (nAux > (uint32_t)kMaxAux) failRange("too many aux selections");
  AuxSpec aux[kMaxAux];
  for (uint32_t i = 0; i < nAux; i++) {
    Arr<uint8_t> m = u8(env, elem(env, a[3], i), "aux mask");
    if (m.len != (size_t)F) failRange("aux mask must have F entries");
    aux[i].mask = m.data;
    aux[i].k = count(env, elem(env, a[4], i), "aux k", INT32_MAX);
  }
  const int nOut = (sel.kind >= kSelTopK ? 1 : 0) + (int)nAux;
  if (arrayLength(env, a[5], "outs") != (uint32_t)(3 * nOut)) fail("outs must hold one [rowPtr, index, value] per output");
  Out outs[1 + kMaxAux];
  for (int o = 0; o < nOut; o++) {
    Arr<int32_t> rp = i32(env, elem(env, a[5], 3 * o), "rowPtr");
    Arr<int32_t> ix = i32(env, elem(env, a[5], 3 * o + 1), "index");
    Arr<float> vl = f32(env, elem(env, a[5], 3 * o + 2), "value");
    atLeast(rp.len, (int64_t)B + 1, "rowPtr");
    outs[o] = Out{rp.data, ix.data, vl.data, std::min(ix.len, vl.len)};
  }
  int64_t nnz[1 + kMaxAux] = {};
  bool written[1 + kMaxAux] = {};
  in->encode(W, bEnc, bDec, x, z, B, xc, sel, aux, (int)nAux, outs, nnz, written);
  napi_value res;
  CHECK_NAPI(napi_create_array_with_length(env, 2 * nOut, &res));
  for (int o = 0; o < nOut; o++) {
    CHECK_NAPI(napi_set_element(env, res, 2 * o, mkNum(env, (double)nnz[o])));
    CHECK_NAPI(napi_set_element(env, res, 2 * o + 1, mkNum(env, written[o] ? 1 : 0)));
  }
  return res;
}

// encode(h, WencT, bEnc, bDec, x, B, xc, kind, num, arr, auxMasks, auxKs, outs) → [nnz, written]*
static napi_value jsEncode(napi_env env, napi_callback_info info) {
  return guard(env, [&]() -> napi_value {
    napi_value a[13];
    args(env, info, 13, a);
    Instance* in = inst(env, a[0]);
    const int d = in->d(), F = in->F();
    Arr<float> W = f32(env, a[1], "WencT"), bEnc = f32(env, a[2], "bEnc"), bDec = f32(env, a[3], "bDec"),
               x = f32(env, a[4], "x"), xc = f32(env, a[6], "xc");
    const int64_t B = batchArg(env, a[5], "B", in->maxB());
    atLeast(W.len, (int64_t)F * d, "WencT");
    atLeast(bEnc.len, F, "bEnc");
    atLeast(bDec.len, d, "bDec");
    atLeast(x.len, B * d, "x");
    atLeast(xc.len, B * d, "xc");
    return runSelect(env, in, a + 7, W.data, bEnc.data, bDec.data, x.data, nullptr, (int)B, xc.data);
  });
}

// selectDense(h, z, B, kind, num, arr, auxMasks, auxKs, outs): the selection stage alone on given z'.
static napi_value jsSelectDense(napi_env env, napi_callback_info info) {
  return guard(env, [&]() -> napi_value {
    napi_value a[9];
    args(env, info, 9, a);
    Instance* in = inst(env, a[0]);
    Arr<float> z = f32(env, a[1], "affinities");
    const int64_t B = batchArg(env, a[2], "B", in->maxB());
    atLeast(z.len, B * in->F(), "affinities");
    if (count(env, a[3], "kind") == kSelDense) fail("selectDense cannot produce dense output");
    return runSelect(env, in, a + 3, nullptr, nullptr, nullptr, nullptr, z.data, (int)B, nullptr);
  });
}

// emit(h, which, rowPtr, index, value) → nnz
static napi_value jsEmit(napi_env env, napi_callback_info info) {
  return guard(env, [&]() -> napi_value {
    napi_value a[5];
    args(env, info, 5, a);
    Instance* in = inst(env, a[0]);
    const int which = (int)count(env, a[1], "which", kMaxAux);
    Arr<int32_t> rp = i32(env, a[2], "rowPtr"), ix = i32(env, a[3], "index");
    Arr<float> vl = f32(env, a[4], "value");
    Out o{rp.data, ix.data, vl.data, std::min(ix.len, vl.len)};
    (void)rp.len;
    return mkNum(env, (double)in->emitChecked(which, o, rp.len));
  });
}

// decode(h, Wdec, bDec|null, rowPtr, index, value, B, out)
static napi_value jsDecode(napi_env env, napi_callback_info info) {
  return guard(env, [&]() -> napi_value {
    napi_value a[8];
    args(env, info, 8, a);
    Instance* in = inst(env, a[0]);
    const int d = in->d(), F = in->F();
    Arr<float> W = f32(env, a[1], "Wdec"), bias = f32(env, a[2], "bDec", true), out = f32(env, a[7], "out");
    CodesArg c = codesArg(env, a + 3, F, in->maxB(), true);
    atLeast(W.len, (int64_t)F * d, "Wdec");
    if (bias.data) atLeast(bias.len, d, "bDec");
    atLeast(out.len, (int64_t)c.B * d, "out");
    in->decode(W.data, bias.data, c.rowPtr.data, c.index.data, c.value.data, c.B, out.data);
    return nullptr;
  });
}

// decodeBackward(h, Wdec, rowPtr, index, value, B, dOut, gWdec, dz)
static napi_value jsDecodeBackward(napi_env env, napi_callback_info info) {
  return guard(env, [&]() -> napi_value {
    napi_value a[9];
    args(env, info, 9, a);
    Instance* in = inst(env, a[0]);
    const int d = in->d(), F = in->F();
    Arr<float> W = f32(env, a[1], "Wdec"), dOut = f32(env, a[6], "dOut"), gW = f32(env, a[7], "gWdec"),
               dz = f32(env, a[8], "dz");
    CodesArg c = codesArg(env, a + 2, F, in->maxB(), true);
    atLeast(W.len, (int64_t)F * d, "Wdec");
    atLeast(gW.len, (int64_t)F * d, "gWdec");
    atLeast(dOut.len, (int64_t)c.B * d, "dOut");
    atLeast(dz.len, c.rowPtr.data[c.B], "dz");
    in->decodeBackward(W.data, c.rowPtr.data, c.index.data, c.value.data, c.B, dOut.data, gW.data, dz.data);
    return nullptr;
  });
}

// encoderBackward(h, WencT, xc, rowPtr, index, B, dz, gWencT, gBenc, gBdec)
static napi_value jsEncoderBackward(napi_env env, napi_callback_info info) {
  return guard(env, [&]() -> napi_value {
    napi_value a[10];
    args(env, info, 10, a);
    Instance* in = inst(env, a[0]);
    const int d = in->d(), F = in->F();
    Arr<float> W = f32(env, a[1], "WencT"), xc = f32(env, a[2], "xc"), dz = f32(env, a[6], "dz"),
               gW = f32(env, a[7], "gWencT"), gBenc = f32(env, a[8], "gBenc"), gBdec = f32(env, a[9], "gBdec");
    napi_value ca[4] = {a[3], a[4], a[4], a[5]};
    CodesArg c = codesArg(env, ca, F, in->maxB(), false);
    atLeast(W.len, (int64_t)F * d, "WencT");
    atLeast(gW.len, (int64_t)F * d, "gWencT");
    atLeast(gBenc.len, F, "gBenc");
    atLeast(gBdec.len, d, "gBdec");
    atLeast(xc.len, (int64_t)c.B * d, "xc");
    atLeast(dz.len, c.rowPtr.data[c.B], "dz");
    in->encoderBackward(W.data, xc.data, c.rowPtr.data, c.index.data, c.B, dz.data, gW.data, gBenc.data, gBdec.data);
    return nullptr;
  });
}

// sumSquares(h, a) → number
static napi_value jsSumSquares(napi_env env, napi_callback_info info) {
  return guard(env, [&]() -> napi_value {
    napi_value a[2];
    args(env, info, 2, a);
    Instance* in = inst(env, a[0]);
    Arr<float> x = f32(env, a[1], "a");
    return mkNum(env, in->sumSquares(x.data, x.len));
  });
}

// adamw(h, param, grad, m, v, lr, beta1, beta2, eps, weightDecay, step, gradScale, decay)
static napi_value jsAdamW(napi_env env, napi_callback_info info) {
  return guard(env, [&]() -> napi_value {
    napi_value a[13];
    args(env, info, 13, a);
    Instance* in = inst(env, a[0]);
    Arr<float> p = f32(env, a[1], "param"), g = f32(env, a[2], "grad"), m = f32(env, a[3], "m"), v = f32(env, a[4], "v");
    atLeast(g.len, (int64_t)p.len, "grad");
    atLeast(m.len, (int64_t)p.len, "m");
    atLeast(v.len, (int64_t)p.len, "v");
    const double lr = num(env, a[5], "lr"), b1 = num(env, a[6], "beta1"), b2 = num(env, a[7], "beta2"),
                 eps = num(env, a[8], "eps"), wd = num(env, a[9], "weightDecay"), step = num(env, a[10], "step"),
                 gs = num(env, a[11], "gradScale");
    bool decay = false;
    CHECK_NAPI(napi_get_value_bool(env, a[12], &decay));
    const double c1 = 1 - std::pow(b1, step), c2 = 1 - std::pow(b2, step);
    const float coef[10] = {(float)gs,       (float)b1, (float)(1 - b1), (float)b2,
                            (float)(1 - b2), (float)(1 / c1), (float)(1 / c2), (float)lr,
                            (float)eps,      (float)(decay ? 1 - lr * wd : 1)};
    in->adamw(p.data, g.data, m.data, v.data, p.len, coef);
    return nullptr;
  });
}

// projectDecoderGrad(h, Wdec, gWdec, F, d) and normalizeDecoderRows(h, Wdec, F, d)
static napi_value jsProject(napi_env env, napi_callback_info info) {
  return guard(env, [&]() -> napi_value {
    napi_value a[5];
    args(env, info, 5, a);
    Instance* in = inst(env, a[0]);
    Arr<float> W = f32(env, a[1], "Wdec"), g = f32(env, a[2], "gWdec");
    const int64_t F = count(env, a[3], "F", INT32_MAX), d = count(env, a[4], "d", INT32_MAX);
    atLeast(W.len, F * d, "Wdec");
    atLeast(g.len, F * d, "gWdec");
    in->projectRows(W.data, g.data, (int)F, (int)d);
    return nullptr;
  });
}
static napi_value jsNormalize(napi_env env, napi_callback_info info) {
  return guard(env, [&]() -> napi_value {
    napi_value a[4];
    args(env, info, 4, a);
    Instance* in = inst(env, a[0]);
    Arr<float> W = f32(env, a[1], "Wdec");
    const int64_t F = count(env, a[2], "F", INT32_MAX), d = count(env, a[3], "d", INT32_MAX);
    atLeast(W.len, F * d, "Wdec");
    in->normalizeRows(W.data, (int)F, (int)d);
    return nullptr;
  });
}

// optimizerStep(h, params, grads, m, v, F, d, lr, beta1, beta2, eps, weightDecay, step, maxGradNorm) → norm;
// params, grads, m and v each [WencT, bEnc, Wdec, bDec].
static napi_value jsOptimizerStep(napi_env env, napi_callback_info info) {
  return guard(env, [&]() -> napi_value {
    napi_value a[14];
    args(env, info, 14, a);
    Instance* in = inst(env, a[0]);
    const int64_t F = count(env, a[5], "F", INT32_MAX), d = count(env, a[6], "d", INT32_MAX);
    const int64_t sizes[4] = {F * d, F, F * d, d};
    static const char* const names[4] = {"WencT", "bEnc", "Wdec", "bDec"};
    Instance::OptTensor t[4];
    for (int s = 1; s <= 4; s++)
      if (arrayLength(env, a[s], "optimizer tensors") != 4) fail("params, grads, m and v must hold four tensors each");
    for (int i = 0; i < 4; i++) {
      Arr<float> p = f32(env, elem(env, a[1], i), names[i]), g = f32(env, elem(env, a[2], i), "grad"),
                 m = f32(env, elem(env, a[3], i), "m"), v = f32(env, elem(env, a[4], i), "v");
      atLeast(p.len, sizes[i], names[i]);
      atLeast(g.len, sizes[i], "grad");
      atLeast(m.len, sizes[i], "m");
      atLeast(v.len, sizes[i], "v");
      t[i] = Instance::OptTensor{p.data, g.data, m.data, v.data, (size_t)sizes[i]};
    }
    const double lr = num(env, a[7], "lr"), b1 = num(env, a[8], "beta1"), b2 = num(env, a[9], "beta2"),
                 eps = num(env, a[10], "eps"), wd = num(env, a[11], "weightDecay"), step = num(env, a[12], "step"),
                 mg = num(env, a[13], "maxGradNorm");
    return mkNum(env, in->optimizerStep(t, (int)F, (int)d, lr, b1, b2, eps, wd, step, mg));
  });
}

}  // namespace sae

NAPI_MODULE_INIT() {
  using namespace sae;
  const napi_property_descriptor props[] = {
      {"info", nullptr, jsInfo, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"create", nullptr, jsCreate, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"encode", nullptr, jsEncode, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"selectDense", nullptr, jsSelectDense, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"emit", nullptr, jsEmit, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"decode", nullptr, jsDecode, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"decodeBackward", nullptr, jsDecodeBackward, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"encoderBackward", nullptr, jsEncoderBackward, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"sumSquares", nullptr, jsSumSquares, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"adamw", nullptr, jsAdamW, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"projectDecoderGrad", nullptr, jsProject, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"normalizeDecoderRows", nullptr, jsNormalize, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"optimizerStep", nullptr, jsOptimizerStep, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
  };
  if (napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props) != napi_ok) return nullptr;
  return exports;
}
