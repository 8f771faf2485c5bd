// The host LM's ops (issue 8) on the thread pool: the `LmKernels` seam of src/kernels/lm-types.ts.
// Linear layers run on the packed SGEMM (gemm_isa.h), the rest on lm_isa.h. Every split below is
// over whole rows, elements, output blocks or attention units whose results do not depend on which
// thread computes them (static splits, or pieces claimed by whichever thread is free), so outputs
// are bit-identical for any pool size and from run to run.
#include "lm_ops.h"

#include <atomic>
#include <cmath>

#define SAE_ISA_BODY "lm_isa.h"
#include "isa_variants.h"

namespace sae {

static void need(bool ok) {
  if (!ok) fail("out of memory (native LM scratch)");
}

LmInstance::LmInstance(const IsaOps* ops, bool bf16, const Bf16Ops* unit)
    : ops_(ops), bf16_(bf16), unit_(bf16 ? unit : nullptr), T_(pool().size()), th_(T_) {}

// Elementwise work below this size stays on the calling thread: waking the pool costs more.
constexpr size_t kSerialElems = 1 << 14;

void LmInstance::linear(const float* x, int n, int K, const float* W, int m, bool inOut, const float* bias, float* y,
                        bool roundX) {
  if (n == 0 || m == 0) return;
  const GemmOps& g = *ops_->gemm;
  const int T = T_;
  const int np = (n + g.MR - 1) / g.MR;
  // packed blocks of W of up to 320 KiB (nb·NR outputs × kLinearKc), L2-resident
  const int kc = std::min(std::max(K, 1), kLinearKc);
  const int nb = (int)std::max<int64_t>(1, std::min<int64_t>(64, (320 * 1024) / ((int64_t)g.NR * kc * 4)));
  need(Xp_.reserve((size_t)np * g.MR * K + 1));
  for (auto& h : th_) {
    need(h.Wp.reserve((size_t)nb * g.NR * kc));
    need(h.tile.reserve((size_t)g.MR * g.NR));
  }
  float* Xp = Xp_.data();
  pool().run([&](int t) {
    const int p0 = (int)((int64_t)np * t / T), p1 = (int)((int64_t)np * (t + 1) / T);
    if (p1 > p0) g.packTokens(x, n, K, p0, p1, Xp);
    if (p1 > p0 && roundX) g.roundBf16(Xp + (size_t)p0 * g.MR * K, (size_t)(p1 - p0) * g.MR * K);
  });
  // Pieces of work: blocks of nb·NR outputs × chunks of token panels, claimed in any order by
  // whichever thread is free (the machine may be shared); a piece's results do not depend on
  // which thread computes it, so the output stays bit-identical.
  const int Nc = nb * g.NR;
  const int nBlocks = (m + Nc - 1) / Nc;
  const int chunk = std::max(1, std::min(np, (256 + g.MR - 1) / g.MR));  // about 256 tokens
  const int nChunks = (np + chunk - 1) / chunk;
  const int units = nBlocks * nChunks;
  std::atomic<int> next{0};
  pool().run([&](int t) {
    LinearJob J;
    J.Xp = Xp;
    J.n = n;
    J.K = K;
    J.m = m;
    J.W = W;
    J.inOut = inOut;
    J.bias = bias;
    J.nb = nb;
    J.Wp = th_[t].Wp.data();
    J.tile = th_[t].tile.data();
    J.y = y;
    for (int u = next.fetch_add(1, std::memory_order_relaxed); u < units; u = next.fetch_add(1, std::memory_order_relaxed)) {
      const int blk = u / nChunks, c = u % nChunks;
      J.o0 = blk * Nc;
      J.o1 = std::min(m, J.o0 + Nc);
      J.p0 = c * chunk;
      J.p1 = std::min(np, J.p0 + chunk);
      g.linear(J);
    }
  });
}

void LmInstance::packLinearW(const float* W, bool inOut, int K, int m, uint16_t* Wb) {
  const int groups = (m + 31) / 32 * 2;
  const int T = T_;
  const Bf16Ops* u = unit_;
  pool().run([&](int t) {
    const int g0 = (int)((int64_t)groups * t / T), g1 = (int)((int64_t)groups * (t + 1) / T);
    if (g1 > g0) u->packLinearW(W, inOut, K, m, g0, g1, Wb);
  });
}

// As linear, on a bf16 unit: x rounded to bf16 rows once (all threads), then pieces of 128
// outputs × 256 token rows claimed by whichever thread is free; every output is one tile's sum
// plus its bias, so the result does not depend on the partition.
void LmInstance::linearBf16(const float* x, int n, int K, const uint16_t* Wb, int m, const float* bias, float* y) {
  if (n == 0 || m == 0) return;
  const Bf16Ops* u = unit_;
  const int T = T_;
  const int R = u->rows;
  const int nTiles = (n + R - 1) / R;
  need(Xb_.reserve((size_t)nTiles * R * bf16Kp(K) + 1));
  for (auto& h : th_) need(h.tile.reserve((size_t)kBf16PieceRows * kBf16PieceOut));
  uint16_t* Xb = Xb_.data();
  pool().run([&](int t) {
    const int t0 = (int)((int64_t)nTiles * t / T), t1 = (int)((int64_t)nTiles * (t + 1) / T);
    if (t1 > t0) u->packRows(x, K, n, t0, t1, Xb);
  });
  // pieces of kBf16PieceOut outputs × about kBf16PieceRows token rows
  constexpr int kOut = kBf16PieceOut;
  const int chunk = std::max(1, kBf16PieceRows / R) * R;
  const int nBlocks = (m + kOut - 1) / kOut;
  const int nChunks = (n + chunk - 1) / chunk;
  const int units = nBlocks * nChunks;
  std::atomic<int> next{0};
  pool().run([&](int t) {
    Bf16LinearJob J;
    J.Xb = Xb;
    J.Wb = Wb;
    J.bias = bias;
    J.n = n;
    J.K = K;
    J.m = m;
    J.tile = th_[t].tile.data();
    J.y = y;
    for (int w = next.fetch_add(1, std::memory_order_relaxed); w < units; w = next.fetch_add(1, std::memory_order_relaxed)) {
      const int blk = w / nChunks, c = w % nChunks;
      J.o0 = blk * kOut;
      J.o1 = std::min(m, J.o0 + kOut);
      J.r0 = c * chunk;
      J.r1 = std::min(n, J.r0 + chunk);
      u->linear(J);
    }
  });
}

template <class Fn>
static void rows(int n, int T, size_t work, Fn&& fn) {
  if (work < kSerialElems || T == 1) {
    fn(0, n);
    return;
  }
  pool().run([&](int t) {
    const int r0 = (int)((int64_t)n * t / T), r1 = (int)((int64_t)n * (t + 1) / T);
    if (r1 > r0) fn(r0, r1);
  });
}

template <class Fn>
static void elems(size_t n, int T, Fn&& fn) {
  if (n < kSerialElems || T == 1) {
    fn((size_t)0, n);
    return;
  }
  pool().run([&](int t) {
    const size_t i0 = (n * t / T) & ~size_t(15);
    const size_t i1 = t + 1 == T ? n : ((n * (t + 1) / T) & ~size_t(15));
    if (i1 > i0) fn(i0, i1);
  });
}

void LmInstance::layerNorm(const float* x, int n, int d, const float* w, const float* b, float eps, float* y) {
  const LmOps& o = *ops_->lm;
  rows(n, T_, (size_t)n * d, [&](int r0, int r1) { o.layerNorm(x, r0, r1, d, w, b, eps, y); });
}

void LmInstance::gelu(float* x, size_t n, bool erf) {
  const LmOps& o = *ops_->lm;
  elems(n, T_, [&](size_t i0, size_t i1) { (erf ? o.geluErf : o.geluTanh)(x + i0, i1 - i0); });
}

void LmInstance::add(float* a, const float* b, size_t n) {
  const LmOps& o = *ops_->lm;
  elems(n, T_, [&](size_t i0, size_t i1) { o.add(a + i0, b + i0, i1 - i0); });
}

void LmInstance::rotary(float* x, int B, int T, int H, int hd, int dims, double base) {
  const int half = dims / 2;
  if (half == 0 || B == 0 || T == 0) return;
  // θ = t·base^(−2i/dims) in double, as the reference computes it; the table is reused while
  // (T, dims, base) stay the same (every layer of a forward pass)
  if (T != rotT_ || dims != rotDims_ || base != rotBase_) {
    need(cos_.reserve((size_t)T * half));
    need(sin_.reserve((size_t)T * half));
    for (int t = 0; t < T; t++)
      for (int i = 0; i < half; i++) {
        const double th = t * std::pow(base, (-2.0 * i) / dims);
        cos_[(size_t)t * half + i] = (float)std::cos(th);
        sin_[(size_t)t * half + i] = (float)std::sin(th);
      }
    rotT_ = T;
    rotDims_ = dims;
    rotBase_ = base;
  }
  const LmOps& o = *ops_->lm;
  const float* cs = cos_.data();
  const float* sn = sin_.data();
  rows(B * T, T_, (size_t)B * T * H * dims, [&](int r0, int r1) { o.rotary(x, r0, r1, T, H, hd, half, cs, sn); });
}

void LmInstance::attention(const float* q, const float* k, const float* v, int B, int T, int H, int hd, float* out,
                           float* pattern) {
  if (B == 0 || T == 0 || H == 0) return;
  constexpr int QB = 64;
  const int nq = (T + QB - 1) / QB;
  const int64_t units = (int64_t)B * H * nq;
  const size_t Tp = (size_t)(T + 63) / 64 * 64;
  for (auto& h : th_) {
    need(h.kt.reserve(Tp * hd));
    need(h.s.reserve(Tp));
  }
  const LmOps& o = *ops_->lm;
  // units (b, h, query block) claimed one at a time: with causal masking later blocks cost more
  std::atomic<int64_t> next{0};
  auto work = [&](int t) {
    AttnJob J;
    J.q = q;
    J.k = k;
    J.v = v;
    J.out = out;
    J.pattern = pattern;
    J.B = B;
    J.T = T;
    J.H = H;
    J.hd = hd;
    J.QB = QB;
    J.scale = (float)(1.0 / std::sqrt((double)hd));
    J.kt = th_[t].kt.data();
    J.s = th_[t].s.data();
    for (int64_t u = next.fetch_add(1, std::memory_order_relaxed); u < units; u = next.fetch_add(1, std::memory_order_relaxed)) {
      J.u0 = u;
      J.u1 = u + 1;
      o.attention(J);
    }
  };
  if (units == 1 || T_ == 1) work(0);
  else pool().run(work);
}

void LmInstance::crossEntropy(const float* logits, int n, int V, const int32_t* targets, float* loss) {
  const LmOps& o = *ops_->lm;
  rows(n, T_, (size_t)n * V, [&](int r0, int r1) { o.crossEntropy(logits, r0, r1, V, targets, loss); });
}

void LmInstance::klDivergence(const float* p, const float* q, int n, int V, bool qBroadcast, float* out) {
  const LmOps& o = *ops_->lm;
  rows(n, T_, (size_t)n * V, [&](int r0, int r1) { o.klDivergence(p, q, r0, r1, V, qBroadcast ? 0 : V, out); });
}

}  // namespace sae
