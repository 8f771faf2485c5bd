import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { parquetMetadataAsync, parquetSchema, type AsyncBuffer, type FileMetaData, type SchemaTree } from 'hyparquet';
import { UserError } from '../util/errors.js';
import { describeFsError } from '../util/atomic.js';
import type { ShardDtype } from './dtype.js';
import { MANIFEST, SHARD_FORMAT, hasRawStats, kvToMeta, metaToKv, type ShardManifest, type ShardMeta } from './shard-format.js';

/**
 * Opening a shard set: finding its files (manifest, folder or single file), parsing and checking
 * every footer and its metadata up front, and keeping the parsed footers for the readers.
 */

export interface ShardFile {
  path: string;
  rows: number;
  /** rows in each Parquet row group, in order */
  rowGroups: number[];
}

export interface ShardSet {
  files: ShardFile[];
  meta: ShardMeta;
  rows: number;
}

/** Parsed footers, kept so that streaming does not re-read them; keyed by the ShardFile object. */
const footers = new WeakMap<ShardFile, FileMetaData>();

/** The file's parsed footer, from the cache or read again (a ShardFile rebuilt from JSON has none). */
export async function footerOf(f: ShardFile): Promise<FileMetaData> {
  let md = footers.get(f);
  if (!md) {
    md = footers.get((await openFile(f.path)).shard)!;
    footers.set(f, md);
  }
  return md;
}

/** hyparquet's view of a file: each slice is one positioned read, so no file handle stays open. */
export function fileBuffer(file: string, byteLength: number): AsyncBuffer {
  return {
    byteLength,
    async slice(start: number, end?: number): Promise<ArrayBuffer> {
      const stop = end ?? byteLength;
      const out = new Uint8Array(Math.max(0, stop - start));
      let fh: fs.FileHandle | undefined;
      try {
        fh = await fs.open(file, 'r');
        let got = 0;
        while (got < out.length) {
          const { bytesRead } = await fh.read(out, got, out.length - got, start + got);
          if (bytesRead === 0) throw new UserError(`${file}: truncated (ends at byte ${start + got}, expected ${stop})`);
          got += bytesRead;
        }
      } catch (err) {
        throw describeFsError(err, `reading ${file}`);
      } finally {
        await fh?.close();
      }
      return out.buffer;
    },
  };
}

/** A parse failure as a one-line error naming the file (UserErrors pass through unchanged). */
export function corrupt(file: string, err: unknown): UserError {
  if (err instanceof UserError) return err;
  const msg = err instanceof Error ? err.message : String(err);
  return new UserError(`${file}: not a readable Parquet shard (${msg.split('\n')[0]}); truncated or corrupt?`);
}

function child(tree: SchemaTree, name: string): SchemaTree | undefined {
  return tree.children.find((c) => c.element.name === name);
}

function checkSchema(file: string, md: FileMetaData, meta: ShardMeta): void {
  const root = parquetSchema(md);
  const act = child(root, 'activation');
  let leaf = act;
  while (leaf && leaf.children.length === 1) leaf = leaf.children[0];
  if (!act || !leaf || leaf.children.length !== 0 || !leafMatches(leaf.element, meta.dtype) || act.element.converted_type !== 'LIST') {
    throw new UserError(`${file}: no activation column of type list<${meta.dtype}> (the metadata says sae.dtype=${meta.dtype})`);
  }
  const cols: [string, string][] = [
    ['token_id', 'INT32'],
    ['context_id', 'INT32'],
    ['position', 'INT32'],
  ];
  if (hasRawStats(meta)) cols.push(['raw_mean', 'FLOAT'], ['raw_norm', 'FLOAT']);
  for (const [name, type] of cols) {
    const c = child(root, name);
    if (!c || c.element.type !== type) throw new UserError(`${file}: no ${name} column of type ${type}`);
  }
}

function leafMatches(e: SchemaTree['element'], dtype: ShardDtype): boolean {
  if (dtype === 'float32') return e.type === 'FLOAT';
  if (e.type !== 'FIXED_LEN_BYTE_ARRAY' || e.type_length !== 2) return false;
  return dtype === 'float16' ? e.logical_type?.type === 'FLOAT16' : e.logical_type === undefined;
}

async function openFile(file: string): Promise<{ shard: ShardFile; meta: ShardMeta }> {
  let size: number;
  try {
    const st = await fs.stat(file);
    if (!st.isFile()) throw new UserError(`${file}: not a file`);
    size = st.size;
  } catch (err) {
    throw describeFsError(err, file);
  }
  if (size === 0) throw new UserError(`${file}: empty file`);
  let md: FileMetaData;
  try {
    md = await parquetMetadataAsync(fileBuffer(file, size));
  } catch (err) {
    throw corrupt(file, err);
  }
  const meta = kvToMeta(md.key_value_metadata, file);
  checkSchema(file, md, meta);
  const rowGroups: number[] = [];
  for (const rg of md.row_groups) {
    rowGroups.push(Number(rg.num_rows));
    // A footer that points past the end of the file means the data was cut off or overwritten.
    for (const c of rg.columns) {
      const m = c.meta_data;
      if (!m) continue;
      const start = Number(m.dictionary_page_offset ?? m.data_page_offset);
      if (start + Number(m.total_compressed_size) > size) {
        throw new UserError(`${file}: truncated (column data extends past the end of the ${size}-byte file)`);
      }
    }
  }
  const rows = rowGroups.reduce((a, b) => a + b, 0);
  if (rows !== Number(md.num_rows)) throw new UserError(`${file}: row groups hold ${rows} rows but the footer says ${md.num_rows}`);
  const shard: ShardFile = { path: file, rows, rowGroups };
  footers.set(shard, md);
  return { shard, meta };
}

/** The first key on which two shard metadata disagree, as "key=a vs b", or null. */
function metaDiff(a: ShardMeta, b: ShardMeta): string | null {
  const ka = new Map(metaToKv(a).map((e) => [e.key, e.value]));
  const kb = new Map(metaToKv(b).map((e) => [e.key, e.value]));
  for (const k of new Set([...ka.keys(), ...kb.keys()])) {
    if (ka.get(k) !== kb.get(k)) return `${k.replace(/^sae\./, '')}=${ka.get(k) ?? '(none)'} vs ${kb.get(k) ?? '(none)'}`;
  }
  return null;
}

export interface OpenShardsOptions {
  /** read a directory of .parquet files that has no manifest.json (a hand-made set) */
  allowNoManifest?: boolean;
}

/**
 * Open activation shards: a directory with manifest.json, a directory of .parquet files (read in
 * name order; only with allowNoManifest, since a writer's folder without its manifest is
 * unfinished), or a single .parquet file. Every file's footer and metadata are validated up front
 * so that a bad shard fails the run before training starts, not hours into it.
 */
export async function openShards(pathOrDir: string, opts: OpenShardsOptions = {}): Promise<ShardSet> {
  let st;
  try {
    st = await fs.stat(pathOrDir);
  } catch (err) {
    throw describeFsError(err, pathOrDir);
  }
  let names: string[];
  let manifest: ShardManifest | null = null;
  if (st.isDirectory()) {
    const mpath = path.join(pathOrDir, MANIFEST);
    let text: string | null = null;
    try {
      text = await fs.readFile(mpath, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw describeFsError(err, `reading ${mpath}`);
    }
    if (text !== null) {
      try {
        manifest = JSON.parse(text) as ShardManifest;
      } catch {
        throw new UserError(`${mpath}: malformed JSON`);
      }
      if (manifest?.format !== SHARD_FORMAT || !Array.isArray(manifest.shards)) {
        throw new UserError(`${mpath}: not an sae activation manifest (format ${JSON.stringify(manifest?.format)})`);
      }
      names = manifest.shards.map((s) => {
        if (typeof s?.file !== 'string' || s.file.includes('/') || s.file.includes('\\')) {
          throw new UserError(`${mpath}: malformed shard entry ${JSON.stringify(s)}`);
        }
        return path.join(pathOrDir, s.file);
      });
    } else {
      let entries: string[];
      try {
        entries = await fs.readdir(pathOrDir);
      } catch (err) {
        throw describeFsError(err, `reading ${pathOrDir}`);
      }
      const parquet = entries.filter((n) => n.endsWith('.parquet') && !n.startsWith('.')).sort();
      if (!parquet.length) {
        // a multi-hook harvest writes one shard folder per hook: point at them instead of "nothing here"
        const sub: string[] = [];
        for (const n of entries.sort()) {
          const p = path.join(pathOrDir, n);
          if (await fs.stat(path.join(p, MANIFEST)).then((s) => s.isFile(), () => false)) sub.push(p);
        }
        if (sub.length) throw new UserError(`${pathOrDir} holds one folder per hook: ${sub.join(', ')}; pass one of them`);
        throw new UserError(`no activations in ${pathOrDir} (no ${MANIFEST} and no .parquet files)`);
      }
      // A writer publishes the manifest last: without it the folder is a killed or running write,
      // unless the user vouches for a hand-made set.
      if (!opts.allowNoManifest) {
        const temps = entries.filter((n) => n.startsWith('.') && n.includes('.tmp-')).length;
        throw new UserError(
          `${pathOrDir}: incomplete shard folder: no ${MANIFEST} (${parquet.length} .parquet file${parquet.length === 1 ? '' : 's'}` +
            `${temps ? `, ${temps} temporary file${temps === 1 ? '' : 's'} of an unfinished write` : ''}); ` +
            `rerun the command that wrote it, or pass --allow-no-manifest for a hand-made folder of Parquet files`,
        );
      }
      names = parquet.map((n) => path.join(pathOrDir, n));
    }
  } else {
    names = [pathOrDir];
  }
  const files: ShardFile[] = [];
  let meta: ShardMeta | null = null;
  for (let i = 0; i < names.length; i++) {
    const { shard, meta: m } = await openFile(names[i]);
    if (manifest && manifest.shards[i].rows !== shard.rows) {
      throw new UserError(`${names[i]}: has ${shard.rows} rows but ${MANIFEST} lists ${manifest.shards[i].rows}`);
    }
    if (meta) {
      const diff = metaDiff(meta, m);
      if (diff) throw new UserError(`${names[i]}: metadata disagrees with ${files[0].path} (${diff})`);
    } else {
      meta = m;
    }
    files.push(shard);
  }
  if (!meta) throw new UserError(`no activations in ${pathOrDir} (${MANIFEST} lists no shards)`);
  if (manifest) {
    const diff = metaDiff(manifest.meta, meta);
    if (diff) throw new UserError(`${path.join(pathOrDir, MANIFEST)}: metadata disagrees with the shards (${diff})`);
  }
  const rows = files.reduce((a, f) => a + f.rows, 0);
  if (rows === 0) throw new UserError(`no activations in ${pathOrDir} (0 rows)`);
  return { files, meta, rows };
}
