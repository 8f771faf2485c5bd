// Run-time choice of the instruction set: the per-ISA tables compiled by the *_isa.h bodies are
// gathered here into one IsaOps per instruction set.
#include <cstdlib>

#include "isa.h"

#define SAE_DECLARE_TABLES(ns)                   \
  namespace ns {                                 \
  extern const ::sae::GemmOps kGemm;             \
  extern const ::sae::SelectOps kSelect;         \
  extern const ::sae::SparseOps kSparse;         \
  extern const ::sae::OptimizerOps kOptimizer;   \
  extern const ::sae::LmOps kLm;                 \
  }
#if SAE_X86
SAE_DECLARE_TABLES(isa512)
SAE_DECLARE_TABLES(isa256)
SAE_DECLARE_TABLES(isa128)
#elif SAE_ARM64
SAE_DECLARE_TABLES(isaneon)
#endif
#undef SAE_DECLARE_TABLES

namespace sae {

#if SAE_X86

// Addresses only: constant-initialised, so no code compiled for a wider instruction set runs here.
static const IsaOps k512 = {"avx512", &isa512::kGemm, &isa512::kSelect, &isa512::kSparse, &isa512::kOptimizer, &isa512::kLm};
static const IsaOps k256 = {"avx2", &isa256::kGemm, &isa256::kSelect, &isa256::kSparse, &isa256::kOptimizer, &isa256::kLm};
static const IsaOps k128 = {"sse2", &isa128::kGemm, &isa128::kSelect, &isa128::kSparse, &isa128::kOptimizer, &isa128::kLm};

bool cpuHas512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma");
}
bool cpuHas256() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
const IsaOps* isaByName(const std::string& name) {
  if (name == "avx512") return cpuHas512() ? &k512 : nullptr;
  if (name == "avx2") return cpuHas256() ? &k256 : nullptr;
  if (name == "sse2") return &k128;
  return nullptr;
}
static const IsaOps* bestOfCpu() {
  if (cpuHas512()) return &k512;
  if (cpuHas256()) return &k256;
  return &k128;
}
int availableIsas(const char** names) {
  int n = 0;
  if (cpuHas512()) names[n++] = "avx512";
  if (cpuHas256()) names[n++] = "avx2";
  names[n++] = "sse2";
  return n;
}

#elif SAE_ARM64

// armv8-a makes NEON (Advanced SIMD with double precision and FMA) part of the baseline: the one
// table runs on every arm64 CPU.
static const IsaOps kNeon = {"neon", &isaneon::kGemm, &isaneon::kSelect, &isaneon::kSparse, &isaneon::kOptimizer, &isaneon::kLm};

bool cpuHas512() { return false; }
bool cpuHas256() { return false; }
const IsaOps* isaByName(const std::string& name) { return name == "neon" ? &kNeon : nullptr; }
static const IsaOps* bestOfCpu() { return &kNeon; }
int availableIsas(const char** names) {
  names[0] = "neon";
  return 1;
}

#endif

const IsaOps* bestIsa() {
  const char* env = std::getenv("SAE_ISA");
  if (env && *env) {
    const IsaOps* o = isaByName(env);
    if (o) return o;
  }
  return bestOfCpu();
}

}  // namespace sae
