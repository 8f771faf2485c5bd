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
  explicit LmInstance(const IsaOps* ops);
  const IsaOps* ops() const { return ops_; }

  // y[n×m] = x[n×K]·W + bias; W is [K×m] when inOut, else [m×K]. y must not alias x.
  void linear(const float* x, int n, int K, const float* W, int m, bool inOut, const float* bias, float* y);
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
  const int T_;
  std::vector<Thread> th_;
  Buf<float> Xp_;
  Buf<float> cos_, sin_;
  int rotT_ = -1, rotDims_ = -1;
  double rotBase_ = 0;
};

}  // namespace sae
