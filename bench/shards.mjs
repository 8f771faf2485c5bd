// Activation shard throughput: ShardWriter and the two readers at d = 768, per storage dtype.
//
//   npm run build:ts && node bench/shards.mjs
//   node bench/shards.mjs --rows 16384 --dtypes float32 --dist /path/to/another/build/dist
//   node bench/shards.mjs --prep none     # the writer without preprocessing
//
// Write: rows appended in blocks of 4096 with center_unit_norm applied by the writer (what
// `sae harvest` does; --prep none|center_unit_norm), including the fsync and rename of every
// shard and the manifest.
// Read: readRows over every row group with all columns (what `sae shuffle` does) and a
// BatchStream with a window of one row group (what training does: activations only).
// MB/s counts the bytes of the shard files. Each figure is the best of --reps runs, by wall
// time; "rows/CPU-s" divides by the process's CPU time instead (all threads), which moves less
// when the machine is shared.
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
const prep = opt('prep', 'center_unit_norm');

const load = async (file) => import(pathToFileURL(path.join(dist, file)).href);
const { ShardWriter } = await load('store/shard-writer.js');
const { openShards } = await load('store/shard-set.js');
const { readRows } = await load('store/row-reader.js');
const { BatchStream } = await load('stream/batch-stream.js');

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
const meta = (dtype) => ({ model: 'bench', revision: 'r', hook: 'h', d, ctx: 64, dtype, preprocessing: prep, tokenizer: 't', dataset: 'bench' });

async function write(dir, dtype) {
  const w = await ShardWriter.create(dir, meta(dtype), { preprocess: true, overwrite: true });
  const t = clock();
  for (let done = 0; done < rows; done += block) {
    const k = Math.min(block, rows - done);
    await w.append(src.subarray(0, k * d), k, tok, ctx, pos);
  }
  await w.close();
  return t.stop();
}

/** Wall and CPU seconds since the call. */
function clock() {
  const w = performance.now();
  const c = process.cpuUsage();
  return {
    stop() {
      const u = process.cpuUsage(c);
      return { wall: (performance.now() - w) / 1000, cpu: (u.user + u.system) / 1e6 };
    },
  };
}

const best = (a, b) => ({ wall: Math.min(a.wall, b.wall), cpu: Math.min(a.cpu, b.cpu) });

async function readAll(dir) {
  const set = await openShards(dir);
  const t = clock();
  let n = 0;
  for (let fi = 0; fi < set.files.length; fi++) {
    let start = 0;
    for (const g of set.files[fi].rowGroups) {
      n += (await readRows(set, fi, start, start + g)).n;
      start += g;
    }
  }
  if (n !== rows) throw new Error(`read ${n} rows, wrote ${rows}`);
  return t.stop();
}

async function stream(dir) {
  const set = await openShards(dir);
  const g = set.files[0].rowGroups[0];
  const st = new BatchStream(set, { batchSize: g, windowRows: g, seed: 0, loop: false });
  const out = new Float32Array(g * d);
  const t = clock();
  let n = 0;
  for (let k; (k = await st.nextRows(out)); ) n += k;
  if (n !== rows) throw new Error(`streamed ${n} rows, wrote ${rows}`);
  return t.stop();
}

const results = [];
try {
  for (const dtype of dtypes) {
    const dir = path.join(root, dtype);
    const none = { wall: Infinity, cpu: Infinity };
    let tw = none;
    let tr = none;
    let ts = none;
    for (let r = 0; r < reps; r++) tw = best(tw, await write(dir, dtype));
    let bytes = 0;
    for (const f of await fs.readdir(dir)) if (f.endsWith('.parquet')) bytes += (await fs.stat(path.join(dir, f))).size;
    for (let r = 0; r < reps; r++) tr = best(tr, await readAll(dir));
    for (let r = 0; r < reps; r++) ts = best(ts, await stream(dir));
    const row = (what, t) => ({ dtype, what, rowsPerSec: Math.round(rows / t.wall), mbPerSec: Math.round(bytes / t.wall / 1e6), rowsPerCpuSec: Math.round(rows / t.cpu) });
    results.push(row('write', tw), row('readRows', tr), row('BatchStream', ts));
  }
} finally {
  await fs.rm(root, { recursive: true, force: true });
}

if (json) {
  console.log(JSON.stringify({ d, rows, prep, dist, results }, null, 2));
} else {
  console.log(`d=${d}, ${rows} rows, preprocessing ${prep}, ${dist}`);
  console.log('| dtype | path | rows/s | MB/s | rows/CPU-s |\n|---|---|---|---|---|');
  const f = (x) => x.toLocaleString('en-US');
  for (const r of results) console.log(`| ${r.dtype} | ${r.what} | ${f(r.rowsPerSec)} | ${r.mbPerSec} | ${f(r.rowsPerCpuSec)} |`);
}
