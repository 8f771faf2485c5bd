// Node-API helpers shared by the bindings: argument checks that turn bad JavaScript values into
// TypeError / RangeError messages naming the argument, and `guard`, which maps C++ exceptions to
// JavaScript ones.
#pragma once

#include <node_api.h>

#include <cmath>
#include <new>
#include <stdexcept>
#include <string>

#include "common.h"

namespace sae {

#define CHECK_NAPI(call)                                  \
  do {                                                    \
    if ((call) != napi_ok) fail("internal N-API failure"); \
  } while (0)

template <class T>
struct Arr {
  T* data = nullptr;
  size_t len = 0;
};

inline bool nullish(napi_env env, napi_value v) {
  napi_valuetype t;
  CHECK_NAPI(napi_typeof(env, v, &t));
  return t == napi_null || t == napi_undefined;
}

template <class T>
inline Arr<T> typed(napi_env env, napi_value v, napi_typedarray_type want, const char* what, const char* name,
                    bool optional = false) {
  Arr<T> a;
  if (optional && nullish(env, v)) return a;
  bool is = false;
  CHECK_NAPI(napi_is_typedarray(env, v, &is));
  if (!is) fail(std::string(name) + " must be a " + what);
  napi_typedarray_type type;
  size_t len;
  void* data;
  napi_value ab;
  size_t off;
  CHECK_NAPI(napi_get_typedarray_info(env, v, &type, &len, &data, &ab, &off));
  if (type != want) fail(std::string(name) + " must be a " + what);
  a.data = static_cast<T*>(data);
  a.len = len;
  return a;
}
inline Arr<float> f32(napi_env env, napi_value v, const char* name, bool optional = false) {
  return typed<float>(env, v, napi_float32_array, "Float32Array", name, optional);
}
inline Arr<int32_t> i32(napi_env env, napi_value v, const char* name, bool optional = false) {
  return typed<int32_t>(env, v, napi_int32_array, "Int32Array", name, optional);
}
inline Arr<uint16_t> u16(napi_env env, napi_value v, const char* name) {
  return typed<uint16_t>(env, v, napi_uint16_array, "Uint16Array", name, false);
}
inline Arr<uint8_t> u8(napi_env env, napi_value v, const char* name) {
  return typed<uint8_t>(env, v, napi_uint8_array, "Uint8Array", name);
}
inline double num(napi_env env, napi_value v, const char* name) {
  double x;
  if (napi_get_value_double(env, v, &x) != napi_ok) fail(std::string(name) + " must be a number");
  return x;
}
inline int64_t count(napi_env env, napi_value v, const char* name, int64_t max = INT64_MAX) {
  const double x = num(env, v, name);
  if (!(x >= 0) || x != std::floor(x) || x > (double)max)
    failRange(std::string(name) + " must be a non-negative integer" + (max < INT64_MAX ? " ≤ " + std::to_string(max) : ""));
  return (int64_t)x;
}
inline int batchArg(napi_env env, napi_value v, const char* name, int maxB) {
  const int64_t B = count(env, v, name, INT32_MAX);
  if (B > maxB) failRange("batch of " + std::to_string(B) + " exceeds kernel capacity " + std::to_string(maxB));
  return (int)B;
}
inline void atLeast(size_t len, int64_t n, const char* name) {
  if ((int64_t)len < n) failRange(std::string(name) + " holds " + std::to_string(len) + " values, need " + std::to_string(n));
}
inline napi_value mkNum(napi_env env, double x) {
  napi_value r;
  CHECK_NAPI(napi_create_double(env, x, &r));
  return r;
}
inline napi_value mkStr(napi_env env, const char* s) {
  napi_value r;
  CHECK_NAPI(napi_create_string_utf8(env, s, NAPI_AUTO_LENGTH, &r));
  return r;
}
inline void args(napi_env env, napi_callback_info info, size_t want, napi_value* argv) {
  size_t argc = want;
  CHECK_NAPI(napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr));
  if (argc < want) fail("expected " + std::to_string(want) + " arguments");
}
inline uint32_t arrayLength(napi_env env, napi_value v, const char* name) {
  bool is = false;
  CHECK_NAPI(napi_is_array(env, v, &is));
  if (!is) fail(std::string(name) + " must be an array");
  uint32_t n;
  CHECK_NAPI(napi_get_array_length(env, v, &n));
  return n;
}
inline napi_value elem(napi_env env, napi_value arr, uint32_t i) {
  napi_value r;
  CHECK_NAPI(napi_get_element(env, arr, i, &r));
  return r;
}

template <class Fn>
inline napi_value guard(napi_env env, Fn&& fn) {
  try {
    return fn();
  } catch (const UserErr& e) {
    if (e.range) napi_throw_range_error(env, nullptr, e.msg.c_str());
    else napi_throw_type_error(env, nullptr, e.msg.c_str());
  } catch (const std::bad_alloc&) {
    napi_throw_error(env, nullptr, "out of memory in the native kernels");
  } catch (const std::exception& e) {
    napi_throw_error(env, nullptr, e.what());
  }
  return nullptr;
}


}  // namespace sae
