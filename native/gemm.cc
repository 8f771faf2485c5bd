// The packed SGEMM, compiled for every instruction set (see gemm_isa.h).
#include "isa.h"

#define SAE_ISA_BODY "gemm_isa.h"
#include "isa_variants.h"
