// Compiles the instruction-set-specific body named by SAE_ISA_BODY once per instruction set of the
// target. On x86-64: three times, for AVX-512 (F/BW/DQ/VL + FMA), AVX2 + FMA and baseline SSE2,
// each in its own namespace (isa512, isa256, isa128) and target region, with SAE_ISA_LEVEL = 512,
// 256 or 128 and the vector primitives of simd.h; one binary then runs anywhere and dispatch.cc
// picks the best tables at run time. On arm64: once, for NEON (namespace isaneon, SAE_ISA_LEVEL
// 128 with SAE_NEON = 1), which armv8-a guarantees, so no target region and no run-time choice.
// A .cc file includes this once, after defining SAE_ISA_BODY. No include guard on purpose.
//
// Keep standard-library templates out of the bodies: an instantiation made inside a target region
// could be emitted with AVX-512 instructions and then shared (as a COMDAT) with baseline code.
//
// g++ opens a target region with `#pragma GCC target`; clang (Apple's included) does not implement
// that pragma, so there the region is a `#pragma clang attribute` that gives every function in it
// the same target attribute.
#ifndef SAE_ISA_BODY
#error "define SAE_ISA_BODY before including isa_variants.h"
#endif

#if SAE_X86

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi,bmi2,popcnt"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi,bmi2,popcnt")
#endif
#define SAE_ISA_LEVEL 512
namespace isa512 {
using namespace ::sae;
#include "simd.h"
#include SAE_ISA_BODY
}  // namespace isa512
#undef SAE_ISA_LEVEL
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,bmi,popcnt"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi,popcnt")
#endif
#define SAE_ISA_LEVEL 256
namespace isa256 {
using namespace ::sae;
#include "simd.h"
#include SAE_ISA_BODY
}  // namespace isa256
#undef SAE_ISA_LEVEL
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#define SAE_ISA_LEVEL 128
namespace isa128 {
using namespace ::sae;
#include "simd.h"
#include SAE_ISA_BODY
}  // namespace isa128
#undef SAE_ISA_LEVEL

#elif SAE_ARM64

#define SAE_ISA_LEVEL 128
#define SAE_NEON 1
namespace isaneon {
using namespace ::sae;
#include "simd.h"
#include SAE_ISA_BODY
}  // namespace isaneon
#undef SAE_NEON
#undef SAE_ISA_LEVEL

#else
#error "the native kernels need x86-64 or arm64"
#endif
