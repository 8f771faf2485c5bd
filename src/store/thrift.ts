/**
 * The subset of Thrift's compact protocol that Parquet page headers and footers use: structs of
 * integers, strings, booleans, lists and nested structs. The shard codec writes footers and page
 * headers with it and reads page headers back (footers are read with hyparquet's parser).
 */

export enum CType {
  Stop = 0,
  True = 1,
  False = 2,
  Byte = 3,
  I16 = 4,
  I32 = 5,
  I64 = 6,
  Double = 7,
  Binary = 8,
  List = 9,
  Struct = 12,
}

const utf8 = new TextEncoder();

/** A growable byte buffer with compact-protocol writers; field ids are tracked per struct level. */
export class CompactWriter {
  private buf = new Uint8Array(256);
  private pos = 0;
  private lastId = 0;
  private readonly idStack: number[] = [];

  reset(): void {
    this.pos = 0;
    this.lastId = 0;
    this.idStack.length = 0;
  }

  get length(): number {
    return this.pos;
  }

  /** The bytes written so far (a copy, so the writer may be reused). */
  bytes(): Uint8Array {
    return this.buf.slice(0, this.pos);
  }

  private room(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.pos));
    this.buf = next;
  }

  byte(b: number): void {
    this.room(1);
    this.buf[this.pos++] = b;
  }

  raw(bytes: Uint8Array): void {
    this.room(bytes.length);
    this.buf.set(bytes, this.pos);
    this.pos += bytes.length;
  }

  /** Unsigned LEB128 of a non-negative safe integer (arithmetic, not bit ops, past 2³¹). */
  varint(v: number): void {
    this.room(10);
    while (v >= 0x80) {
      this.buf[this.pos++] = (v % 0x80) | 0x80;
      v = Math.floor(v / 0x80);
    }
    this.buf[this.pos++] = v;
  }

  /** Zigzag of a safe integer: 2v for v ≥ 0, −2v − 1 otherwise. */
  zigzag(v: number): void {
    if (!Number.isSafeInteger(v)) throw new RangeError(`thrift: ${v} is not a safe integer`);
    this.varint(v >= 0 ? 2 * v : -2 * v - 1);
  }

  private fieldHeader(id: number, type: CType): void {
    const delta = id - this.lastId;
    if (delta > 0 && delta <= 15) this.byte((delta << 4) | type);
    else {
      this.byte(type);
      this.zigzag(id);
    }
    this.lastId = id;
  }

  i32(id: number, v: number): void {
    this.fieldHeader(id, CType.I32);
    this.zigzag(v);
  }

  i64(id: number, v: number): void {
    this.fieldHeader(id, CType.I64);
    this.zigzag(v);
  }

  bool(id: number, v: boolean): void {
    this.fieldHeader(id, v ? CType.True : CType.False);
  }

  string(id: number, s: string): void {
    this.fieldHeader(id, CType.Binary);
    this.stringValue(s);
  }

  stringValue(s: string): void {
    const b = utf8.encode(s);
    this.varint(b.length);
    this.raw(b);
  }

  /** Begin a struct-valued field; close it with end(). */
  struct(id: number): void {
    this.fieldHeader(id, CType.Struct);
    this.begin();
  }

  /** Begin a struct that is a list element or the top-level value. */
  begin(): void {
    this.idStack.push(this.lastId);
    this.lastId = 0;
  }

  end(): void {
    this.byte(CType.Stop);
    const prev = this.idStack.pop();
    if (prev === undefined) throw new Error('thrift: end() without begin()');
    this.lastId = prev;
  }

  /** A list-valued field header; the caller then writes n elements of `elem` type. */
  list(id: number, elem: CType, n: number): void {
    this.fieldHeader(id, CType.List);
    if (n < 15) this.byte((n << 4) | elem);
    else {
      this.byte(0xf0 | elem);
      this.varint(n);
    }
  }
}

export class ThriftError extends Error {}

/** A decoded struct: field id → value (number, boolean, Uint8Array, list or nested struct). */
export type TStruct = Map<number, TValue>;
export type TValue = number | boolean | Uint8Array | TValue[] | TStruct;

/**
 * Decode one compact-protocol struct from buf[pos, end). Returns the struct and the offset after
 * it; any overrun or malformed field is a ThriftError. Integers wider than 2⁵³ are refused, since
 * nothing in a page header may be that large.
 */
export function readStruct(buf: Uint8Array, pos: number, end: number): { value: TStruct; next: number } {
  const r = new Reader(buf, pos, end);
  const value = r.struct(0);
  return { value, next: r.pos };
}

class Reader {
  constructor(
    private readonly buf: Uint8Array,
    public pos: number,
    private readonly end: number,
  ) {}

  private u8(): number {
    if (this.pos >= this.end) throw new ThriftError('thrift data ends early');
    return this.buf[this.pos++];
  }

  private varint(): number {
    let v = 0;
    let mul = 1;
    for (;;) {
      const b = this.u8();
      v += (b & 0x7f) * mul;
      if (!(b & 0x80)) break;
      mul *= 128;
      if (mul > 2 ** 56) throw new ThriftError('thrift varint too long');
    }
    if (!Number.isSafeInteger(v)) throw new ThriftError('thrift integer out of range');
    return v;
  }

  private zigzag(): number {
    const v = this.varint();
    return v % 2 === 0 ? v / 2 : -(v + 1) / 2;
  }

  struct(depth: number): TStruct {
    // Page headers nest two deep (statistics three); anything deeper is garbage, not a header.
    if (depth > 8) throw new ThriftError('thrift structs nest too deep');
    const out: TStruct = new Map();
    let id = 0;
    for (;;) {
      const h = this.u8();
      const type = h & 0x0f;
      if (type === CType.Stop) return out;
      id = h >> 4 ? id + (h >> 4) : this.zigzag();
      out.set(id, this.element(type, depth));
    }
  }

  private element(type: number, depth: number): TValue {
    switch (type) {
      case CType.True:
        return true;
      case CType.False:
        return false;
      case CType.Byte:
        return (this.u8() << 24) >> 24;
      case CType.I16:
      case CType.I32:
      case CType.I64:
        return this.zigzag();
      case CType.Double: {
        if (this.pos + 8 > this.end) throw new ThriftError('thrift data ends early');
        const v = new DataView(this.buf.buffer, this.buf.byteOffset + this.pos, 8).getFloat64(0, true);
        this.pos += 8;
        return v;
      }
      case CType.Binary: {
        const n = this.varint();
        if (this.pos + n > this.end) throw new ThriftError(`thrift binary of ${n} bytes overruns its buffer`);
        const b = this.buf.subarray(this.pos, this.pos + n);
        this.pos += n;
        return b;
      }
      case CType.List: {
        const h = this.u8();
        const elem = h & 0x0f;
        const n = h >> 4 === 15 ? this.varint() : h >> 4;
        // Every element takes at least one byte, so a longer list cannot be real.
        if (n > this.end - this.pos) throw new ThriftError(`thrift list of ${n} elements overruns its buffer`);
        const out: TValue[] = new Array(n);
        for (let i = 0; i < n; i++) out[i] = elem === CType.True || elem === CType.False ? this.u8() === 1 : this.element(elem, depth);
        return out;
      }
      case CType.Struct:
        return this.struct(depth + 1);
      default:
        throw new ThriftError(`thrift field of unknown type ${type}`);
    }
  }
}
