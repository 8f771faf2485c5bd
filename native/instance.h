// The SAE kernel instance behind one `create(d, F, maxB)` handle: per-thread scratch that grows
// and is reused, the selection state of every thread, and the pending results. Its methods live
// by concern: encode.cc (encoder + selections), sparse.cc (decode and the backward passes),
// optimizer.cc (the parameter update).
//
// Work is partitioned statically (tokens for the encoder and decode, features for the backward
// passes, fixed chunks for reductions): no two threads write the same address and every
// summation order is fixed, so results are identical from run to run.
#pragma once

#include <chrono>
#include <cstdlib>
#include <vector>

#include "common.h"
#include "isa.h"
#include "pool.h"

namespace sae {

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
  Buf<uint16_t> Xb;  // precision bf16 on a bf16 unit: this thread's tokens
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

class Instance {
 public:
  // bf16: precision bf16 (docs/precision.md); unit = the bf16 GEMM it runs on, null = emulated
  // (the fp32 kernels on rounded operands)
  Instance(int d, int F, int maxB, const IsaOps* ops, bool bf16 = false, const Bf16Ops* unit = nullptr)
      : d_(d), F_(F), maxB_(maxB), ops_(ops), T_(pool().size()), bf16_(bf16), unit_(bf16 ? unit : nullptr) {
    th_.resize(T_);
    // L2-resident feature blocks of about 384 KiB
    nb_ = (int)std::max<int64_t>(1, std::min<int64_t>(64, (384 * 1024) / ((int64_t)ops_->gemm->MR * d_ * 4)));
  }

  const IsaOps* ops() const { return ops_; }
  bool bf16() const { return bf16_; }
  // "amx", "avx512bf16", "emulated" under bf16; null under fp32
  const char* bf16Unit() const { return !bf16_ ? nullptr : unit_ ? unit_->name : "emulated"; }
  int d() const { return d_; }
  int F() const { return F_; }
  int maxB() const { return maxB_; }
  int threads() const { return T_; }

  // ---- encode.cc
  // z' = (x − b_dec)·W_enc + b_enc (W given) or z' given (z), then the selection and the aux
  // selections. outs[0] is the main output (selections only), then one per aux.
  void encode(const float* W, const float* bEnc, const float* bDec, const float* x, const float* z, int B,
              float* xc, const SelSpec& sel, const AuxSpec* aux, int nAux, const Out* outs, int64_t* nnz,
              bool* written);
  // Copy a pending result into (larger) caller arrays.
  int64_t emitChecked(int which, const Out& out, size_t rowPtrLen);

  // ---- sparse.cc
  // Codes this dense (ReLU early in training) go through GEMMs: above about 1/12 of the B×F entries,
  // a dense pass at ~500 GFLOP/s costs less than one row of W per entry.
  bool denseCodes(int64_t nnz, int B) const { return (double)nnz * 12.0 > (double)B * (double)F_; }
  void decode(const float* Wdec, const float* bias, const int32_t* rowPtr, const int32_t* index, const float* value,
              int B, float* out);
  void decodeBackward(const float* Wdec, const int32_t* rowPtr, const int32_t* index, const float* value, int B,
                      const float* dOut, float* gWdec, float* dz);
  void encoderBackward(const float* WencT, const float* xc, const int32_t* rowPtr, const int32_t* index, int B,
                       const float* dz, float* gWencT, float* gBenc, float* gBdec);

  // ---- optimizer.cc
  double sumSquares(const float* a, size_t n);
  void adamw(float* p, float* g, float* m, float* v, size_t n, const float* coef);
  void projectRows(const float* W, float* g, int rows, int d);
  void normalizeRows(float* W, int rows, int d);
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
                       double step, double maxGradNorm);

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

  // encode.cc
  static void setupTok(TokLists& L, int64_t k, int ntok, size_t padded);
  static void resetTok(TokLists& L, int ntok);
  Dest dest(const Out& out, Result& r, int64_t nnz, int B, bool& written);
  int64_t finalizeTok(int which, int B, const Out& out, Result& r, bool& written);
  int64_t finalizeMutual(int64_t M, int B, const Out& out, Result& r, bool& written);
  int32_t* rowCursors(Thread& h, int t, const Dest& D);
  void scatterByToken(Thread& h, int t, const Dest& D);
  int64_t finalizeFeature(const int32_t* capacity, int64_t keepTotal, int B, const Out& out, Result& r, bool& written);
  int64_t finalizeRelu(int B, const Out& out, Result& r, bool& written);

  // sparse.cc
  void prepareAccum(int cols);
  AccumJob accumJobByK(int t, int c0, int c1, int K, const int32_t* kPtr, const int32_t* kCols, const float* val,
                       float* colSum, const float* dense, float* out);
  AccumJob accumJob(int t, int c0, int c1, int K, const int32_t* colPtr, const int32_t* colK, const int32_t* colEnt,
                    const float* val, const float* dense, float* out);
  void sampleProducts(const float* W, const float* Y, const int32_t* rowPtr, const int32_t* index, int B, float* out);
  void buildCsc(const int32_t* rowPtr, const int32_t* index, int B);
  void splitFeatures(int align, std::vector<int>& cut);

  const int d_, F_, maxB_;
  const IsaOps* ops_;
  const int T_;
  const bool bf16_;
  const Bf16Ops* const unit_;
  int nb_ = 1;
  std::vector<Thread> th_;
  Result res_[1 + kMaxAux];
  Buf<float> cut_;
  Buf<uint16_t> Wb_;  // precision bf16 on a bf16 unit: W_enc as row tiles, packed once per encode
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

}  // namespace sae
