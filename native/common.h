// Plumbing shared by every part of the native kernels: page-backed reusable buffers and the error
// type that the Node-API layer turns into a JavaScript exception.
//
// Everything in this header is compiled for the baseline of the target (x86-64, or armv8-a where
// NEON is always present); only code included through isa_variants.h (inside its target regions)
// uses AVX2 / AVX-512.
#pragma once

#include <sys/mman.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SAE_X86 1
#else
#define SAE_X86 0
#endif
#if defined(__aarch64__)
#include <arm_neon.h>
#define SAE_ARM64 1
#else
#define SAE_ARM64 0
#endif
// arm64's bf16 unit (native/bf16_neon.h) needs BFMMLA intrinsics in functions with a bf16 target
// attribute: GCC 10 and later. Other compilers (Apple clang) build without it: bf16 runs emulated.
#if SAE_ARM64 && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 10
#define SAE_HAVE_BFMMLA 1
#else
#define SAE_HAVE_BFMMLA 0
#endif

namespace sae {

constexpr int kMaxAux = 8;

static const float kInf = std::numeric_limits<float>::infinity();

// A user error (bad argument): the Node-API layer throws it as a TypeError, or a RangeError when
// `range` is set. Kernels throw it only from the calling thread, never from pool workers.
struct UserErr {
  std::string msg;
  bool range;
};
[[noreturn]] inline void fail(const std::string& m) { throw UserErr{m, false}; }
[[noreturn]] inline void failRange(const std::string& m) { throw UserErr{m, true}; }

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

}  // namespace sae
