/** Every numeric buffer in the toolkit is one of these; float64 exists for gradient checks. */
export type FloatArray = Float32Array | Float64Array;

export type FloatCtor = Float32ArrayConstructor | Float64ArrayConstructor;

export function ctorOf(a: FloatArray): FloatCtor {
  return a instanceof Float64Array ? Float64Array : Float32Array;
}
