// A stand-alone driver for bench/neon-count.mjs: one thread's encoder GEMM (the packed SGEMM's
// scan, as encodeSelect runs it, z' dropped as it is made) or one LM linear layer, on the
// instruction-set tables of the build (isaneon on arm64). Linked with native/gemm.cc only; the
// counting happens outside (qemu's execution trace).
// Usage: gemm-driver scan d F ntok | gemm-driver linear n K m
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "isa.h"

#if SAE_ARM64
namespace isaneon { extern const ::sae::GemmOps kGemm; }
static const sae::GemmOps& G = isaneon::kGemm;
#else
namespace isa256 { extern const ::sae::GemmOps kGemm; }
static const sae::GemmOps& G = isa256::kGemm;
#endif

static float* alloc(size_t n) {
  void* p = nullptr;
  if (posix_memalign(&p, 64, (n + 16) * sizeof(float)) != 0) std::abort();
  std::memset(p, 0, (n + 16) * sizeof(float));
  return static_cast<float*>(p);
}
static void fill(float* a, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; i++) {
    seed = seed * 1103515245u + 12345u;
    a[i] = (float)((seed >> 8) & 0xffff) / 65536.0f - 0.5f;
  }
}

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: %s scan d F ntok | linear n K m\n", argv[0]);
    return 2;
  }
  const int a = std::atoi(argv[2]), b = std::atoi(argv[3]), c = std::atoi(argv[4]);
  if (std::strcmp(argv[1], "scan") == 0) {
    const int d = a, F = b, ntok = c;
    // the feature block of Instance (instance.h): about 384 KiB of packed W_enc
    const int nb = (int)std::max<long>(1, std::min<long>(64, (384 * 1024) / ((long)G.MR * d * 4)));
    float* W = alloc((size_t)F * d);
    float* bEnc = alloc(F);
    float* x = alloc((size_t)ntok * d);
    fill(W, (size_t)F * d, 1);
    fill(x, (size_t)ntok * d, 2);
    float* Xp = alloc(G.packedXFloats(ntok, d));
    float* Wp = alloc(G.packedWFloats(nb, d));
    float* tile = alloc((size_t)G.MR * G.NR);
    G.packX(x, nullptr, nullptr, 0, ntok, d, Xp);
    sae::Consumer cons;  // kModeNone: tiles computed and dropped
    sae::ScanJob job;
    job.W = W;
    job.bEnc = bEnc;
    job.d = d;
    job.F = F;
    job.ntok = ntok;
    job.Xp = Xp;
    job.Wp = Wp;
    job.tile = tile;
    job.nb = nb;
    job.c = &cons;
    G.scan(job);
    std::printf("scan d=%d F=%d ntok=%d MR=%d NR=%d nb=%d tile0=%g\n", d, F, ntok, G.MR, G.NR, nb, tile[0]);
  } else {
    const int n = a, K = b, m = c;
    const int np = (n + G.MR - 1) / G.MR;
    const int nb = (int)std::max<long>(1, std::min<long>(64, (320 * 1024) / ((long)G.NR * sae::kLinearKc * 4)));
    float* x = alloc((size_t)n * K);
    float* W = alloc((size_t)K * m);
    float* y = alloc((size_t)n * m);
    fill(x, (size_t)n * K, 3);
    fill(W, (size_t)K * m, 4);
    float* Ap = alloc((size_t)np * G.MR * K);
    G.packTokens(x, n, K, 0, np, Ap);
    sae::LinearJob J;
    J.Xp = Ap;
    J.n = n;
    J.K = K;
    J.m = m;
    J.W = W;
    J.inOut = true;
    J.o0 = 0;
    J.o1 = m;
    J.p0 = 0;
    J.p1 = np;
    J.nb = nb;
    J.Wp = alloc((size_t)nb * G.NR * sae::kLinearKc);
    J.tile = alloc((size_t)G.MR * G.NR);
    J.y = y;
    G.linear(J);
    std::printf("linear n=%d K=%d m=%d MR=%d NR=%d y0=%g\n", n, K, m, G.MR, G.NR, y[0]);
  }
  return 0;
}
