// Node-API bindings of the host LM's ops (src/kernels/lm-native.ts). Every length is checked
// against the shapes before any kernel runs, so no op can read or write out of bounds.
#include <cmath>
#include <cstring>

#include "lm_ops.h"
#include "napi.h"
#include "napi_isa.h"

namespace sae {

static LmInstance* lmInst(napi_env env, napi_value v) {
  napi_valuetype t;
  CHECK_NAPI(napi_typeof(env, v, &t));
  if (t != napi_external) fail("not a native LM kernel instance");
  void* p;
  CHECK_NAPI(napi_get_value_external(env, v, &p));
  return static_cast<LmInstance*>(p);
}

static int dim(napi_env env, napi_value v, const char* name) { return (int)count(env, v, name, INT32_MAX); }

static bool flag(napi_env env, napi_value v) {
  bool b = false;
  CHECK_NAPI(napi_get_value_bool(env, v, &b));
  return b;
}

static void finalizeLm(napi_env, void* data, void*) { delete static_cast<LmInstance*>(data); }

// lmCreate(isa, bf16Unit|null) → handle
static napi_value jsLmCreate(napi_env env, napi_callback_info info) {
  return guard(env, [&]() -> napi_value {
    napi_value a[2];
    args(env, info, 2, a);
    const IsaOps* ops = isaArg(env, a[0]);
    bool bf16 = false;
    const Bf16Ops* unit = bf16Arg(env, a[1], ops, bf16);
    LmInstance* in = new LmInstance(ops, bf16, unit);
    napi_value ext;
    if (napi_create_external(env, in, finalizeLm, nullptr, &ext) != napi_ok) {
      delete in;
      fail("could not create the LM kernel instance");
    }
    return ext;
  });
}

// lmLinear(h, x, n, k, W, m, inOut, bias|null, y)
static napi_value jsLmLinear(napi_env env, napi_callback_info info) {
  return guard(env, [&]() -> napi_value {
    napi_value a[9];
    args(env, info, 9, a);
    LmInstance* in = lmInst(env, a[0]);
    Arr<float> x = f32(env, a[1], "x"), W = f32(env, a[4], "W"), bias = f32(env, a[7], "bias", true), y = f32(env, a[8], "y");
    const int n = dim(env, a[2], "n"), k = dim(env, a[3], "k"), m = dim(env, a[5], "m");
    atLeast(x.len, (int64_t)n * k, "x");
    atLeast(W.len, (int64_t)k * m, "W");
    if (bias.data) atLeast(bias.len, m, "bias");
    atLeast(y.len, (int64_t)n * m, "y");
    if (n > 0 && m > 0 && x.data < y.data + (size_t)n * m && y.data < x.data + (size_t)n * k) fail("linear: y must not alias x");
    in->linear(x.data, n, k, W.data, m, flag(env, a[6]), bias.data, y.data);
    return nullptr;
  });
}

// lmBf16Unit(h) → "amx" | "avx512bf16" | "emulated" | null (fp32)
static napi_value jsLmBf16Unit(napi_env env, napi_callback_info info) {
  return guard(env, [&]() -> napi_value {
    napi_value a[1];
    args(env, info, 1, a);
    LmInstance* in = lmInst(env, a[0]);
    if (!in->bf16()) return nullptr;
    return mkStr(env, in->unit() ? in->unit()->name : "emulated");
  });
}

// lmPackedWLength(h, K, m) → the length of lmPackBf16's output: Uint16Array elements on a bf16
// unit, Float32Array elements (K·m, W rounded in its own layout) when emulated
static napi_value jsLmPackedWLength(napi_env env, napi_callback_info info) {
  return guard(env, [&]() -> napi_value {
    napi_value a[3];
    args(env, info, 3, a);
    LmInstance* in = lmInst(env, a[0]);
    const int k = dim(env, a[1], "k"), m = dim(env, a[2], "m");
    if (!in->bf16()) failRange("lmPackedWLength: the instance computes in fp32");
    return mkNum(env, in->unit() ? (double)LmInstance::packedWElems(k, m) : (double)k * m);
  });
}

// lmPackBf16(h, W, k, m, inOut, out): W as the bf16 GEMM reads it, once per weight matrix
static napi_value jsLmPackBf16(napi_env env, napi_callback_info info) {
  return guard(env, [&]() -> napi_value {
    napi_value a[6];
    args(env, info, 6, a);
    LmInstance* in = lmInst(env, a[0]);
    Arr<float> W = f32(env, a[1], "W");
    const int k = dim(env, a[2], "k"), m = dim(env, a[3], "m");
    atLeast(W.len, (int64_t)k * m, "W");
    if (!in->bf16()) failRange("lmPackBf16: the instance computes in fp32");
    if (in->unit()) {
      Arr<uint16_t> out = u16(env, a[5], "out");
      atLeast(out.len, (int64_t)LmInstance::packedWElems(k, m), "out");
      in->packLinearW(W.data, flag(env, a[4]), k, m, out.data);
    } else {
      Arr<float> out = f32(env, a[5], "out");
      atLeast(out.len, (int64_t)k * m, "out");
      std::memcpy(out.data, W.data, sizeof(float) * (size_t)k * m);
      in->ops()->gemm->roundBf16(out.data, (size_t)k * m);
    }
    return nullptr;
  });
}

// lmLinearBf16(h, x, n, k, Wpacked, m, inOut, bias|null, y): linear under bf16 with lmPackBf16's W
static napi_value jsLmLinearBf16(napi_env env, napi_callback_info info) {
  return guard(env, [&]() -> napi_value {
    napi_value a[9];
    args(env, info, 9, a);
    LmInstance* in = lmInst(env, a[0]);
    if (!in->bf16()) failRange("lmLinearBf16: the instance computes in fp32");
    Arr<float> x = f32(env, a[1], "x"), bias = f32(env, a[7], "bias", true), y = f32(env, a[8], "y");
    const int n = dim(env, a[2], "n"), k = dim(env, a[3], "k"), m = dim(env, a[5], "m");
    atLeast(x.len, (int64_t)n * k, "x");
    if (bias.data) atLeast(bias.len, m, "bias");
    atLeast(y.len, (int64_t)n * m, "y");
    if (n > 0 && m > 0 && x.data < y.data + (size_t)n * m && y.data < x.data + (size_t)n * k) fail("linear: y must not alias x");
    if (in->unit()) {
      Arr<uint16_t> Wb = u16(env, a[4], "W");
      atLeast(Wb.len, (int64_t)LmInstance::packedWElems(k, m), "W");
      in->linearBf16(x.data, n, k, Wb.data, m, bias.data, y.data);
    } else {
      Arr<float> W = f32(env, a[4], "W");
      atLeast(W.len, (int64_t)k * m, "W");
      in->linear(x.data, n, k, W.data, m, flag(env, a[6]), bias.data, y.data, true);
    }
    return nullptr;
  });
}

// lmLayerNorm(h, x, n, d, w, b, eps, y)
static napi_value jsLmLayerNorm(napi_env env, napi_callback_info info) {
  return guard(env, [&]() -> napi_value {
    napi_value a[8];
    args(env, info, 8, a);
    LmInstance* in = lmInst(env, a[0]);
    Arr<float> x = f32(env, a[1], "x"), w = f32(env, a[4], "w"), b = f32(env, a[5], "b"), y = f32(env, a[7], "y");
    const int n = dim(env, a[2], "n"), d = dim(env, a[3], "d");
    atLeast(x.len, (int64_t)n * d, "x");
    atLeast(y.len, (int64_t)n * d, "y");
    atLeast(w.len, d, "w");
    atLeast(b.len, d, "b");
    in->layerNorm(x.data, n, d, w.data, b.data, (float)num(env, a[6], "eps"), y.data);
    return nullptr;
  });
}

// lmGelu(h, x, n, erf)
static napi_value jsLmGelu(napi_env env, napi_callback_info info) {
  return guard(env, [&]() -> napi_value {
    napi_value a[4];
    args(env, info, 4, a);
    LmInstance* in = lmInst(env, a[0]);
    Arr<float> x = f32(env, a[1], "x");
    const int64_t n = count(env, a[2], "n");
    atLeast(x.len, n, "x");
    in->gelu(x.data, (size_t)n, flag(env, a[3]));
    return nullptr;
  });
}

// lmAdd(h, a, b, n)
static napi_value jsLmAdd(napi_env env, napi_callback_info info) {
  return guard(env, [&]() -> napi_value {
    napi_value a[4];
    args(env, info, 4, a);
    LmInstance* in = lmInst(env, a[0]);
    Arr<float> x = f32(env, a[1], "a"), y = f32(env, a[2], "b");
    const int64_t n = count(env, a[3], "n");
    atLeast(x.len, n, "a");
    atLeast(y.len, n, "b");
    in->add(x.data, y.data, (size_t)n);
    return nullptr;
  });
}

// lmRotary(h, x, B, T, H, hd, dims, base)
static napi_value jsLmRotary(napi_env env, napi_callback_info info) {
  return guard(env, [&]() -> napi_value {
    napi_value a[8];
    args(env, info, 8, a);
    LmInstance* in = lmInst(env, a[0]);
    Arr<float> x = f32(env, a[1], "x");
    const int B = dim(env, a[2], "B"), T = dim(env, a[3], "T"), H = dim(env, a[4], "H"), hd = dim(env, a[5], "hd"),
              dims = dim(env, a[6], "dims");
    if (dims % 2 != 0 || dims > hd) failRange("rotary: dims must be even and ≤ hd");
    atLeast(x.len, (int64_t)B * T * H * hd, "x");
    in->rotary(x.data, B, T, H, hd, dims, num(env, a[7], "base"));
    return nullptr;
  });
}

// lmAttention(h, q, k, v, B, T, H, hd, out, pattern|null)
static napi_value jsLmAttention(napi_env env, napi_callback_info info) {
  return guard(env, [&]() -> napi_value {
    napi_value a[10];
    args(env, info, 10, a);
    LmInstance* in = lmInst(env, a[0]);
    Arr<float> q = f32(env, a[1], "q"), k = f32(env, a[2], "k"), v = f32(env, a[3], "v"), out = f32(env, a[8], "out"),
               pat = f32(env, a[9], "pattern", true);
    const int B = dim(env, a[4], "B"), T = dim(env, a[5], "T"), H = dim(env, a[6], "H"), hd = dim(env, a[7], "hd");
    const int64_t size = (int64_t)B * T * H * hd;
    atLeast(q.len, size, "q");
    atLeast(k.len, size, "k");
    atLeast(v.len, size, "v");
    atLeast(out.len, size, "out");
    if (pat.data) atLeast(pat.len, (int64_t)B * H * T * T, "pattern");
    in->attention(q.data, k.data, v.data, B, T, H, hd, out.data, pat.data);
    return nullptr;
  });
}

// lmCrossEntropy(h, logits, n, V, targets, loss)
static napi_value jsLmCrossEntropy(napi_env env, napi_callback_info info) {
  return guard(env, [&]() -> napi_value {
    napi_value a[6];
    args(env, info, 6, a);
    LmInstance* in = lmInst(env, a[0]);
    Arr<float> logits = f32(env, a[1], "logits"), loss = f32(env, a[5], "loss");
    Arr<int32_t> targets = i32(env, a[4], "targets");
    const int n = dim(env, a[2], "n"), V = dim(env, a[3], "V");
    if (n > 0 && V < 1) failRange("crossEntropy: V must be ≥ 1");
    atLeast(logits.len, (int64_t)n * V, "logits");
    atLeast(targets.len, n, "targets");
    atLeast(loss.len, n, "loss");
    uint32_t bad = 0;
    for (int i = 0; i < n; i++) bad |= (uint32_t)targets.data[i] >= (uint32_t)V ? 1u : 0u;
    if (bad) failRange("crossEntropy: a target lies outside [0, V)");
    in->crossEntropy(logits.data, n, V, targets.data, loss.data);
    return nullptr;
  });
}

// lmKlDivergence(h, p, q, n, V, qBroadcast, out)
static napi_value jsLmKlDivergence(napi_env env, napi_callback_info info) {
  return guard(env, [&]() -> napi_value {
    napi_value a[7];
    args(env, info, 7, a);
    LmInstance* in = lmInst(env, a[0]);
    Arr<float> p = f32(env, a[1], "p"), q = f32(env, a[2], "q"), out = f32(env, a[6], "out");
    const int n = dim(env, a[3], "n"), V = dim(env, a[4], "V");
    const bool broadcast = flag(env, a[5]);
    if (n > 0 && V < 1) failRange("klDivergence: V must be ≥ 1");
    atLeast(p.len, (int64_t)n * V, "p");
    atLeast(q.len, broadcast ? (int64_t)(n > 0 ? V : 0) : (int64_t)n * V, "q");
    atLeast(out.len, n, "out");
    in->klDivergence(p.data, q.data, n, V, broadcast, out.data);
    return nullptr;
  });
}

napi_status defineLmBindings(napi_env env, napi_value exports) {
  const napi_property_descriptor props[] = {
      {"lmCreate", nullptr, jsLmCreate, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"lmLinear", nullptr, jsLmLinear, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"lmBf16Unit", nullptr, jsLmBf16Unit, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"lmPackedWLength", nullptr, jsLmPackedWLength, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"lmPackBf16", nullptr, jsLmPackBf16, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"lmLinearBf16", nullptr, jsLmLinearBf16, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"lmLayerNorm", nullptr, jsLmLayerNorm, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"lmGelu", nullptr, jsLmGelu, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"lmAdd", nullptr, jsLmAdd, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"lmRotary", nullptr, jsLmRotary, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"lmAttention", nullptr, jsLmAttention, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"lmCrossEntropy", nullptr, jsLmCrossEntropy, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"lmKlDivergence", nullptr, jsLmKlDivergence, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
  };
  return napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
}

}  // namespace sae
