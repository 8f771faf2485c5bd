// Activation shard throughput: ShardWriter and the two readers at d = 768, per storage dtype.
//
//   npm run build:ts && node bench/shards.mjs
//   node bench/shards.mjs --rows 16384 --dtypes float32 --dist /path/to/another/build/dist
//
// Write: rows appended in blocks of 4096 with center_unit_norm applied by the writer (what
// `sae harvest` does), including the fsync and rename of every shard and the manifest.
// Read: readRows over every row group with all columns (what `sae shuffle` does) and a
// BatchStream with a window of one row group (what training does: activations only).
// MB/s counts the bytes of the shard files. Each figure is the best of --reps runs.
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { pathToFileURL, fileURLToPath } from 'node:url';

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
const here = path.dirname(fileURLToPath(import.meta.url));
const dist = path.resolve(opt('dist', path.join(here, '..', 'dist')));
const d = Number(opt('d', 768));
const rows = Number(opt('rows', 65536));
const reps = Number(opt('reps', 3));
const dtypes = opt('dtypes', 'float32,float16,bfloat16').split(',');
const json = args.includes('--json');

const { ShardWriter } = await import(pathToFileURL(path.join(dist, 'store', 'shards.js')).href);
const { openShards, readRows, BatchStream } = await import(pathToFileURL(path.join(dist, 'store', 'reader.js')).href);

const block = 4096;
// Smooth pseudo-random values of activation-like magnitude; every block differs a little.
const src = new Float32Array(block * d);
let s = 1;
for (let i = 0; i < src.length; i++) {
  s = (Math.imul(s, 1103515245) + 12345) >>> 0;
  src[i] = (s / 2 ** 32 - 0.5) * 8;
}
const tok = Int32Array.from({ length: block }, (_, i) => i * 7);
const ctx = Int32Array.from({ length: block }, (_, i) => i >> 6);
const pos = Int32Array.from({ length: block }, (_, i) => i & 63);

const root = await fs.mkdtemp(path.join(opt('dir', os.tmpdir()), 'sae-bench-shards-'));
const meta = (dtype) => ({ model: 'bench', revision: 'r', hook: 'h', d, ctx: 64, dtype, preprocessing: 'center_unit_norm', tokenizer: 't', dataset: 'bench' });

async function write(dir, dtype) {
  const w = await ShardWriter.create(dir, meta(dtype), { preprocess: true, overwrite: true });
  const t = performance.now();
  for (let done = 0; done < rows; done += block) {
    const k = Math.min(block, rows - done);
    await w.append(src.subarray(0, k * d), k, tok, ctx, pos);
  }
  await w.close();
  return (performance.now() - t) / 1000;
}

async function readAll(dir) {
  const set = await openShards(dir);
  const t = performance.now();
  let n = 0;
  for (let fi = 0; fi < set.files.length; fi++) {
    let start = 0;
    for (const g of set.files[fi].rowGroups) {
      n += (await readRows(set, fi, start, start + g)).n;
      start += g;
    }
  }
  if (n !== rows) throw new Error(`read ${n} rows, wrote ${rows}`);
  return (performance.now() - t) / 1000;
}

async function stream(dir) {
  const set = await openShards(dir);
  const g = set.files[0].rowGroups[0];
  const st = new BatchStream(set, { batchSize: g, windowRows: g, seed: 0, loop: false });
  const out = new Float32Array(g * d);
  const t = performance.now();
  let n = 0;
  for (let k; (k = await st.nextRows(out)); ) n += k;
  if (n !== rows) throw new Error(`streamed ${n} rows, wrote ${rows}`);
  return (performance.now() - t) / 1000;
}

const results = [];
try {
  for (const dtype of dtypes) {
    const dir = path.join(root, dtype);
    let tw = Infinity;
    let tr = Infinity;
    let ts = Infinity;
    for (let r = 0; r < reps; r++) tw = Math.min(tw, await write(dir, dtype));
    let bytes = 0;
    for (const f of await fs.readdir(dir)) if (f.endsWith('.parquet')) bytes += (await fs.stat(path.join(dir, f))).size;
    for (let r = 0; r < reps; r++) tr = Math.min(tr, await readAll(dir));
    for (let r = 0; r < reps; r++) ts = Math.min(ts, await stream(dir));
    const row = (what, sec) => ({ dtype, what, rowsPerSec: Math.round(rows / sec), mbPerSec: Math.round(bytes / sec / 1e6) });
    results.push(row('write', tw), row('readRows', tr), row('BatchStream', ts));
  }
} finally {
  await fs.rm(root, { recursive: true, force: true });
}

if (json) {
  console.log(JSON.stringify({ d, rows, dist, results }, null, 2));
} else {
  console.log(`d=${d}, ${rows} rows, center_unit_norm, ${dist}`);
  console.log('| dtype | path | rows/s | MB/s |\n|---|---|---|---|');
  for (const r of results) console.log(`| ${r.dtype} | ${r.what} | ${r.rowsPerSec.toLocaleString('en-US')} | ${r.mbPerSec} |`);
}
