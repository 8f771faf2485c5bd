import type { SchemaTree } from 'hyparquet';
import { UserError } from '../util/errors.js';
import { f16ToF32Table, type ShardDtype } from './dtype.js';

/**
 * Which columns the fast read path takes, and how their values land in the caller's arrays: the
 * activation list (float32, or 16-bit values widened, refusing NaN and Inf as they are copied)
 * and 4-byte scalars. A column whose schema is not one of these is left to hyparquet.
 */

export interface ScalarTarget {
  name: string;
  dst: Int32Array | Float32Array;
}

export interface ColumnPlan {
  name: string;
  path: string;
  /** bytes per value */
  width: number;
  list: boolean;
  /** the column's maximum definition level; every value must be at it */
  maxDef: number;
  /** copy `rows` rows of values from src[at…] to output row `out` (file row `fileRow`) */
  copy: (src: Uint8Array, at: number, out: number, rows: number, fileRow: number) => void;
  /** the output of a scalar column as raw 32-bit words, for dictionary pages */
  words?: Uint32Array;
}

function child(tree: SchemaTree, name: string): SchemaTree | undefined {
  return tree.children.find((c) => c.element.name === name);
}

/** The activation column's plan, or null when it is not a list of `dtype` values (at most optional). */
export function activationPlan(root: SchemaTree, file: string, d: number, dtype: ShardDtype, acts: Float32Array): ColumnPlan | null {
  const act = child(root, 'activation');
  const list = act?.children.length === 1 ? act.children[0] : undefined;
  const leaf = list?.children.length === 1 ? list.children[0] : undefined;
  if (!act || !list || !leaf || leaf.children.length) return null;
  const optional = (t: SchemaTree) => (t.element.repetition_type === 'OPTIONAL' ? 1 : t.element.repetition_type === 'REQUIRED' ? 0 : -1);
  if (optional(act) < 0 || list.element.repetition_type !== 'REPEATED' || optional(leaf) < 0) return null;
  const maxDef = optional(act) + 1 + optional(leaf);
  const e = leaf.element;
  const ok = dtype === 'float32' ? e.type === 'FLOAT' : e.type === 'FIXED_LEN_BYTE_ARRAY' && e.type_length === 2;
  if (!ok) return null;
  const fileRowOf = (i: number, fileRow: number) => fileRow + Math.floor(i / d);
  const bad = (v: number, row: number): never => {
    throw new UserError(`${file} row ${row}: activation contains ${Number.isNaN(v) ? 'NaN' : 'Inf'}`);
  };
  let copy: ColumnPlan['copy'];
  if (dtype === 'float32') {
    copy = (src, at, out, rows, fileRow) => {
      const n = rows * d;
      new Uint8Array(acts.buffer, acts.byteOffset + out * d * 4, n * 4).set(src.subarray(at, at + n * 4));
      const o = out * d;
      for (let i = 0; i < n; i++) {
        const v = acts[o + i];
        if (v - v !== 0) bad(v, fileRowOf(i, fileRow));
      }
    };
  } else if (dtype === 'float16') {
    const t = f16ToF32Table();
    copy = (src, at, out, rows, fileRow) => {
      const n = rows * d;
      const o = out * d;
      for (let i = 0; i < n; i++) {
        const h = src[at + 2 * i] | (src[at + 2 * i + 1] << 8);
        // exponent all ones: Inf or NaN
        if ((h & 0x7c00) === 0x7c00) bad(t[h], fileRowOf(i, fileRow));
        acts[o + i] = t[h];
      }
    };
  } else {
    const w = new Uint32Array(acts.buffer, acts.byteOffset, acts.length);
    copy = (src, at, out, rows, fileRow) => {
      const n = rows * d;
      const o = out * d;
      for (let i = 0; i < n; i++) {
        const lo = src[at + 2 * i];
        const hi = src[at + 2 * i + 1];
        if ((hi & 0x7f) === 0x7f && lo & 0x80) bad(lo & 0x7f ? NaN : Infinity, fileRowOf(i, fileRow));
        w[o + i] = (lo << 16) | (hi << 24);
      }
    };
  }
  return { name: 'activation', path: 'activation.list.element', width: dtype === 'float32' ? 4 : 2, list: true, maxDef, copy };
}

/** A scalar column's plan, or null when it is not a flat column of the target's 4-byte type. */
export function scalarPlan(root: SchemaTree, s: ScalarTarget): ColumnPlan | null {
  const c = child(root, s.name);
  const want = s.dst instanceof Int32Array ? 'INT32' : 'FLOAT';
  const rt = c?.element.repetition_type;
  if (!c || c.children.length || (rt !== 'REQUIRED' && rt !== 'OPTIONAL') || c.element.type !== want) return null;
  const dst = s.dst;
  return {
    name: s.name,
    path: s.name,
    width: 4,
    list: false,
    maxDef: rt === 'OPTIONAL' ? 1 : 0,
    words: new Uint32Array(dst.buffer, dst.byteOffset, dst.length),
    copy: (src, at, out, rows) => new Uint8Array(dst.buffer, dst.byteOffset + out * 4, rows * 4).set(src.subarray(at, at + rows * 4)),
  };
}
