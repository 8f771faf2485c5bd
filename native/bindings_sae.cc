// Node-API bindings of the SAE kernels (src/kernels/native.ts): argument validation, then one
// call into the Instance. The module also exports the LM ops (bindings_lm.cc).
#include <cmath>

#include "instance.h"
#include "napi.h"
#include "napi_isa.h"

namespace sae {

// Bumped whenever the JS-facing signatures change, so that a stale build is detected
// (API_VERSION in src/kernels/native.ts).
constexpr int kApiVersion = 4;

napi_status defineLmBindings(napi_env env, napi_value exports);  // bindings_lm.cc

static Instance* inst(napi_env env, napi_value v) {
  napi_valuetype t;
  CHECK_NAPI(napi_typeof(env, v, &t));
  if (t != napi_external) fail("not a native kernel instance");
  void* p;
  CHECK_NAPI(napi_get_value_external(env, v, &p));
  return static_cast<Instance*>(p);
}

// Codes passed from JS: validate rowPtr/index so that no kernel can read out of bounds.
struct CodesArg {
  Arr<int32_t> rowPtr, index;
  Arr<float> value;
  int B;
};
static CodesArg codesArg(napi_env env, napi_value* a, int F, int maxB, bool needValue) {
  CodesArg c;
  c.rowPtr = i32(env, a[0], "codes.rowPtr");
  c.index = i32(env, a[1], "codes.index");
  if (needValue) c.value = f32(env, a[2], "codes.value");
  const int64_t B = batchArg(env, a[3], "codes.B", maxB);
  c.B = (int)B;
  atLeast(c.rowPtr.len, B + 1, "codes.rowPtr");
  const int32_t* rp = c.rowPtr.data;
  if (rp[0] < 0) failRange("codes.rowPtr[0] is negative");
  uint32_t bad = 0;  // branch-free scans (these run on every call, over every entry)
  for (int64_t b = 0; b < B; b++) bad |= rp[b] > rp[b + 1] ? 1u : 0u;
  if (bad) failRange("codes.rowPtr is not non-decreasing");
  const int64_t end = rp[B];
  atLeast(c.index.len, end, "codes.index");
  if (needValue) atLeast(c.value.len, end, "codes.value");
  const uint32_t* ix = reinterpret_cast<const uint32_t*>(c.index.data);
  for (int64_t e = rp[0]; e < end; e++) bad |= ix[e] >= (uint32_t)F ? 1u : 0u;
  if (bad) failRange("codes.index holds a feature outside [0, F)");
  return c;
}

static void finalizeInstance(napi_env, void* data, void*) { delete static_cast<Instance*>(data); }

// create(d, F, maxB, isa, bf16Unit|null) → handle
static napi_value jsCreate(napi_env env, napi_callback_info info) {
  return guard(env, [&]() -> napi_value {
    napi_value a[5];
    args(env, info, 5, a);
    const int64_t d = count(env, a[0], "d", INT32_MAX), F = count(env, a[1], "F", INT32_MAX),
                  maxB = count(env, a[2], "maxB", INT32_MAX);
    if (d < 1 || F < 1 || maxB < 1) failRange("d, F and maxB must be ≥ 1");
    const IsaOps* ops = isaArg(env, a[3]);
    bool bf16 = false;
    const Bf16Ops* unit = bf16Arg(env, a[4], ops, bf16);
    Instance* in = new Instance((int)d, (int)F, (int)maxB, ops, bf16, unit);
    napi_value ext;
    if (napi_create_external(env, in, finalizeInstance, nullptr, &ext) != napi_ok) {
      delete in;
      fail("could not create the kernel instance");
    }
    return ext;
  });
}

// bf16Unit(h) → "amx" | "avx512bf16" | "emulated" under bf16, null under fp32
static napi_value jsBf16Unit(napi_env env, napi_callback_info info) {
  return guard(env, [&]() -> napi_value {
    napi_value a[1];
    args(env, info, 1, a);
    const char* u = inst(env, a[0])->bf16Unit();
    return u ? mkStr(env, u) : nullptr;
  });
}

// info() → { apiVersion, threads, isa, isas, bf16Units, bf16Unit, amxWhyNot }
static napi_value jsInfo(napi_env env, napi_callback_info) {
  return guard(env, [&]() -> napi_value {
    napi_value o, list;
    CHECK_NAPI(napi_create_object(env, &o));
    CHECK_NAPI(napi_set_named_property(env, o, "apiVersion", mkNum(env, kApiVersion)));
    CHECK_NAPI(napi_set_named_property(env, o, "threads", mkNum(env, pool().size())));
    CHECK_NAPI(napi_set_named_property(env, o, "isa", mkStr(env, bestIsa()->name)));
    CHECK_NAPI(napi_create_array(env, &list));
    const char* names[kMaxIsas];
    const int n = availableIsas(names);
    for (int i = 0; i < n; i++) CHECK_NAPI(napi_set_element(env, list, (uint32_t)i, mkStr(env, names[i])));
    CHECK_NAPI(napi_set_named_property(env, o, "isas", list));
    // bf16 with the best tables: the units this process can run, best first, and why AMX is not one
    napi_value units;
    CHECK_NAPI(napi_create_array(env, &units));
    const char* un[4];
    const int nu = availableBf16Units(bestIsa(), un);
    for (int i = 0; i < nu; i++) CHECK_NAPI(napi_set_element(env, units, (uint32_t)i, mkStr(env, un[i])));
    CHECK_NAPI(napi_set_named_property(env, o, "bf16Units", units));
    const Bf16Ops* best = bestBf16Unit(bestIsa());
    CHECK_NAPI(napi_set_named_property(env, o, "bf16Unit", mkStr(env, best ? best->name : "emulated")));
    std::string why;
    bf16UnitByName(bestIsa(), "amx", &why);
    CHECK_NAPI(napi_set_named_property(env, o, "amxWhyNot", mkStr(env, why.c_str())));
    return o;
  });
}

// Shared tail of encode / selectDense: selection spec, aux, outputs, the call, the result array.
// a[0..4] = kind, num, arr, auxMasks, auxKs; a[5] = outs (flat [rowPtr, index, value] triples).
static napi_value runSelect(napi_env env, Instance* in, napi_value* a, const float* W, const float* bEnc,
                            const float* bDec, const float* x, const float* z, int B, float* xc) {
  const int F = in->F();
  SelSpec sel;
  sel.kind = (int)count(env, a[0], "kind", kSelGlobal);
  switch (sel.kind) {
    case kSelTopK:
      sel.num = count(env, a[1], "k", INT32_MAX);
      break;
    case kSelMutual:
      sel.num = count(env, a[1], "M");
      break;
    case kSelFeature: {
      Arr<int32_t> cap = i32(env, a[2], "capacity");
      atLeast(cap.len, F, "capacity");
      if (cap.len != (size_t)F) failRange("capacity must have F entries");
      sel.cap = cap.data;
      break;
    }
    case kSelJumpRelu: {
      Arr<float> t = f32(env, a[2], "threshold");
      if (t.len != (size_t)F) failRange("threshold must have F entries");
      sel.thr = t.data;
      break;
    }
    case kSelGlobal:
      sel.gthr = num(env, a[1], "threshold");
      break;
    case kSelDense: {
      if (!W) fail("dense output needs the encoder");
      Arr<float> o = f32(env, a[2], "affinities");
      atLeast(o.len, (int64_t)B * F, "affinities");
      sel.dense = o.data;
      break;
    }
    default:
      break;
  }
  const uint32_t nAux = arrayLength(env, a[3], "auxMasks");
  if (arrayLength(env, a[4], "auxKs") != nAux) fail("auxMasks and auxKs differ in length");
  if (nAux > (uint32_t)kMaxAux) failRange("too many aux selections");
  AuxSpec aux[kMaxAux];
  for (uint32_t i = 0; i < nAux; i++) {
    Arr<uint8_t> m = u8(env, elem(env, a[3], i), "aux mask");
    if (m.len != (size_t)F) failRange("aux mask must have F entries");
    aux[i].mask = m.data;
    aux[i].k = count(env, elem(env, a[4], i), "aux k", INT32_MAX);
  }
  const int nOut = (sel.kind >= kSelTopK ? 1 : 0) + (int)nAux;
  if (arrayLength(env, a[5], "outs") != (uint32_t)(3 * nOut)) fail("outs must hold one [rowPtr, index, value] per output");
  Out outs[1 + kMaxAux];
  for (int o = 0; o < nOut; o++) {
    Arr<int32_t> rp = i32(env, elem(env, a[5], 3 * o), "rowPtr");
    Arr<int32_t> ix = i32(env, elem(env, a[5], 3 * o + 1), "index");
    Arr<float> vl = f32(env, elem(env, a[5], 3 * o + 2), "value");
    atLeast(rp.len, (int64_t)B + 1, "rowPtr");
    outs[o] = Out{rp.data, ix.data, vl.data, std::min(ix.len, vl.len)};
  }
  int64_t nnz[1 + kMaxAux] = {};
  bool written[1 + kMaxAux] = {};
  in->encode(W, bEnc, bDec, x, z, B, xc, sel, aux, (int)nAux, outs, nnz, written);
  napi_value res;
  CHECK_NAPI(napi_create_array_with_length(env, 2 * nOut, &res));
  for (int o = 0; o < nOut; o++) {
    CHECK_NAPI(napi_set_element(env, res, 2 * o, mkNum(env, (double)nnz[o])));
    CHECK_NAPI(napi_set_element(env, res, 2 * o + 1, mkNum(env, written[o] ? 1 : 0)));
  }
  return res;
}

// encode(h, WencT, bEnc, bDec, x, B, xc, kind, num, arr, auxMasks, auxKs, outs) → [nnz, written]*
static napi_value jsEncode(napi_env env, napi_callback_info info) {
  return guard(env, [&]() -> napi_value {
    napi_value a[13];
    args(env, info, 13, a);
    Instance* in = inst(env, a[0]);
    const int d = in->d(), F = in->F();
    Arr<float> W = f32(env, a[1], "WencT"), bEnc = f32(env, a[2], "bEnc"), bDec = f32(env, a[3], "bDec"),
               x = f32(env, a[4], "x"), xc = f32(env, a[6], "xc");
    const int64_t B = batchArg(env, a[5], "B", in->maxB());
    atLeast(W.len, (int64_t)F * d, "WencT");
    atLeast(bEnc.len, F, "bEnc");
    atLeast(bDec.len, d, "bDec");
    atLeast(x.len, B * d, "x");
    atLeast(xc.len, B * d, "xc");
    return runSelect(env, in, a + 7, W.data, bEnc.data, bDec.data, x.data, nullptr, (int)B, xc.data);
  });
}

// selectDense(h, z, B, kind, num, arr, auxMasks, auxKs, outs): the selection stage alone on given z'.
static napi_value jsSelectDense(napi_env env, napi_callback_info info) {
  return guard(env, [&]() -> napi_value {
    napi_value a[9];
    args(env, info, 9, a);
    Instance* in = inst(env, a[0]);
    Arr<float> z = f32(env, a[1], "affinities");
    const int64_t B = batchArg(env, a[2], "B", in->maxB());
    atLeast(z.len, B * in->F(), "affinities");
    if (count(env, a[3], "kind") == kSelDense) fail("selectDense cannot produce dense output");
    return runSelect(env, in, a + 3, nullptr, nullptr, nullptr, nullptr, z.data, (int)B, nullptr);
  });
}

// emit(h, which, rowPtr, index, value) → nnz
static napi_value jsEmit(napi_env env, napi_callback_info info) {
  return guard(env, [&]() -> napi_value {
    napi_value a[5];
    args(env, info, 5, a);
    Instance* in = inst(env, a[0]);
    const int which = (int)count(env, a[1], "which", kMaxAux);
    Arr<int32_t> rp = i32(env, a[2], "rowPtr"), ix = i32(env, a[3], "index");
    Arr<float> vl = f32(env, a[4], "value");
    Out o{rp.data, ix.data, vl.data, std::min(ix.len, vl.len)};
    (void)rp.len;
    return mkNum(env, (double)in->emitChecked(which, o, rp.len));
  });
}

// decode(h, Wdec, bDec|null, rowPtr, index, value, B, out)
static napi_value jsDecode(napi_env env, napi_callback_info info) {
  return guard(env, [&]() -> napi_value {
    napi_value a[8];
    args(env, info, 8, a);
    Instance* in = inst(env, a[0]);
    const int d = in->d(), F = in->F();
    Arr<float> W = f32(env, a[1], "Wdec"), bias = f32(env, a[2], "bDec", true), out = f32(env, a[7], "out");
    CodesArg c = codesArg(env, a + 3, F, in->maxB(), true);
    atLeast(W.len, (int64_t)F * d, "Wdec");
    if (bias.data) atLeast(bias.len, d, "bDec");
    atLeast(out.len, (int64_t)c.B * d, "out");
    in->decode(W.data, bias.data, c.rowPtr.data, c.index.data, c.value.data, c.B, out.data);
    return nullptr;
  });
}

// decodeBackward(h, Wdec, rowPtr, index, value, B, dOut, gWdec, dz)
static napi_value jsDecodeBackward(napi_env env, napi_callback_info info) {
  return guard(env, [&]() -> napi_value {
    napi_value a[9];
    args(env, info, 9, a);
    Instance* in = inst(env, a[0]);
    const int d = in->d(), F = in->F();
    Arr<float> W = f32(env, a[1], "Wdec"), dOut = f32(env, a[6], "dOut"), gW = f32(env, a[7], "gWdec"),
               dz = f32(env, a[8], "dz");
    CodesArg c = codesArg(env, a + 2, F, in->maxB(), true);
    atLeast(W.len, (int64_t)F * d, "Wdec");
    atLeast(gW.len, (int64_t)F * d, "gWdec");
    atLeast(dOut.len, (int64_t)c.B * d, "dOut");
    atLeast(dz.len, c.rowPtr.data[c.B], "dz");
    in->decodeBackward(W.data, c.rowPtr.data, c.index.data, c.value.data, c.B, dOut.data, gW.data, dz.data);
    return nullptr;
  });
}

// encoderBackward(h, WencT, xc, rowPtr, index, B, dz, gWencT, gBenc, gBdec)
static napi_value jsEncoderBackward(napi_env env, napi_callback_info info) {
  return guard(env, [&]() -> napi_value {
    napi_value a[10];
    args(env, info, 10, a);
    Instance* in = inst(env, a[0]);
    const int d = in->d(), F = in->F();
    Arr<float> W = f32(env, a[1], "WencT"), xc = f32(env, a[2], "xc"), dz = f32(env, a[6], "dz"),
               gW = f32(env, a[7], "gWencT"), gBenc = f32(env, a[8], "gBenc"), gBdec = f32(env, a[9], "gBdec");
    napi_value ca[4] = {a[3], a[4], a[4], a[5]};
    CodesArg c = codesArg(env, ca, F, in->maxB(), false);
    atLeast(W.len, (int64_t)F * d, "WencT");
    atLeast(gW.len, (int64_t)F * d, "gWencT");
    atLeast(gBenc.len, F, "gBenc");
    atLeast(gBdec.len, d, "gBdec");
    atLeast(xc.len, (int64_t)c.B * d, "xc");
    atLeast(dz.len, c.rowPtr.data[c.B], "dz");
    in->encoderBackward(W.data, xc.data, c.rowPtr.data, c.index.data, c.B, dz.data, gW.data, gBenc.data, gBdec.data);
    return nullptr;
  });
}

// sumSquares(h, a) → number
static napi_value jsSumSquares(napi_env env, napi_callback_info info) {
  return guard(env, [&]() -> napi_value {
    napi_value a[2];
    args(env, info, 2, a);
    Instance* in = inst(env, a[0]);
    Arr<float> x = f32(env, a[1], "a");
    return mkNum(env, in->sumSquares(x.data, x.len));
  });
}

// adamw(h, param, grad, m, v, lr, beta1, beta2, eps, weightDecay, step, gradScale, decay)
static napi_value jsAdamW(napi_env env, napi_callback_info info) {
  return guard(env, [&]() -> napi_value {
    napi_value a[13];
    args(env, info, 13, a);
    Instance* in = inst(env, a[0]);
    Arr<float> p = f32(env, a[1], "param"), g = f32(env, a[2], "grad"), m = f32(env, a[3], "m"), v = f32(env, a[4], "v");
    atLeast(g.len, (int64_t)p.len, "grad");
    atLeast(m.len, (int64_t)p.len, "m");
    atLeast(v.len, (int64_t)p.len, "v");
    const double lr = num(env, a[5], "lr"), b1 = num(env, a[6], "beta1"), b2 = num(env, a[7], "beta2"),
                 eps = num(env, a[8], "eps"), wd = num(env, a[9], "weightDecay"), step = num(env, a[10], "step"),
                 gs = num(env, a[11], "gradScale");
    bool decay = false;
    CHECK_NAPI(napi_get_value_bool(env, a[12], &decay));
    const double c1 = 1 - std::pow(b1, step), c2 = 1 - std::pow(b2, step);
    const float coef[10] = {(float)gs,       (float)b1, (float)(1 - b1), (float)b2,
                            (float)(1 - b2), (float)(1 / c1), (float)(1 / c2), (float)lr,
                            (float)eps,      (float)(decay ? 1 - lr * wd : 1)};
    in->adamw(p.data, g.data, m.data, v.data, p.len, coef);
    return nullptr;
  });
}

// projectDecoderGrad(h, Wdec, gWdec, F, d) and normalizeDecoderRows(h, Wdec, F, d)
static napi_value jsProject(napi_env env, napi_callback_info info) {
  return guard(env, [&]() -> napi_value {
    napi_value a[5];
    args(env, info, 5, a);
    Instance* in = inst(env, a[0]);
    Arr<float> W = f32(env, a[1], "Wdec"), g = f32(env, a[2], "gWdec");
    const int64_t F = count(env, a[3], "F", INT32_MAX), d = count(env, a[4], "d", INT32_MAX);
    atLeast(W.len, F * d, "Wdec");
    atLeast(g.len, F * d, "gWdec");
    in->projectRows(W.data, g.data, (int)F, (int)d);
    return nullptr;
  });
}
static napi_value jsNormalize(napi_env env, napi_callback_info info) {
  return guard(env, [&]() -> napi_value {
    napi_value a[4];
    args(env, info, 4, a);
    Instance* in = inst(env, a[0]);
    Arr<float> W = f32(env, a[1], "Wdec");
    const int64_t F = count(env, a[2], "F", INT32_MAX), d = count(env, a[3], "d", INT32_MAX);
    atLeast(W.len, F * d, "Wdec");
    in->normalizeRows(W.data, (int)F, (int)d);
    return nullptr;
  });
}

// optimizerStep(h, params, grads, m, v, F, d, lr, beta1, beta2, eps, weightDecay, step, maxGradNorm) → norm;
// params, grads, m and v each [WencT, bEnc, Wdec, bDec].
static napi_value jsOptimizerStep(napi_env env, napi_callback_info info) {
  return guard(env, [&]() -> napi_value {
    napi_value a[14];
    args(env, info, 14, a);
    Instance* in = inst(env, a[0]);
    const int64_t F = count(env, a[5], "F", INT32_MAX), d = count(env, a[6], "d", INT32_MAX);
    const int64_t sizes[4] = {F * d, F, F * d, d};
    static const char* const names[4] = {"WencT", "bEnc", "Wdec", "bDec"};
    Instance::OptTensor t[4];
    for (int s = 1; s <= 4; s++)
      if (arrayLength(env, a[s], "optimizer tensors") != 4) fail("params, grads, m and v must hold four tensors each");
    for (int i = 0; i < 4; i++) {
      Arr<float> p = f32(env, elem(env, a[1], i), names[i]), g = f32(env, elem(env, a[2], i), "grad"),
                 m = f32(env, elem(env, a[3], i), "m"), v = f32(env, elem(env, a[4], i), "v");
      atLeast(p.len, sizes[i], names[i]);
      atLeast(g.len, sizes[i], "grad");
      atLeast(m.len, sizes[i], "m");
      atLeast(v.len, sizes[i], "v");
      t[i] = Instance::OptTensor{p.data, g.data, m.data, v.data, (size_t)sizes[i]};
    }
    const double lr = num(env, a[7], "lr"), b1 = num(env, a[8], "beta1"), b2 = num(env, a[9], "beta2"),
                 eps = num(env, a[10], "eps"), wd = num(env, a[11], "weightDecay"), step = num(env, a[12], "step"),
                 mg = num(env, a[13], "maxGradNorm");
    return mkNum(env, in->optimizerStep(t, (int)F, (int)d, lr, b1, b2, eps, wd, step, mg));
  });
}

}  // namespace sae

NAPI_MODULE_INIT() {
  using namespace sae;
  const napi_property_descriptor props[] = {
      {"info", nullptr, jsInfo, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"bf16Unit", nullptr, jsBf16Unit, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"create", nullptr, jsCreate, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"encode", nullptr, jsEncode, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"selectDense", nullptr, jsSelectDense, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"emit", nullptr, jsEmit, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"decode", nullptr, jsDecode, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"decodeBackward", nullptr, jsDecodeBackward, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"encoderBackward", nullptr, jsEncoderBackward, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"sumSquares", nullptr, jsSumSquares, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"adamw", nullptr, jsAdamW, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"projectDecoderGrad", nullptr, jsProject, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"normalizeDecoderRows", nullptr, jsNormalize, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"optimizerStep", nullptr, jsOptimizerStep, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
  };
  if (napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props) != napi_ok) return nullptr;
  if (defineLmBindings(env, exports) != napi_ok) return nullptr;
  return exports;
}
