import { UserError } from '../util/errors.js';

/**
 * A pickle reader that never executes anything. Python's pickle is a small stack machine whose
 * GLOBAL + REDUCE opcodes call arbitrary functions, which is how a hostile checkpoint runs code.
 * Here only data opcodes are interpreted, GLOBAL resolves against a caller-supplied whitelist of
 * plain TypeScript functions, and every other opcode is refused by name before anything is
 * returned. Values are plain TS data: numbers/bigints, strings, booleans, null, arrays (lists and
 * tuples alike), PyDict, and whatever the whitelisted functions build.
 */

export class PyDict {
  readonly items = new Map<PyKey, unknown>();
  /** instance state applied by BUILD (OrderedDict's `_metadata` in a state_dict); never interpreted */
  state: unknown = undefined;
}

export type PyKey = string | number | bigint | boolean | null;

/** A whitelisted global: `call` builds a value from REDUCE's arguments; absent means "not callable". */
export interface PyGlobal {
  readonly name: string;
  readonly call?: (args: unknown[]) => unknown;
}

export interface UnpickleOptions {
  /** names in the error messages (the file and the member) */
  label: string;
  /** `module.name` → the stand-in for it; anything missing is refused */
  globals: ReadonlyMap<string, PyGlobal>;
  /** BINPERSID: the stand-in for a persistent id, or a thrown UserError */
  persistentLoad?: (pid: unknown) => unknown;
}

// The names exist so refusals can say which opcode a file tried to use.
const OPCODE_NAMES: Record<number, string> = {
  0x28: 'MARK', 0x2e: 'STOP', 0x30: 'POP', 0x31: 'POP_MARK', 0x32: 'DUP', 0x46: 'FLOAT', 0x49: 'INT',
  0x4a: 'BININT', 0x4b: 'BININT1', 0x4c: 'LONG', 0x4d: 'BININT2', 0x4e: 'NONE', 0x50: 'PERSID',
  0x51: 'BINPERSID', 0x52: 'REDUCE', 0x53: 'STRING', 0x54: 'BINSTRING', 0x55: 'SHORT_BINSTRING',
  0x56: 'UNICODE', 0x58: 'BINUNICODE', 0x61: 'APPEND', 0x62: 'BUILD', 0x63: 'GLOBAL', 0x64: 'DICT',
  0x7d: 'EMPTY_DICT', 0x65: 'APPENDS', 0x67: 'GET', 0x68: 'BINGET', 0x69: 'INST', 0x6a: 'LONG_BINGET',
  0x6c: 'LIST', 0x5d: 'EMPTY_LIST', 0x6f: 'OBJ', 0x70: 'PUT', 0x71: 'BINPUT', 0x72: 'LONG_BINPUT',
  0x73: 'SETITEM', 0x74: 'TUPLE', 0x29: 'EMPTY_TUPLE', 0x75: 'SETITEMS', 0x47: 'BINFLOAT',
  0x80: 'PROTO', 0x81: 'NEWOBJ', 0x82: 'EXT1', 0x83: 'EXT2', 0x84: 'EXT4', 0x85: 'TUPLE1', 0x86: 'TUPLE2',
  0x87: 'TUPLE3', 0x88: 'NEWTRUE', 0x89: 'NEWFALSE', 0x8a: 'LONG1', 0x8b: 'LONG4', 0x42: 'BINBYTES',
  0x43: 'SHORT_BINBYTES', 0x8c: 'SHORT_BINUNICODE', 0x8d: 'BINUNICODE8', 0x8e: 'BINBYTES8',
  0x8f: 'EMPTY_SET', 0x90: 'ADDITEMS', 0x91: 'FROZENSET', 0x92: 'NEWOBJ_EX', 0x93: 'STACK_GLOBAL',
  0x94: 'MEMOIZE', 0x95: 'FRAME', 0x96: 'BYTEARRAY8', 0x97: 'NEXT_BUFFER', 0x98: 'READONLY_BUFFER',
};

const MARK = Symbol('mark');

export function unpickle(data: Uint8Array, opts: UnpickleOptions): unknown {
  const { label, globals } = opts;
  const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const fail = (why: string): never => {
    throw new UserError(`${label}: ${why}`);
  };
  let pos = 0;
  const need = (n: number): number => {
    if (pos + n > data.length) fail(`pickle truncated at byte ${pos} (needs ${n} more bytes)`);
    const at = pos;
    pos += n;
    return at;
  };
  const utf8 = new TextDecoder('utf-8', { fatal: true });
  const text = (n: number): string => {
    const at = need(n);
    try {
      return utf8.decode(data.subarray(at, at + n));
    } catch {
      return fail(`pickle string at byte ${at} is not UTF-8`);
    }
  };
  const line = (): string => {
    const end = data.indexOf(0x0a, pos);
    if (end < 0) fail(`pickle truncated at byte ${pos} (unterminated GLOBAL)`);
    return text(end - pos + 1).slice(0, -1);
  };

  const stack: unknown[] = [];
  const marks: number[] = [];
  const memo = new Map<number, unknown>();
  const pop = (): unknown => {
    if (stack.length === 0 || (marks.length > 0 && stack.length <= marks[marks.length - 1])) fail(`pickle stack underflow at byte ${pos - 1}`);
    return stack.pop();
  };
  const top = (): unknown => {
    if (stack.length === 0) fail(`pickle stack underflow at byte ${pos - 1}`);
    return stack[stack.length - 1];
  };
  const popMark = (): unknown[] => {
    const m = marks.pop();
    if (m === undefined) fail(`pickle MARK missing at byte ${pos - 1}`);
    return stack.splice(m as number);
  };
  const get = (i: number): unknown => {
    if (!memo.has(i)) fail(`pickle memo ${i} read before it was written (byte ${pos})`);
    return memo.get(i);
  };
  const resolve = (module: string, name: string): PyGlobal => {
    const g = globals.get(`${module}.${name}`);
    if (!g) fail(`refusing to load global ${module}.${name} (a pickle can run code; only torch tensor data is read, convert the checkpoint to safetensors)`);
    return g as PyGlobal;
  };
  const asDict = (v: unknown, op: string): PyDict => {
    if (!(v instanceof PyDict)) fail(`pickle ${op} on something that is not a dict (byte ${pos - 1})`);
    return v as PyDict;
  };
  const asList = (v: unknown, op: string): unknown[] => {
    if (!Array.isArray(v)) fail(`pickle ${op} on something that is not a list (byte ${pos - 1})`);
    return v as unknown[];
  };
  const setItems = (d: PyDict, kv: unknown[]): void => {
    if (kv.length % 2) fail(`pickle SETITEMS with an odd number of values (byte ${pos - 1})`);
    for (let i = 0; i < kv.length; i += 2) d.items.set(key(kv[i]), kv[i + 1]);
  };
  const key = (k: unknown): PyKey => {
    if (k === null || ['string', 'number', 'bigint', 'boolean'].includes(typeof k)) return k as PyKey;
    return fail(`pickle dict key of an unsupported type (byte ${pos - 1})`);
  };

  for (;;) {
    const at = need(1);
    const op = data[at];
    switch (op) {
      case 0x80: // PROTO
        if (data[need(1)] > 5) fail(`pickle protocol ${data[at + 1]} is newer than any Python writes`);
        break;
      case 0x95: // FRAME: only a length hint for buffered readers
        need(8);
        break;
      case 0x2e: // STOP
        if (stack.length !== 1 || marks.length) fail(`pickle ends with ${stack.length} values on the stack`);
        return stack[0];
      case 0x28:
        marks.push(stack.length);
        break;
      case 0x7d:
        stack.push(new PyDict());
        break;
      case 0x64: {
        const d = new PyDict();
        setItems(d, popMark());
        stack.push(d);
        break;
      }
      case 0x5d:
        stack.push([]);
        break;
      case 0x6c:
        stack.push(popMark());
        break;
      case 0x29:
        stack.push([]);
        break;
      case 0x74:
        stack.push(popMark());
        break;
      case 0x85:
        stack.push([pop()]);
        break;
      case 0x86: {
        const b = pop();
        stack.push([pop(), b]);
        break;
      }
      case 0x87: {
        const c = pop();
        const b = pop();
        stack.push([pop(), b, c]);
        break;
      }
      case 0x61: {
        const v = pop();
        asList(top(), 'APPEND').push(v);
        break;
      }
      case 0x65: {
        const vs = popMark();
        const list = asList(top(), 'APPENDS');
        // not push(...vs): a long run of items would overflow the argument limit
        for (const v of vs) list.push(v);
        break;
      }
      case 0x73: {
        const v = pop();
        const k = pop();
        asDict(top(), 'SETITEM').items.set(key(k), v);
        break;
      }
      case 0x75: {
        const kv = popMark();
        setItems(asDict(top(), 'SETITEMS'), kv);
        break;
      }
      case 0x71:
        memo.set(data[need(1)], top());
        break;
      case 0x72:
        memo.set(dv.getUint32(need(4), true), top());
        break;
      case 0x94:
        memo.set(memo.size, top());
        break;
      case 0x68:
        stack.push(get(data[need(1)]));
        break;
      case 0x6a:
        stack.push(get(dv.getUint32(need(4), true)));
        break;
      case 0x4a:
        stack.push(dv.getInt32(need(4), true));
        break;
      case 0x4b:
        stack.push(data[need(1)]);
        break;
      case 0x4d:
        stack.push(dv.getUint16(need(2), true));
        break;
      case 0x8a: {
        const n = data[need(1)];
        stack.push(long1(data.subarray(need(n), pos)));
        break;
      }
      case 0x47:
        stack.push(dv.getFloat64(need(8), false));
        break;
      case 0x4e:
        stack.push(null);
        break;
      case 0x88:
        stack.push(true);
        break;
      case 0x89:
        stack.push(false);
        break;
      case 0x58:
        stack.push(text(dv.getUint32(need(4), true)));
        break;
      case 0x8c:
        stack.push(text(data[need(1)]));
        break;
      case 0x63: {
        const module = line();
        stack.push(resolve(module, line()));
        break;
      }
      case 0x93: {
        const name = pop();
        const module = pop();
        if (typeof module !== 'string' || typeof name !== 'string') fail(`pickle STACK_GLOBAL without two strings (byte ${at})`);
        stack.push(resolve(module as string, name as string));
        break;
      }
      case 0x51: {
        const pid = pop();
        if (!opts.persistentLoad) fail(`pickle persistent id at byte ${at} where none are expected`);
        stack.push(opts.persistentLoad!(pid));
        break;
      }
      case 0x52: {
        const args = pop();
        const fn = pop() as PyGlobal;
        if (!Array.isArray(args)) fail(`pickle REDUCE without an argument tuple (byte ${at})`);
        if (!fn || typeof fn !== 'object' || typeof (fn as PyGlobal).name !== 'string' || !fn.call) {
          fail(`refusing REDUCE at byte ${at}: ${describe(fn)} is not a whitelisted callable`);
        }
        stack.push(fn.call!(args as unknown[]));
        break;
      }
      case 0x62: {
        // BUILD sets instance state; only dicts (OrderedDict with its _metadata) take it, and it is kept inert
        const state = pop();
        asDict(top(), 'BUILD').state = state;
        break;
      }
      default: {
        const name = OPCODE_NAMES[op];
        fail(`refusing pickle opcode ${name ?? 'unknown'} (0x${op.toString(16).padStart(2, '0')}) at byte ${at}; only plain data and torch tensors are read, convert the checkpoint to safetensors`);
      }
    }
  }
}

/** LONG1 payload: little-endian two's complement; a number when it fits exactly. */
function long1(b: Uint8Array): number | bigint {
  let v = 0n;
  for (let i = b.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]);
  if (b.length && b[b.length - 1] & 0x80) v -= 1n << BigInt(8 * b.length);
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
}

function describe(v: unknown): string {
  if (v && typeof v === 'object' && typeof (v as PyGlobal).name === 'string') return (v as PyGlobal).name;
  if (Array.isArray(v)) return 'a tuple';
  if (v instanceof PyDict) return 'a dict';
  return typeof v === 'string' ? 'a string' : String(v);
}
