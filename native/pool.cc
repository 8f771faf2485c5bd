#include "pool.h"

#include <sched.h>
#ifdef __APPLE__
#include <sys/sysctl.h>
#endif

#include <cstdlib>

namespace sae {

static int poolSizeFromEnv() {
  const char* env = std::getenv("SAE_THREADS");
  if (env && *env) {
    const int n = std::atoi(env);
    if (n >= 1 && n <= 256) return n;
  }
#ifdef __APPLE__
  // Apple silicon: its performance cores only. Work is split statically (results must not depend on
  // timing), so a thread on an efficiency core would hold every kernel call up. (Intel Macs have no
  // hw.perflevel0 and fall through.)
  int perf = 0;
  size_t len = sizeof(perf);
  if (sysctlbyname("hw.perflevel0.physicalcpu", &perf, &len, nullptr, 0) == 0 && perf >= 1) return std::min(perf, 64);
#endif
#ifdef __linux__
  // the CPUs this process may use (taskset, cgroups' cpusets); macOS has no affinity masks
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n >= 1) return std::min(n, 64);
  }
#endif
  const unsigned h = std::thread::hardware_concurrency();
  return h >= 1 ? (int)std::min(h, 64u) : 1;
}

Pool& pool() {
  // Intentionally leaked: worker threads live for the life of the process.
  static Pool* p = new Pool(poolSizeFromEnv());
  return *p;
}

}  // namespace sae
