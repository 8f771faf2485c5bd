// Shared plumbing for the native SAE kernels: reusable page-backed buffers, a small persistent
// thread pool, and the plain-data types that the instruction-set-specific code (isa_body.h)
// exchanges with the orchestration in sae_kernels.cc.
//
// Everything in this header is compiled for baseline x86-64; only code inside the
// `#pragma GCC target` regions of sae_kernels.cc uses AVX2 / AVX-512.
#pragma once

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SAE_X86 1
#else
#define SAE_X86 0
#endif

namespace sae {

constexpr int kMaxAux = 8;

// ---------------------------------------------------------------------------------------------
// Buf: a growable array of trivially copyable T backed by its own anonymous mapping. Large
// buffers ask for transparent huge pages (first touch of a 4 KiB page costs microseconds on the
// machines we target), and a buffer only ever grows, so steady-state training touches no fresh
// memory. reserve() never throws: it reports failure so that worker threads can use it too.
template <class T>
class Buf {
 public:
  Buf() = default;
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  Buf(Buf&& o) noexcept : p_(o.p_), cap_(o.cap_), bytes_(o.bytes_) { o.p_ = nullptr; o.cap_ = o.bytes_ = 0; }
  Buf& operator=(Buf&& o) noexcept {
    if (this != &o) {
      release();
      p_ = o.p_;
      cap_ = o.cap_;
      bytes_ = o.bytes_;
      o.p_ = nullptr;
      o.cap_ = o.bytes_ = 0;
    }
    return *this;
  }
  ~Buf() { release(); }

  T* data() const { return p_; }
  T& operator[](size_t i) const { return p_[i]; }
  size_t capacity() const { return cap_; }

  // Make room for n elements. With keep, the first `keepCount` elements survive a reallocation.
  bool reserve(size_t n, size_t keepCount = 0) {
    if (n <= cap_) return true;
    size_t want = n;
    if (keepCount > 0) want = std::max(n, cap_ + cap_ / 2);
    size_t bytes = want * sizeof(T);
    if (bytes == 0) bytes = 64;
    const size_t huge = size_t(2) << 20;
    bytes = (bytes + 4095) & ~size_t(4095);
    void* m = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return false;
#ifdef MADV_HUGEPAGE
    if (bytes >= huge) madvise(m, bytes, MADV_HUGEPAGE);
#endif
    if (keepCount > 0 && p_) std::memcpy(m, p_, std::min(keepCount, cap_) * sizeof(T));
    release();
    p_ = static_cast<T*>(m);
    cap_ = bytes / sizeof(T);
    bytes_ = bytes;
    return true;
  }

 private:
  void release() {
    if (p_) munmap(p_, bytes_);
    p_ = nullptr;
    cap_ = bytes_ = 0;
  }
  T* p_ = nullptr;
  size_t cap_ = 0;
  size_t bytes_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Pool: n-1 persistent worker threads plus the calling thread. run(fn) calls fn(tid) once for
// every tid in [0, n) and returns when all are done. Work is always partitioned statically by
// tid, so which thread computes what is a pure function of the problem and the pool size.
class Pool {
 public:
  explicit Pool(int n) : n_(n < 1 ? 1 : n) {
    for (int i = 1; i < n_; i++) {
      std::thread t([this, i] { loop(i); });
      t.detach();
    }
  }
  int size() const { return n_; }

  template <class Fn>
  void run(Fn&& fn) {
    if (n_ == 1) {
      fn(0);
      return;
    }
    std::lock_guard<std::mutex> serial(runMu_);
    using F = typename std::remove_reference<Fn>::type;
    fn_ = [](void* a, int tid) { (*static_cast<F*>(a))(tid); };
    arg_ = static_cast<void*>(&fn);
    pending_.store(n_ - 1, std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lk(mu_);
      gen_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    fn(0);
    for (int spin = 0; pending_.load(std::memory_order_acquire) != 0; spin++) {
      if (spin < kSpin) {
        pause();
        continue;
      }
      std::unique_lock<std::mutex> lk(mu_);
      done_.wait(lk, [&] { return pending_.load(std::memory_order_acquire) == 0; });
      break;
    }
  }

 private:
  static constexpr int kSpin = 4000;
  static void pause() {
#if SAE_X86
    _mm_pause();
#endif
  }
  void loop(int id) {
    uint64_t seen = 0;
    for (;;) {
      uint64_t g = gen_.load(std::memory_order_acquire);
      for (int spin = 0; g == seen && spin < kSpin; spin++) {
        pause();
        g = gen_.load(std::memory_order_acquire);
      }
      if (g == seen) {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return gen_.load(std::memory_order_acquire) != seen; });
        g = gen_.load(std::memory_order_acquire);
      }
      seen = g;
      fn_(arg_, id);
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lk(mu_);
        done_.notify_one();
      }
    }
  }

  const int n_;
  std::mutex runMu_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::condition_variable done_;
  std::atomic<uint64_t> gen_{0};
  std::atomic<int> pending_{0};
  void (*fn_)(void*, int) = nullptr;
  void* arg_ = nullptr;
};

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
  float* tile = nullptr;      // MR×NR scratch
  int nb = 1;                 // micro-panels per feature block
  Consumer* c = nullptr;
};

// The instruction-set-specific entry points (one table per ISA).
struct IsaOps {
  const char* name;
  int MR;
  int NR;
  size_t (*packedXFloats)(int ntok, int d);
  size_t (*packedWFloats)(int nb, int d);
  void (*packX)(const float* x, const float* bDec, float* xcOut, int tok0, int ntok, int d, float* Xp);
  void (*scan)(const ScanJob& job);
  float (*kthLargest)(const float* v, size_t n, size_t k, int bits);  // v[i] ≥ 0, 1 ≤ k ≤ n
  void (*decodeRows)(const float* Wdec, const float* bias, const int32_t* rowPtr, const int32_t* index,
                     const float* value, int b0, int b1, int d, float* out);
  void (*decodeBackwardCols)(const float* Wdec, const int32_t* colPtr, const int32_t* colEnt, const int32_t* colTok,
                             const float* value, const float* dOut, int j0, int j1, int d, float* gWdec, float* dz);
  void (*encoderBackwardCols)(const float* WencT, const float* xc, const int32_t* colPtr, const int32_t* colEnt,
                              const int32_t* colTok, const float* dz, int j0, int j1, int d, int chunk,
                              float* gWencT, float* gBenc, float* partial);
  double (*sumSquares)(const float* a, size_t n);
  void (*adamw)(float* p, float* g, float* m, float* v, size_t n, const float* coef);
  void (*projectRows)(const float* W, float* g, int r0, int r1, int d);
  void (*normalizeRows)(float* W, int r0, int r1, int d);
  void (*denseAccum)(const AccumJob& job);
  void (*weightedRowSum)(const float* W, const float* s, int j0, int j1, int d, int chunk, float* partial);
  double (*projectRowsNorm)(const float* W, const float* g, float* c, int r0, int r1, int d);
  void (*adamwRowsNormalize)(float* W, float* g, float* m, float* v, const float* c, int r0, int r1, int d,
                             const float* coef);
};

}  // namespace sae
