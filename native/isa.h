// What the instruction-set-specific code (the *_isa.h bodies, compiled once per instruction set
// through isa_variants.h) exchanges with the baseline code: plain-data job descriptions and one
// table of entry points per concern and instruction set. dispatch.cc picks the tables at run time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "common.h"

namespace sae {

// ---------------------------------------------------------------------------------------------
// Candidate entries and their strict total orders ("better" = larger value, then smaller index),
// exactly the tie rules of src/sae/selection.ts.
struct EntJ {  // per-token lists: j = feature
  float v;
  int32_t j;
};
struct EntB {  // per-feature lists: b = token
  float v;
  int32_t b;
};
struct EntM {  // whole-batch lists (mutual): flat order b·F + j
  float v;
  int32_t b;
  int32_t j;
};
inline bool betterJ(const EntJ& x, const EntJ& y) { return x.v > y.v || (x.v == y.v && x.j < y.j); }
inline bool betterB(const EntB& x, const EntB& y) { return x.v > y.v || (x.v == y.v && x.b < y.b); }
inline bool betterM(const EntM& x, const EntM& y) {
  return x.v > y.v || (x.v == y.v && (x.b < y.b || (x.b == y.b && x.j < y.j)));
}

// How a tile of affinities is consumed (see consume() in isa_body.h).
enum MainMode : int {
  kModeNone = 0,    // GEMM only (benchmarks of the floor)
  kModeDense = 1,   // store z' densely (tests, the selection stage on given affinities)
  kModeToken = 2,   // per-token running thresholds (TopK)
  kModeFeature = 3, // per-feature thresholds (Feature Choice, ReLU, JumpReLU, global threshold)
  kModeGlobal = 4,  // one running threshold (Mutual Choice)
  kModeTile = 5,    // whole tiles to onTile (sampling z' at given entries)
};

// Handlers get the row of the tile (NR tokens, token t at row[t]), the feature j, the bit mask of
// tokens that passed the vector filter and the thread-local index of the tile's first token.
using MainHandler = void (*)(void* st, int j, uint32_t mask, const float* row, int tl0);
using AuxHandler = void (*)(void* st, int a, int j, uint32_t mask, const float* row, int tl0);
using TileHandler = void (*)(void* st, const float* tile, int rows, int j0, int tl0, uint32_t valid);

struct Consumer {
  int mode = kModeNone;
  float* tokThr = nullptr;          // kModeToken: per thread-local token, padded with +inf
  const float* featThr = nullptr;   // kModeFeature: per feature
  const float* globalThr = nullptr; // kModeGlobal: read per row (it rises during the scan)
  float* denseOut = nullptr;        // kModeDense: z'[b·F + j], b global
  int64_t F = 0;
  int tok0 = 0;  // first global token of this thread
  int nAux = 0;
  const uint8_t* auxMask[kMaxAux] = {};
  float* auxThr[kMaxAux] = {};
  MainHandler onMain = nullptr;
  AuxHandler onAux = nullptr;
  TileHandler onTile = nullptr;
  void* st = nullptr;
};

// One thread's share of a dense accumulation Out[c] += Σ_k S(k, c)·Dense[k] (see denseAccum).
// S is given by column (colPtr/colK/colEnt: column c's entries in k order) or, with kPtr set, by
// k (kPtr/kCols: k's entries in column order, values val[p]); then colSum[c] += Σ_k S(k, c) too.
struct AccumJob {
  int d = 0;
  int K = 0;
  int c0 = 0, c1 = 0;
  int kc = 256;
  const int32_t* colPtr = nullptr;
  const int32_t* colK = nullptr;
  const int32_t* colEnt = nullptr;
  const float* val = nullptr;
  const int32_t* kPtr = nullptr;
  const int32_t* kCols = nullptr;
  float* colSum = nullptr;
  const float* dense = nullptr;
  float* out = nullptr;
  float* Ap = nullptr;  // (d/MR + 1)·(kc·MR + MR) floats
  float* Bp = nullptr;  // kc·NR floats, 64-byte aligned
  float* tile = nullptr;
  int32_t* cur = nullptr;  // max(c1 − c0, kc)
};

// One thread's share of an encoder pass.
struct ScanJob {
  const float* W = nullptr;      // WencT, F×d (GEMM source), or null
  const float* bEnc = nullptr;   // F
  const float* dense = nullptr;  // B×F affinities (selection-only source), when W is null
  int d = 0;
  int F = 0;
  int tok0 = 0;  // global index of the first token
  int ntok = 0;
  const float* Xp = nullptr;  // packed (x − b_dec) panels of this thread's tokens
  float* Wp = nullptr;        // packing scratch for one feature block
  float* tile = nullptr;      // MR×NR scratch (32×NR under a bf16 unit)
  int nb = 1;                 // micro-panels per feature block
  Consumer* c = nullptr;
  // precision bf16 (docs/precision.md), emulated on the fp32 kernel: Xp was rounded by the caller
  // and each packed block of W is rounded here (its biases are not)
  bool roundW = false;
  // precision bf16 on a bf16 unit (Bf16Ops): x panels and one W block as bf16, d padded to kBf16K
  const uint16_t* Xb = nullptr;
  const uint16_t* Wb = nullptr;
};

// One thread's share of causal attention: query blocks [u0, u1) of the B·H·⌈T/QB⌉ units
// (sequence b, head h, queries of one block), each independent of the others.
struct AttnJob {
  const float* q = nullptr;
  const float* k = nullptr;
  const float* v = nullptr;
  float* out = nullptr;
  float* pattern = nullptr;  // [B, H, T, T] or null
  int B = 0, T = 0, H = 0, hd = 0;
  int QB = 64;  // queries per unit
  int64_t u0 = 0, u1 = 0;
  float scale = 1;
  float* kt = nullptr;  // scratch: one head's keys transposed, hd × T (padded)
  float* s = nullptr;   // scratch: T (padded) scores
};

// k-block of the LM's linear layers: a token panel's slice (NR·KC floats) stays in L1.
constexpr int kLinearKc = 256;

// One thread's share of an LM linear layer y[n×m] = x[n×K]·W + bias (see linear in gemm_isa.h).
struct LinearJob {
  const float* Xp = nullptr;  // x packed as panels of MR tokens (packTokens), all n tokens
  int n = 0, K = 0, m = 0;
  const float* W = nullptr;   // [K×m] when inOut, else [m×K]
  bool inOut = false;
  const float* bias = nullptr;  // m, or null
  int o0 = 0, o1 = 0;           // the outputs of this piece of work
  int p0 = 0, p1 = 0;           // and its token panels (MR tokens each)
  int nb = 1;                   // panels of NR outputs per packed block of W
  float* Wp = nullptr;          // nb·NR·kLinearKc floats, 64-byte aligned
  float* tile = nullptr;        // MR×NR, 64-byte aligned
  float* y = nullptr;
};

// ------------------------------------------------------------------------------------- bf16
// The bf16 GEMMs (bf16_isa.h; docs/precision.md): operands rounded to bf16 (RNE, bit-identical to
// src/kernels/bf16.ts), products summed in fp32, C[r][c] = Σ_k A[r][k]·B[k][c]. k is padded with
// zeros to a multiple of kBf16K. The layouts:
//   A, rows: tiles of `rows` rows (Bf16Ops.rows), tile t at t·rows·Kp — AMX: the tile's rows
//           row-major (A tiles load 16 rows at a stride); AVX512-BF16: [k/2][rows] pairs (one
//           broadcast stream). Rows past the end are zero.
//   B, columns: groups of 16 columns, group = [k/2][16][2] (the VNNI pair layout that TDPBF16PS's
//           B tile and VDPBF16PS's vector operand read); missing columns zero.
// The SAE encoder puts features in A and tokens in B, so a tile of C is the [feature][token] tile
// consume() reads; the LM's linear layers put tokens in A and outputs in B.
constexpr int kBf16K = 32;
inline int bf16Kp(int K) { return (K + kBf16K - 1) / kBf16K * kBf16K; }

// Pieces of the bf16 linear layer: rows × outputs, and the per-thread partial sums they need.
constexpr int kBf16PieceRows = 256, kBf16PieceOut = 256;

// One thread's share of y[n×m] = x·W + bias (see linearBf16).
struct Bf16LinearJob {
  const uint16_t* Xb = nullptr;  // x as row tiles
  const uint16_t* Wb = nullptr;  // W as column groups (packLinearW)
  const float* bias = nullptr;
  int n = 0, K = 0, m = 0;
  int o0 = 0, o1 = 0;  // outputs (multiples of 32 except at m)
  int r0 = 0, r1 = 0;  // token rows (multiples of `rows` except at n)
  float* tile = nullptr;  // kBf16PieceRows × kBf16PieceOut fp32 scratch
  float* y = nullptr;
};

struct Bf16Ops {
  const char* name;  // "amx" | "avx512bf16" | "bfmmla"
  int rows;          // rows of A per tile of C (32 | 14 | 8)
  // (x − b_dec) of tokens [tok0, tok0+ntok): fp32 rows to xcOut (may be null), bf16 column groups
  // of 16 tokens to Xb (ceil(ntok/32)·2 groups; the last padded with zeros)
  void (*packX)(const float* x, const float* bDec, float* xcOut, int tok0, int ntok, int d, uint16_t* Xb);
  // row tiles [t0, t1) of x [n×K] (rows ≥ n zero)
  void (*packRows)(const float* x, int K, int n, int t0, int t1, uint16_t* Ab);
  // the encoder scan of gemm_isa.h on bf16 tiles: W_enc packed by packRows into job.Wb (all F rows)
  void (*scan)(const ScanJob& job);
  // W [K×m] (inOut) or [m×K] as column groups [g0, g1) of 16 outputs
  void (*packLinearW)(const float* W, bool inOut, int K, int m, int g0, int g1, uint16_t* Wb);
  void (*linear)(const Bf16LinearJob& job);
};

// The host LM's elementwise and per-row ops (lm_isa.h).
struct LmOps {
  void (*layerNorm)(const float* x, int r0, int r1, int d, const float* w, const float* b, float eps, float* y);
  void (*geluTanh)(float* x, size_t n);
  void (*geluErf)(float* x, size_t n);
  void (*add)(float* a, const float* b, size_t n);
  // rows [r0, r1) of x [B·T, H·hd]; cs = cos, sn = sin, each [T][dims/2]
  void (*rotary)(float* x, int r0, int r1, int T, int H, int hd, int half, const float* cs, const float* sn);
  void (*attention)(const AttnJob& job);
  void (*crossEntropy)(const float* logits, int r0, int r1, int V, const int32_t* targets, float* loss);
  // rows [r0, r1): KL(softmax p_r ‖ softmax q_r); q row r at q + r·qStride (0: one row for all)
  void (*klDivergence)(const float* p, const float* q, int r0, int r1, int V, int64_t qStride, float* out);
};

// The packed SGEMM (gemm_isa.h): packing, the MR×NR register-blocked micro-kernel and its drivers.
struct GemmOps {
  int MR;  // rows of a micro-tile (broadcast side)
  int NR;  // columns of a micro-tile (vector side: two vectors)
  size_t (*packedXFloats)(int ntok, int d);
  size_t (*packedWFloats)(int nb, int d);
  void (*packX)(const float* x, const float* bDec, float* xcOut, int tok0, int ntok, int d, float* Xp);
  void (*scan)(const ScanJob& job);
  void (*denseAccum)(const AccumJob& job);
  void (*packTokens)(const float* x, int n, int K, int p0, int p1, float* Ap);  // panels [p0, p1) of MR tokens
  void (*linear)(const LinearJob& job);
  void (*roundBf16)(float* p, size_t n);  // in place, RNE (bf16 emulated on these fp32 kernels)
};

// The selections' vectorised search (select_isa.h).
struct SelectOps {
  float (*kthLargest)(const float* v, size_t n, size_t k, int bits);  // v[i] ≥ 0, 1 ≤ k ≤ n
};

// The SAE's sparse passes (sparse_isa.h).
struct SparseOps {
  void (*decodeRows)(const float* Wdec, const float* bias, const int32_t* rowPtr, const int32_t* index,
                     const float* value, int b0, int b1, int d, float* out);
  void (*decodeBackwardCols)(const float* Wdec, const int32_t* colPtr, const int32_t* colEnt, const int32_t* colTok,
                             const float* value, const float* dOut, int j0, int j1, int d, float* gWdec, float* dz);
  void (*encoderBackwardCols)(const float* WencT, const float* xc, const int32_t* colPtr, const int32_t* colEnt,
                              const int32_t* colTok, const float* dz, int j0, int j1, int d, int chunk,
                              float* gWencT, float* gBenc, float* partial);
  void (*weightedRowSum)(const float* W, const float* s, int j0, int j1, int d, int chunk, float* partial);
};

// The optimizer's streaming passes (optimizer_isa.h).
struct OptimizerOps {
  double (*sumSquares)(const float* a, size_t n);
  void (*adamw)(float* p, float* g, float* m, float* v, size_t n, const float* coef);
  void (*projectRows)(const float* W, float* g, int r0, int r1, int d);
  void (*normalizeRows)(float* W, int r0, int r1, int d);
  double (*projectRowsNorm)(const float* W, const float* g, float* c, int r0, int r1, int d);
  void (*adamwRowsNormalize)(float* W, float* g, float* m, float* v, const float* c, int r0, int r1, int d,
                             const float* coef);
};

// Everything one instruction set offers.
struct IsaOps {
  const char* name;
  const GemmOps* gemm;
  const SelectOps* select;
  const SparseOps* sparse;
  const OptimizerOps* opt;
  const LmOps* lm;
  const Bf16Ops* amx;         // null where not compiled for this instruction set
  const Bf16Ops* avx512bf16;  // likewise
  const Bf16Ops* bfmmla;      // likewise (arm64 FEAT_BF16)
};

bool cpuHas512();
bool cpuHas256();
// The tables for an instruction set by name (avx512, avx2, sse2 on x86-64; neon on arm64), or
// null when the CPU lacks it.
const IsaOps* isaByName(const std::string& name);
// The names of the instruction sets this CPU can run, best first (at most kMaxIsas); their count.
constexpr int kMaxIsas = 4;
int availableIsas(const char** names);
// SAE_ISA when set and available, else the best the CPU has.
const IsaOps* bestIsa();

// The bf16 unit of an instruction set's tables by name ("amx", "avx512bf16", "bfmmla"), or null when the CPU
// (or, for AMX, the operating system) does not offer it; "emulated" also gives null (the fp32
// kernels on rounded operands). why, when given, receives the reason a unit is unavailable.
const Bf16Ops* bf16UnitByName(const IsaOps* ops, const std::string& name, std::string* why = nullptr);
// The units this process can run with ops, best first, always ending with "emulated"; their count.
int availableBf16Units(const IsaOps* ops, const char** names);
// SAE_BF16 when set and available, else the best unit; null = emulated.
const Bf16Ops* bestBf16Unit(const IsaOps* ops);

}  // namespace sae
