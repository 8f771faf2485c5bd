// Compiles the instruction-set-specific body named by SAE_ISA_BODY three times: for AVX-512
// (F/BW/DQ/VL + FMA), AVX2 + FMA and baseline SSE2, each in its own namespace (isa512, isa256,
// isa128) and `#pragma GCC target` region, with SAE_ISA_LEVEL = 512, 256 or 128 and the vector
// primitives of simd.h. One binary then runs anywhere and dispatch.cc picks the best tables at run
// time. A .cc file includes this once, after defining SAE_ISA_BODY. No include guard on purpose.
//
// Keep standard-library templates out of the bodies: an instantiation made inside a target region
// could be emitted with AVX-512 instructions and then shared (as a COMDAT) with baseline code.
#ifndef SAE_ISA_BODY
#error "define SAE_ISA_BODY before including isa_variants.h"
#endif
#if !SAE_X86
#error "the native kernels need x86-64"
#endif

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi,bmi2,popcnt")
#define SAE_ISA_LEVEL 512
namespace isa512 {
using namespace ::sae;
#include "simd.h"
#include SAE_ISA_BODY
}  // namespace isa512
#undef SAE_ISA_LEVEL
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi,popcnt")
#define SAE_ISA_LEVEL 256
namespace isa256 {
using namespace ::sae;
#include "simd.h"
#include SAE_ISA_BODY
}  // namespace isa256
#undef SAE_ISA_LEVEL
#pragma GCC pop_options

#define SAE_ISA_LEVEL 128
namespace isa128 {
using namespace ::sae;
#include "simd.h"
#include SAE_ISA_BODY
}  // namespace isa128
#undef SAE_ISA_LEVEL
