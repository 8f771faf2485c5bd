// Run-time choice of the instruction set: the per-ISA tables compiled by the *_isa.h bodies are
// gathered here into one IsaOps per instruction set.
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "isa.h"

#if SAE_ARM64 && defined(__linux__)
#include <sys/auxv.h>
#endif
#if SAE_ARM64 && defined(__APPLE__)
#include <sys/sysctl.h>
#endif
#if SAE_X86
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#endif

#define SAE_DECLARE_TABLES(ns)                   \
  namespace ns {                                 \
  extern const ::sae::GemmOps kGemm;             \
  extern const ::sae::SelectOps kSelect;         \
  extern const ::sae::SparseOps kSparse;         \
  extern const ::sae::OptimizerOps kOptimizer;   \
  extern const ::sae::LmOps kLm;                 \
  }
#if SAE_X86
namespace isa512 {
extern const ::sae::Bf16Ops kBf16Amx, kBf16Dp;
}
SAE_DECLARE_TABLES(isa512)
SAE_DECLARE_TABLES(isa256)
SAE_DECLARE_TABLES(isa128)
#elif SAE_ARM64
SAE_DECLARE_TABLES(isaneon)
#if SAE_HAVE_BFMMLA
namespace isaneon {
extern const ::sae::Bf16Ops kBf16Mmla;
}
#endif
#endif
#undef SAE_DECLARE_TABLES

namespace sae {

#if SAE_X86

// Addresses only: constant-initialised, so no code compiled for a wider instruction set runs here.
static const IsaOps k512 = {"avx512", &isa512::kGemm, &isa512::kSelect, &isa512::kSparse, &isa512::kOptimizer, &isa512::kLm,
                            &isa512::kBf16Amx, &isa512::kBf16Dp, nullptr};
static const IsaOps k256 = {"avx2", &isa256::kGemm, &isa256::kSelect, &isa256::kSparse, &isa256::kOptimizer, &isa256::kLm,
                            nullptr, nullptr, nullptr};
static const IsaOps k128 = {"sse2", &isa128::kGemm, &isa128::kSelect, &isa128::kSparse, &isa128::kOptimizer, &isa128::kLm,
                            nullptr, nullptr, nullptr};

static bool cpuid7(unsigned sub, unsigned& a, unsigned& b, unsigned& c, unsigned& d) {
  return __get_cpuid_count(7, sub, &a, &b, &c, &d) != 0;
}
// AVX512-BF16: CPUID.(7,1):EAX bit 5 (Cooper Lake, Sapphire Rapids and later, Zen 4 and later).
static bool cpuHasAvx512Bf16() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  return cpuHas512() && cpuid7(1, a, b, c, d) && (a >> 5 & 1u);
}
// AMX-BF16 and AMX-TILE: CPUID.(7,0):EDX bits 22 and 24 (Sapphire Rapids and later).
static bool cpuHasAmx() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  return cpuHasAvx512Bf16() && cpuid7(0, a, b, c, d) && (d >> 22 & 1u) && (d >> 24 & 1u);
}
// Linux gives a process the 8 KiB of tile state only when it asks (arch_prctl, Linux ≥ 5.16);
// asked once per process, for every thread. The answer, and why not, are kept.
static bool amxPermitted(std::string* why) {
  static std::once_flag once;
  static bool ok = false;
  static std::string reason;
  std::call_once(once, [] {
    if (!cpuHasAmx()) {
      reason = "the CPU has no AMX-BF16";
      return;
    }
#if defined(__linux__)
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0) ok = true;
    else reason = std::string("the kernel refused the AMX tile state (arch_prctl: ") + std::strerror(errno) + ")";
#else
    reason = "AMX is used on Linux only";
#endif
  });
  if (!ok && why) *why = reason;
  return ok;
}
const Bf16Ops* bf16UnitByName(const IsaOps* ops, const std::string& name, std::string* why) {
  if (name == "amx") {
    if (!ops->amx) {
      if (why) *why = std::string("the ") + ops->name + " kernels have no AMX code";
      return nullptr;
    }
    return amxPermitted(why) ? ops->amx : nullptr;
  }
  if (name == "avx512bf16") {
    if (!ops->avx512bf16 || !cpuHasAvx512Bf16()) {
      if (why) *why = ops->avx512bf16 ? "the CPU has no AVX512-BF16" : std::string("the ") + ops->name + " kernels have no AVX512-BF16 code";
      return nullptr;
    }
    return ops->avx512bf16;
  }
  if (why) *why = name == "emulated" ? "emulated is the fp32 kernels on rounded operands" : name == "bfmmla" ? "BFMMLA is an arm64 instruction" : "unknown bf16 unit " + name;
  return nullptr;
}

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
#if SAE_HAVE_BFMMLA
static const Bf16Ops* const kMmla = &isaneon::kBf16Mmla;
#else
static const Bf16Ops* const kMmla = nullptr;
#endif
static const IsaOps kNeon = {"neon", &isaneon::kGemm, &isaneon::kSelect, &isaneon::kSparse, &isaneon::kOptimizer, &isaneon::kLm,
                             nullptr, nullptr, kMmla};

bool cpuHas512() { return false; }
bool cpuHas256() { return false; }
const IsaOps* isaByName(const std::string& name) { return name == "neon" ? &kNeon : nullptr; }
static const IsaOps* bestOfCpu() { return &kNeon; }
int availableIsas(const char** names) {
  names[0] = "neon";
  return 1;
}

// FEAT_BF16 (BFMMLA, BFDOT): HWCAP2_BF16 on Linux, hw.optional.arm.FEAT_BF16 on macOS.
static bool cpuHasBf16() {
#if defined(__linux__)
  return (getauxval(AT_HWCAP2) >> 14 & 1ul) != 0;
#elif defined(__APPLE__)
  int v = 0;
  size_t len = sizeof(v);
  return sysctlbyname("hw.optional.arm.FEAT_BF16", &v, &len, nullptr, 0) == 0 && v != 0;
#else
  return false;
#endif
}
const Bf16Ops* bf16UnitByName(const IsaOps* ops, const std::string& name, std::string* why) {
  if (name == "bfmmla") {
    if (!ops->bfmmla) {
      if (why) *why = "this build has no BFMMLA code (it needs GCC 10 or later)";
      return nullptr;
    }
    if (!cpuHasBf16()) {
      if (why) *why = "the CPU has no FEAT_BF16 (BFMMLA)";
      return nullptr;
    }
    return ops->bfmmla;
  }
  if (why) *why = name == "emulated" ? "emulated is the fp32 kernels on rounded operands" : (name == "amx" || name == "avx512bf16") ? name + " is an x86-64 unit" : "unknown bf16 unit " + name;
  return nullptr;
}

#endif

int availableBf16Units(const IsaOps* ops, const char** names) {
  int n = 0;
  if (bf16UnitByName(ops, "amx")) names[n++] = "amx";
  if (bf16UnitByName(ops, "avx512bf16")) names[n++] = "avx512bf16";
  if (bf16UnitByName(ops, "bfmmla")) names[n++] = "bfmmla";
  names[n++] = "emulated";
  return n;
}

const Bf16Ops* bestBf16Unit(const IsaOps* ops) {
  const char* env = std::getenv("SAE_BF16");
  if (env && *env) {
    if (std::string(env) == "emulated") return nullptr;
    const Bf16Ops* u = bf16UnitByName(ops, env);
    if (u) return u;
  }
  if (const Bf16Ops* u = bf16UnitByName(ops, "amx")) return u;
  if (const Bf16Ops* u = bf16UnitByName(ops, "avx512bf16")) return u;
  return bf16UnitByName(ops, "bfmmla");
}

const IsaOps* bestIsa() {
  const char* env = std::getenv("SAE_ISA");
  if (env && *env) {
    const IsaOps* o = isaByName(env);
    if (o) return o;
  }
  return bestOfCpu();
}

}  // namespace sae
