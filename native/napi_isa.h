// The instruction-set argument of both bindings' constructors (create, lmCreate): null or
// undefined for the best this CPU has (SAE_ISA when set and available), else a name isaByName
// knows, refused with a RangeError when this CPU lacks it.
#pragma once

#include <string>

#include "isa.h"
#include "napi.h"

namespace sae {

inline const IsaOps* isaArg(napi_env env, napi_value v) {
  if (nullish(env, v)) return bestIsa();
  char buf[32];
  size_t n;
  CHECK_NAPI(napi_get_value_string_utf8(env, v, buf, sizeof(buf), &n));
  const IsaOps* ops = isaByName(std::string(buf, n));
  if (!ops) failRange(std::string("instruction set ") + buf + " is not available on this CPU");
  return ops;
}

// The precision argument of create/lmCreate: null/undefined = fp32 (bf16 false); otherwise bf16 on
// the unit named — "auto" (the best this process can run: SAE_BF16 when set and available),
// "emulated" (the fp32 kernels on rounded operands), "amx" or "avx512bf16" — returned, null for
// emulated. A unit that cannot run here is a RangeError saying why.
inline const Bf16Ops* bf16Arg(napi_env env, napi_value v, const IsaOps* ops, bool& bf16) {
  bf16 = false;
  if (nullish(env, v)) return nullptr;
  bf16 = true;
  char buf[32];
  size_t n;
  CHECK_NAPI(napi_get_value_string_utf8(env, v, buf, sizeof(buf), &n));
  const std::string name(buf, n);
  if (name == "auto") return bestBf16Unit(ops);
  if (name == "emulated") return nullptr;
  std::string why;
  const Bf16Ops* u = bf16UnitByName(ops, name, &why);
  if (!u) failRange("bf16 unit " + name + " is not available: " + why);
  return u;
}

}  // namespace sae
