// The thread pool every kernel runs on: one per process, sized by SAE_THREADS or the CPUs this
// process may use. Work is always partitioned statically by thread id, so which thread computes
// what is a pure function of the problem and the pool size; with partitions chosen so that no
// result depends on them, results are the same for any pool size.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <type_traits>

#include "common.h"

namespace sae {

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
#elif SAE_ARM64
    // ISB stalls for tens of cycles, like x86's PAUSE; YIELD is a no-op on most arm64 cores, which
    // would make the spin phase far shorter than on x86
    __asm__ __volatile__("isb" ::: "memory");
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

// The process-wide pool (created on first use, never destroyed: its workers live as long as the process).
Pool& pool();

}  // namespace sae
