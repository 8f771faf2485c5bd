import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { parquetMetadata, parquetMetadataAsync } from 'hyparquet';
import { UserError } from '../util/errors.js';
import { describeFsError } from '../util/atomic.js';
import { pathKind } from '../util/outdir.js';
import { MANIFEST, type ShardManifest, type ShardMeta } from './shard-format.js';
import { fileBuffer, openShards } from './shard-set.js';

/**
 * Who wrote an output, and so who may replace it (issues 16, 17). A command replaces only what it
 * recognisably wrote: its own earlier output on a rerun, or with --force; another command's output
 * needs that command's own --force (or a new place), so that no journal (harvest.json, a shuffle's
 * scratch, synth.json) outlives the data it describes, and nothing of the user's is taken for ours.
 * Ownership is recognised by marks and content, never by a name alone. Every --out / --save /
 * --force check asks this module; what each command then does (resume, recover, clear) stays with
 * it. The names are spelled out here rather than imported, so that this low module imports no
 * stage, and the stages take them from here.
 */

export const HARVEST_JOURNAL = 'harvest.json';
/** the shuffle's scratch folder (its buckets and journal) */
export const SHUFFLE_WORK = 'shuffle-work';
export const DICTIONARY_FILE = 'dictionary.safetensors';
export const SYNTH_FILE = 'synth.json';
/** the model name synthetic shards and the SAEs trained on them carry: there is no host model */
export const SYNTHETIC_MODEL = 'synthetic';
/** a training run's entries, in the order they are checked and cleared */
export const RUN_FILES: readonly string[] = ['checkpoint', 'final', 'metrics.jsonl', 'summary.json'];
/** the run entries a run continues from (or that hold a finished run) */
export const CHECKPOINT_DIRS: readonly string[] = ['checkpoint', 'final'];
export const DEMO_MARKER = '.sae-demo';
export const REPORT_HTML_TAG = '<meta name="generator" content="sae report">';
const REPORT_SVG_ATTR = 'data-generator="sae report"';
/** safetensors metadata that marks a file as written by `sae model run --save` */
export const MODEL_RUN_MARK: Readonly<Record<string, string>> = { writer: 'sae model run' };
export const SPLICE_SCHEMA = 'sae-splice/1';
/** the manifest of `sae features`' folder */
export const FEATURES_MANIFEST = 'features.json';
/** the columns of `sae eval --features-out` */
export const FEATURE_COLUMNS = ['feature', 'rank', 'density', 'mean_activation', 'max_activation', 'decoder_norm', 'dying', 'never_fired'] as const;
/** the fields of each `sae encode` record (an NDJSON line's keys, the Parquet columns), in order */
export const ENCODE_COLUMNS = ['context', 'position', 'token', 'token_id', 'features'] as const;
/** Parquet key-value metadata that marks a file as written by `sae encode` */
export const ENCODE_MARK: Readonly<Record<string, string>> = { 'sae.writer': 'sae encode' };

const SHARD = /^shard-\d+\.parquet$/;
export const isShardName = (name: string): boolean => SHARD.test(name);

/** A command whose output is a folder of activation shards, named as in `sae <name> --force`. */
export type ShardWriterCommand = 'harvest' | 'shuffle' | 'synth';
/** A command that writes other outputs: a folder of its own, or files. */
export type OutputCommand = 'train' | 'export' | 'demo' | 'report' | 'model run' | 'splice-eval' | 'eval' | 'features' | 'encode';

interface ShardOutput {
  /** what the output is, in messages */
  what: string;
  /** entries only this command keeps beside its shards (a trailing / marks a folder) */
  marks: readonly string[];
  /** does the shards' metadata say this command wrote them? */
  shards: (meta: ShardMeta) => boolean;
}

interface OwnOutput {
  /** a folder of its own: do its entries say this command wrote it? */
  folder?: (entries: readonly string[]) => boolean;
  /** an existing file (or run entry) at a path: is it this command's, by its name and content? */
  file?: (p: string) => Promise<boolean>;
}

const shuffled = (m: ShardMeta): boolean => typeof m.extras?.['shuffle.seed'] === 'string';
const synthetic = (m: ShardMeta): boolean => !shuffled(m) && m.model === SYNTHETIC_MODEL;

/** The table: for each command that writes, what identifies its output. */
export const OUTPUTS: Record<ShardWriterCommand, ShardOutput> & Record<OutputCommand, OwnOutput> = {
  harvest: { what: 'a harvest', marks: [HARVEST_JOURNAL], shards: (m) => !shuffled(m) && !synthetic(m) },
  shuffle: { what: "a shuffle's output", marks: [`${SHUFFLE_WORK}/`], shards: shuffled },
  synth: { what: 'synthetic activations from sae synth', marks: [SYNTH_FILE, DICTIONARY_FILE], shards: synthetic },
  train: { file: (p) => runEntry(p) },
  // an export is a checkpoint without the training state, or a SAELens / sparsify folder (issue 19)
  export: { folder: (e) => e.includes('cfg.json') && (e.includes('sae.safetensors') || e.includes('sae_weights.safetensors')) && !e.includes('state.json') },
  demo: { folder: (e) => e.includes(DEMO_MARKER) },
  report: { file: async (p) => isReportOutput(path.basename(p), (await readHead(p)) ?? '') },
  'model run': { file: (p) => safetensorsWithMeta(p, MODEL_RUN_MARK) },
  'splice-eval': { file: (p) => jsonWithSchema(p, SPLICE_SCHEMA) },
  eval: { file: (p) => tableWithColumns(p, FEATURE_COLUMNS) },
  encode: { file: (p) => isEncodeOutput(p) },
  // a feature browser folder (issue 20): its manifest and its page
  features: { folder: (e) => e.includes(FEATURES_MANIFEST) && e.includes('index.html') },
};

const SHARD_WRITERS: readonly ShardWriterCommand[] = ['harvest', 'shuffle', 'synth'];

/** The entry names of these commands' marks (e.g. what shuffle and synth keep beside their shards). */
export function marksOf(...writers: ShardWriterCommand[]): string[] {
  return writers.flatMap((w) => OUTPUTS[w].marks).map((m) => m.replace(/\/$/, ''));
}

/** Do a folder's entries say `writer` wrote it (export, demo)? */
export function ownsFolder(writer: OutputCommand, entries: readonly string[]): boolean {
  return OUTPUTS[writer].folder?.(entries) ?? false;
}

/** Is the existing file or run entry `p` one `writer` wrote? Read errors propagate. */
export async function ownsFile(writer: OutputCommand, p: string): Promise<boolean> {
  return (await OUTPUTS[writer].file?.(p)) ?? false;
}

export interface FolderWriter {
  writer: ShardWriterCommand | 'other';
  /** the entry that says so, for messages */
  evidence: string;
  /** the shards' metadata, when that is what says so */
  meta?: ShardMeta;
}

/** Every sign of a writer in `dir`: marks first, then what the shards' metadata says ('other' when unreadable). */
export async function folderWriters(dir: string): Promise<FolderWriter[]> {
  const entries = await fs.readdir(dir).catch(() => [] as string[]);
  const found: FolderWriter[] = [];
  for (const writer of SHARD_WRITERS) {
    for (const mark of OUTPUTS[writer].marks) if (entries.includes(mark.replace(/\/$/, ''))) found.push({ writer, evidence: mark });
  }
  let meta: ShardMeta | null = null;
  let evidence = MANIFEST;
  if (entries.includes(MANIFEST)) {
    meta = await fs
      .readFile(path.join(dir, MANIFEST), 'utf8')
      .then((t) => (JSON.parse(t) as ShardManifest).meta ?? null)
      .catch(() => null);
  }
  if (!meta) {
    // shards without a manifest (a run killed before its end): their own metadata says whose
    const first = entries.filter(isShardName).sort()[0];
    if (!first) return entries.includes(MANIFEST) ? [...found, { writer: 'other', evidence: MANIFEST }] : found;
    evidence = first;
    meta = (await openShards(path.join(dir, first)).catch(() => null))?.meta ?? null;
    if (!meta) return [...found, { writer: 'other', evidence }];
  }
  const m = meta;
  // the three tests on metadata split every shard set between them: 'other' is only the unreadable
  const writer = SHARD_WRITERS.find((w) => OUTPUTS[w].shards(m)) ?? 'other';
  return [...found, { writer, evidence, meta: m }];
}

/** The first sign in `dir` of a writer other than `self`, or null. */
export async function otherWriter(dir: string, self: ShardWriterCommand): Promise<FolderWriter | null> {
  return (await folderWriters(dir)).find((x) => x.writer !== self) ?? null;
}

/** One line naming what `dir` holds, by `w`'s sign, and who may replace it. */
export function otherWriterError(w: FolderWriter, dir: string, label = '--out'): UserError {
  const [what, who] = w.writer === 'other' ? ['activation shards of unknown origin', 'which sae does not replace'] : [OUTPUTS[w.writer].what, `which only sae ${w.writer} --force may replace`];
  return new UserError(`${label} ${dir} holds ${what} (${w.evidence}), ${who}; choose another ${label}`);
}

/** Refuse `dir` when another command's shards are there, whatever `--force` says. */
export async function refuseOtherWriter(dir: string, self: ShardWriterCommand, label = '--out'): Promise<void> {
  const w = await otherWriter(dir, self);
  if (w) throw otherWriterError(w, dir, label);
}

/**
 * Output files of single-file commands (splice-eval --out, model run --save, eval --features-out).
 * Check `file` before any work, and again just before writing (the file may have appeared since):
 * its folder exists, it is not a folder, and if it exists it is `writer`'s or `force` is set.
 */
export async function checkOutFile(file: string, flag: string, writer: OutputCommand, force: boolean): Promise<void> {
  const dir = path.dirname(path.resolve(file));
  const dst = await fs.stat(dir).catch(() => null);
  if (!dst) throw new UserError(`${flag} ${file}: its folder does not exist`);
  if (!dst.isDirectory()) throw new UserError(`${flag} ${file}: ${dir} is not a folder`);
  const st = await fs.stat(file).catch(() => null);
  if (!st) return;
  if (st.isDirectory()) throw new UserError(`${flag} ${file} is a folder; give a file name`);
  if (force) return;
  if (!(await ownsFile(writer, file).catch(() => false))) throw new UserError(`${flag} ${file} exists and is not an earlier output of this command; add --force to replace it`);
}

/** The SVG as written to its own file: the root element carries the report's mark. */
export function tagSvg(svg: string): string {
  return svg.replace(/^<svg\b/, `<svg ${REPORT_SVG_ATTR}`);
}

/** Is `head` (the start of a file) one of the report's own outputs of that name's kind? */
export function isReportOutput(name: string, head: string): boolean {
  if (name.endsWith('.html')) {
    const end = head.indexOf('</head>');
    return (end < 0 ? head : head.slice(0, end)).includes(REPORT_HTML_TAG);
  }
  const root = head.match(/^<svg\b[^>]*>/);
  return root !== null && root[0].includes(REPORT_SVG_ATTR);
}

/** The start of `file`, null when absent; a folder in its place is refused: it is never ours. */
async function readHead(file: string, bytes = 8192): Promise<string | null> {
  let fh: fs.FileHandle;
  try {
    fh = await fs.open(file, 'r');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw describeFsError(e, `reading ${file}`);
  }
  try {
    if ((await fh.stat()).isDirectory()) throw new UserError(`--out ${path.dirname(file)}: ${path.basename(file)} is a directory, where the report writes a file; choose another --out`);
    const buf = Buffer.alloc(bytes);
    const { bytesRead } = await fh.read(buf, 0, bytes, 0);
    return buf.subarray(0, bytesRead).toString('utf8');
  } finally {
    await fh.close();
  }
}

/**
 * Refuse (one line) when any of `names` exists in `out` and was not written by `sae report`,
 * unless `force`. A folder in the way is refused even with --force: it is never ours to replace.
 */
export async function checkReportOutputs(out: string, names: string[], force: boolean): Promise<void> {
  const foreign: string[] = [];
  for (const name of names) {
    const head = await readHead(path.join(out, name));
    if (head !== null && !isReportOutput(name, head)) foreign.push(name);
  }
  if (!foreign.length || force) return;
  const what = foreign.length === 1 ? `${foreign[0]} exists there and was not written` : `${foreign.join(', ')} exist there and were not written`;
  throw new UserError(`--out ${out}: ${what} by sae report; choose another --out, or add --force to replace ${foreign.length === 1 ? 'it' : 'them'}`);
}

/** A run entry by its name: a checkpoint folder (with cfg.json), the JSON-lines log, the JSON summary. */
async function runEntry(p: string): Promise<boolean> {
  const name = path.basename(p);
  if (!RUN_FILES.includes(name)) return false;
  const dir = CHECKPOINT_DIRS.includes(name);
  if ((await pathKind(p)) !== (dir ? 'dir' : 'file')) return false;
  if (dir) return !!(await fs.stat(path.join(p, 'cfg.json')).catch(() => null));
  const text = await fs.readFile(p, 'utf8').catch(() => null);
  if (text === null) return false;
  try {
    if (!name.endsWith('.jsonl')) JSON.parse(text);
    else for (const line of text.split('\n')) if (line.trim()) JSON.parse(line);
    return true;
  } catch {
    return false;
  }
}

/** A JSON file whose top-level `schema` is `schema`. */
async function jsonWithSchema(file: string, schema: string): Promise<boolean> {
  const st = await fs.stat(file);
  if (st.size > 64 << 20) return false;
  const v = JSON.parse(await fs.readFile(file, 'utf8')) as { schema?: unknown };
  return typeof v === 'object' && v !== null && v.schema === schema;
}

/** A safetensors file whose header metadata holds every key of `mark`; reads the header only. */
async function safetensorsWithMeta(file: string, mark: Readonly<Record<string, string>>): Promise<boolean> {
  const fh = await fs.open(file, 'r');
  try {
    const len = Buffer.alloc(8);
    if ((await fh.read(len, 0, 8, 0)).bytesRead < 8) return false;
    const n = Number(len.readBigUInt64LE(0));
    if (n < 2 || n > 100 << 20) return false;
    const head = Buffer.alloc(n);
    if ((await fh.read(head, 0, n, 8)).bytesRead < n) return false;
    const h = JSON.parse(head.toString('utf8')) as { __metadata__?: Record<string, unknown> };
    return Object.entries(mark).every(([k, v]) => h.__metadata__?.[k] === v);
  } finally {
    await fh.close();
  }
}

/** A CSV whose header line is exactly `columns`, or a Parquet file with exactly these columns. */
async function tableWithColumns(file: string, columns: readonly string[]): Promise<boolean> {
  const buf = await fs.readFile(file);
  if (file.toLowerCase().endsWith('.parquet')) {
    const md = parquetMetadata(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength) as ArrayBuffer);
    const names = md.schema.slice(1).map((s) => s.name);
    return names.length === columns.length && names.every((n, i) => n === columns[i]);
  }
  const nl = buf.indexOf(10);
  return buf.subarray(0, nl < 0 ? buf.length : nl).toString('utf8').replace(/\r$/, '') === columns.join(',');
}

/**
 * A `sae encode` output: Parquet whose footer carries ENCODE_MARK (the footer alone is read), or
 * NDJSON whose first line is a record with exactly ENCODE_COLUMNS as keys.
 */
async function isEncodeOutput(file: string): Promise<boolean> {
  const head = await readHead(file, 1 << 20);
  if (head === null) return false;
  if (head.startsWith('PAR1')) {
    const size = (await fs.stat(file)).size;
    const kv = (await parquetMetadataAsync(fileBuffer(file, size))).key_value_metadata ?? [];
    return Object.entries(ENCODE_MARK).every(([k, v]) => kv.some((e) => e.key === k && e.value === v));
  }
  const nl = head.indexOf('\n');
  if (nl < 0) return false;
  const v = JSON.parse(head.slice(0, nl)) as Record<string, unknown>;
  const keys = typeof v === 'object' && v !== null ? Object.keys(v) : [];
  return keys.length === ENCODE_COLUMNS.length && keys.every((k, i) => k === ENCODE_COLUMNS[i]);
}
