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

}  // namespace sae
