// The host LM's ops behind one native `LmKernels` (src/kernels/lm-native.ts): the scratch they
// reuse from call to call (packed activations, per-thread GEMM blocks and attention buffers, the
// rotary table), allocated on first use and only ever grown.
#pragma once

#include <vector>

#include "common.h"
#include "isa.h"
#include "pool.h"

namespace sae {

class LmInstance {
 public:
  // bf16: precision bf16 (docs/precision.md) on unit (null = emulated: the fp32 kernels on rounded
  // operands)
  explicit LmInstance(const IsaOps* ops, bool bf16 = false, const Bf16Ops* unit = nullptr);
  const IsaOps* ops() const { return ops_; }
  bool bf16() const { return bf16_; }
  const Bf16Ops* unit() const { return unit_; }

  // y[n×m] = x[n×K]·W + bias; W is [K×m] when inOut, else [m×K]. y must not alias x. roundX: x is
  // rounded to bf16 on its way into the GEMM (bf16 emulated, W already rounded by the caller).
  void linear(const float* x, int n, int K, const float* W, int m, bool inOut, const float* bias, float* y,
              bool roundX = false);
  // bf16 units: W packed once (packLinearW: column groups of packedWElems(K, m) bf16), then
  // y = x·W + bias with x rounded per call.
  static size_t packedWElems(int K, int m) { return (size_t)((m + 31) / 32 * 2) * bf16Kp(K) * 16; }
  void packLinearW(const float* W, bool inOut, int K, int m, uint16_t* Wb);
  void linearBf16(const float* x, int n, int K, const uint16_t* Wb, int m, const float* bias, float* y);
  void layerNorm(const float* x, int n, int d, const float* w, const float* b, float eps, float* y);
  void gelu(float* x, size_t n, bool erf);
  void add(float* a, const float* b, size_t n);
  void rotary(float* x, int B, int T, int H, int hd, int dims, double base);
  void attention(const float* q, const float* k, const float* v, int B, int T, int H, int hd, float* out, float* pattern);
  void crossEntropy(const float* logits, int n, int V, const int32_t* targets, float* loss);
  void klDivergence(const float* p, const float* q, int n, int V, bool qBroadcast, float* out);

 private:
  struct Thread {
    Buf<float> Wp, tile, kt, s;
  };
  const IsaOps* ops_;
  const bool bf16_;
  const Bf16Ops* const unit_;
  const int T_;
  std::vector<Thread> th_;
  Buf<float> Xp_;
  Buf<uint16_t> Xb_;
  Buf<float> cos_, sin_;
  int rotT_ = -1, rotDims_ = -1;
  double rotBase_ = 0;
};

}  // namespace sae
