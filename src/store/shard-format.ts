import type { KeyValue, SchemaElement } from 'hyparquet';
import { UserError } from '../util/errors.js';
import { isPreprocessing, PREPROCESSINGS, type Preprocessing } from './preprocess.js';
import { isShardDtype, SHARD_DTYPES, type ShardDtype } from './dtype.js';
import { isPrecision, PRECISIONS, type Precision } from '../kernels/bf16.js';

/**
 * Activation shards (SPEC §10): a directory of `shard-NNNNN.parquet` files, one row per token,
 * plus `manifest.json`, written last, whose presence means the directory is complete.
 *
 * Columns: activation LIST<FLOAT> (standard three-level list, so pyarrow/DuckDB read it as
 * list<float>; for 16-bit dtypes the element is FIXED_LEN_BYTE_ARRAY(2), see dtype.ts), token_id INT32, context_id INT32, position INT32, and with center_unit_norm
 * raw_mean FLOAT and raw_norm FLOAT (what splice-eval needs to map a reconstruction back).
 * context_id is INT32 rather than INT64: 2³¹ contexts of 64 tokens is far beyond any harvest this
 * toolkit will run, and hyparquet would hand INT64 back as BigInt on every read.
 */
export const SHARD_FORMAT = 'sae-activations/1';
export const MANIFEST = 'manifest.json';
const KV_PREFIX = 'sae.';
const EXTRA_PREFIX = 'sae.extra.';

export interface ShardMeta {
  model: string;
  revision: string;
  hook: string;
  d: number;
  /** tokens per context (0 when rows are not token contexts, e.g. synthetic data) */
  ctx: number;
  /** storage dtype of the activation column; rows are float32 in memory either way */
  dtype: ShardDtype;
  preprocessing: Preprocessing;
  /** the constant factor of dataset_scale; absent otherwise */
  scale?: number;
  tokenizer: string;
  /** description of the dataset slice the rows came from */
  dataset: string;
  /**
   * the precision the host LM computed the rows at (docs/precision.md): bf16 rows are not the fp32
   * ones. Absent where no LM computed them (synthetic data) and in shards from before precision
   * existed, which are fp32.
   */
  precision?: Precision;
  /** free-form provenance (e.g. synthetic-data parameters), stored as `sae.extra.<key>` */
  extras?: Record<string, string>;
}

export interface ShardFileEntry {
  file: string;
  rows: number;
}

export interface ShardManifest {
  format: string;
  rows: number;
  shards: ShardFileEntry[];
  meta: ShardMeta;
}

export function shardFileName(i: number): string {
  return `shard-${String(i).padStart(5, '0')}.parquet`;
}

export function metaToKv(meta: ShardMeta): KeyValue[] {
  validateMeta(meta, 'shard metadata');
  const kv: KeyValue[] = [
    { key: 'sae.format', value: SHARD_FORMAT },
    { key: 'sae.model', value: meta.model },
    { key: 'sae.revision', value: meta.revision },
    { key: 'sae.hook', value: meta.hook },
    { key: 'sae.d', value: String(meta.d) },
    { key: 'sae.ctx', value: String(meta.ctx) },
    { key: 'sae.dtype', value: meta.dtype },
    { key: 'sae.preprocessing', value: meta.preprocessing },
  ];
  // String(number) round-trips a double exactly, so the reader recovers the very same scale.
  if (meta.scale !== undefined) kv.push({ key: 'sae.scale', value: String(meta.scale) });
  kv.push({ key: 'sae.tokenizer', value: meta.tokenizer }, { key: 'sae.dataset', value: meta.dataset });
  if (meta.precision !== undefined) kv.push({ key: 'sae.precision', value: meta.precision });
  for (const k of Object.keys(meta.extras ?? {}).sort()) kv.push({ key: EXTRA_PREFIX + k, value: meta.extras![k] });
  return kv;
}

/** Parse and validate the `sae.*` key-value metadata; `where` names the file in errors. */
export function kvToMeta(kv: readonly KeyValue[] | undefined, where: string): ShardMeta {
  const m = new Map<string, string>();
  for (const { key, value } of kv ?? []) if (key.startsWith(KV_PREFIX)) m.set(key, value ?? '');
  const format = m.get('sae.format');
  if (format === undefined) throw new UserError(`${where}: not an sae activation shard (no sae.format metadata)`);
  if (format !== SHARD_FORMAT) throw new UserError(`${where}: unsupported shard format ${JSON.stringify(format)} (expected ${SHARD_FORMAT})`);
  const need = (key: string): string => {
    const v = m.get(`sae.${key}`);
    if (v === undefined) throw new UserError(`${where}: metadata lacks sae.${key}`);
    return v;
  };
  const int = (key: string): number => {
    const s = need(key);
    const v = Number(s);
    if (!/^\d+$/.test(s) || !Number.isSafeInteger(v)) throw new UserError(`${where}: metadata sae.${key}=${JSON.stringify(s)} is not a non-negative integer`);
    return v;
  };
  const extras: Record<string, string> = {};
  for (const [k, v] of m) if (k.startsWith(EXTRA_PREFIX)) extras[k.slice(EXTRA_PREFIX.length)] = v;
  const meta: ShardMeta = {
    model: need('model'),
    revision: need('revision'),
    hook: need('hook'),
    d: int('d'),
    ctx: int('ctx'),
    dtype: need('dtype') as ShardDtype,
    preprocessing: need('preprocessing') as Preprocessing,
    tokenizer: need('tokenizer'),
    dataset: need('dataset'),
  };
  if (m.has('sae.scale')) meta.scale = Number(m.get('sae.scale'));
  if (m.has('sae.precision')) meta.precision = m.get('sae.precision') as Precision;
  if (Object.keys(extras).length) meta.extras = extras;
  validateMeta(meta, where);
  return meta;
}

export function validateMeta(meta: ShardMeta, where: string): void {
  const bad = (why: string): never => {
    throw new UserError(`${where}: ${why}`);
  };
  if (!Number.isSafeInteger(meta.d) || meta.d < 1) bad(`d must be a positive integer, got ${meta.d}`);
  if (!Number.isSafeInteger(meta.ctx) || meta.ctx < 0) bad(`ctx must be a non-negative integer, got ${meta.ctx}`);
  if (!isShardDtype(meta.dtype)) bad(`unsupported dtype ${JSON.stringify(meta.dtype)} (one of ${SHARD_DTYPES.join(', ')})`);
  if (!isPreprocessing(meta.preprocessing)) {
    bad(`unknown preprocessing ${JSON.stringify(meta.preprocessing)} (one of ${PREPROCESSINGS.join(', ')})`);
  }
  if (meta.preprocessing === 'dataset_scale') {
    if (meta.scale === undefined || !Number.isFinite(meta.scale) || meta.scale <= 0) {
      bad(`dataset_scale preprocessing needs a positive scale, got ${meta.scale}`);
    }
  } else if (meta.scale !== undefined) {
    bad(`scale is only meaningful with dataset_scale preprocessing (preprocessing is ${meta.preprocessing})`);
  }
  if (meta.precision !== undefined && !isPrecision(meta.precision)) bad(`unknown precision ${JSON.stringify(meta.precision)} (one of ${PRECISIONS.join(', ')})`);
  for (const k of ['model', 'revision', 'hook', 'tokenizer', 'dataset'] as const) {
    if (typeof meta[k] !== 'string') bad(`${k} must be a string`);
  }
  for (const [k, v] of Object.entries(meta.extras ?? {})) {
    if (typeof v !== 'string') bad(`extra ${k} must be a string`);
  }
}

/** Whether this metadata implies the raw_mean/raw_norm columns. */
export function hasRawStats(meta: ShardMeta): boolean {
  return meta.preprocessing === 'center_unit_norm';
}

export function shardSchema(meta: ShardMeta): SchemaElement[] {
  const raw = hasRawStats(meta);
  const schema: SchemaElement[] = [
    { name: 'root', num_children: raw ? 6 : 4 },
    { name: 'activation', repetition_type: 'REQUIRED', converted_type: 'LIST', num_children: 1 },
    { name: 'list', repetition_type: 'REPEATED', num_children: 1 },
    activationElement(meta.dtype),
    { name: 'token_id', type: 'INT32', repetition_type: 'REQUIRED' },
    { name: 'context_id', type: 'INT32', repetition_type: 'REQUIRED' },
    { name: 'position', type: 'INT32', repetition_type: 'REQUIRED' },
  ];
  if (raw) {
    schema.push(
      { name: 'raw_mean', type: 'FLOAT', repetition_type: 'REQUIRED' },
      { name: 'raw_norm', type: 'FLOAT', repetition_type: 'REQUIRED' },
    );
  }
  return schema;
}

/** The leaf of the activation list for a storage dtype (see dtype.ts for the encodings). */
export function activationElement(dtype: ShardDtype): SchemaElement {
  switch (dtype) {
    case 'float32':
      return { name: 'element', type: 'FLOAT', repetition_type: 'REQUIRED' };
    case 'float16':
      return { name: 'element', type: 'FIXED_LEN_BYTE_ARRAY', type_length: 2, logical_type: { type: 'FLOAT16' }, repetition_type: 'REQUIRED' };
    case 'bfloat16':
      return { name: 'element', type: 'FIXED_LEN_BYTE_ARRAY', type_length: 2, repetition_type: 'REQUIRED' };
  }
}
