#!/usr/bin/env node
// Benchmark of `sae shuffle` (issue 9): rows/s of each pass and peak RSS against the --memory
// budget, for GPT-2-shaped rows (d = 768) in each storage dtype. The input is written once per
// dtype; every shuffle runs in its own child process so that its peak RSS is its own, and a
// child that only loads the package gives the baseline RSS. Needs `npm run build`. See docs/performance.md, "Shuffle".
import { spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const dist = path.join(path.resolve(here, '..'), 'dist');
const load = (p) => import(pathToFileURL(path.join(dist, p)).href);

function parseArgs(argv) {
  const o = { rows: 131072, d: 768, memory: '64MB,256MB', dtypes: 'float32,float16', shardRows: 16384, dir: null, json: false, child: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--rows') o.rows = Number(next());
    else if (a === '--d') o.d = Number(next());
    else if (a === '--memory') o.memory = next();
    else if (a === '--dtypes') o.dtypes = next();
    else if (a === '--shard-rows') o.shardRows = Number(next());
    else if (a === '--dir') o.dir = next();
    else if (a === '--json') o.json = true;
    else if (a === '--child') o.child = JSON.parse(next());
    else if (a === '--help' || a === '-h') {
      console.log('usage: node bench/shuffle.mjs [--rows N] [--d D] [--memory 64MB,256MB] [--dtypes float32,float16,bfloat16] [--shard-rows N] [--dir SCRATCH] [--json]');
      process.exit(0);
    } else throw new Error(`unknown argument ${a}`);
  }
  return o;
}

async function child(job) {
  const rssMiB = () => process.resourceUsage().maxRSS / 1024;
  if (job.baseline) {
    await load('pipeline/shuffle/shuffle.js');
    await load('store/row-reader.js');
    process.stdout.write(JSON.stringify({ rss: rssMiB() }) + '\n');
    return;
  }
  const { shuffleShards } = await load('pipeline/shuffle/shuffle.js');
  const { parseBytes } = await load('pipeline/shuffle/plan.js');
  const t0 = performance.now();
  let tGather = null;
  const progress = {
    line(text) {
      // The line for the last input file dealt marks the end of pass 1.
      const m = /dealt .* \((\d+)\/(\d+) files/.exec(text);
      if (m && m[1] === m[2]) tGather = performance.now();
    },
    tick() {},
  };
  const s = await shuffleShards({ data: job.data, out: job.out, memory: parseBytes(job.memory), seed: 1, shardRows: job.shardRows, progress });
  const t1 = performance.now();
  process.stdout.write(
    JSON.stringify({ rows: s.rows, buckets: s.buckets, arenaBytes: s.arenaBytes, total: (t1 - t0) / 1000, gatherStart: tGather === null ? null : (tGather - t0) / 1000, rss: rssMiB() }) + '\n',
  );
}

async function writeInput(dir, rows, d, dtype, shardRows) {
  const { ShardWriter } = await load('store/shard-writer.js');
  const w = await ShardWriter.create(dir, {
    model: 'bench', revision: '', hook: 'blocks.6.hook_resid_pre', d, ctx: 64, dtype,
    preprocessing: 'center_unit_norm', tokenizer: 'none', dataset: `bench rows=${rows}`,
  }, { rowsPerShard: shardRows, preprocess: true, overwrite: true });
  const chunk = 4096;
  const x = new Float32Array(chunk * d);
  let s = 1;
  for (let done = 0; done < rows; done += chunk) {
    const n = Math.min(chunk, rows - done);
    for (let i = 0; i < n * d; i++) {
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
      x[i] = s / 2 ** 32 - 0.5;
    }
    const tok = Int32Array.from({ length: n }, (_, i) => done + i);
    await w.append(x.subarray(0, n * d), n, tok, tok.map((t) => t >> 6), tok.map((t) => t & 63));
  }
  await w.close();
}

function run(job) {
  const r = spawnSync(process.execPath, ['--max-old-space-size=4096', fileURLToPath(import.meta.url), '--child', JSON.stringify(job)], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`child failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop());
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  if (o.child) return child(o.child);
  const dir = o.dir ?? (await fs.mkdtemp(path.join(os.tmpdir(), 'sae-bench-shuffle-')));
  const baseline = run({ baseline: true }).rss;
  const results = [];
  try {
    for (const dtype of o.dtypes.split(',')) {
      const data = path.join(dir, `in-${dtype}`);
      const tw = performance.now();
      await writeInput(data, o.rows, o.d, dtype, o.shardRows);
      const writeSecs = (performance.now() - tw) / 1000;
      let bytes = 0;
      for (const f of await fs.readdir(data)) bytes += (await fs.stat(path.join(data, f))).size;
      for (const memory of o.memory.split(',')) {
        const out = path.join(dir, `out-${dtype}-${memory}`);
        await fs.rm(out, { recursive: true, force: true });
        const r = run({ data, out, memory, shardRows: o.shardRows });
        await fs.rm(out, { recursive: true, force: true });
        const budgetMiB = r.arenaBytes / 2 ** 20;
        results.push({
          dtype, d: o.d, rows: r.rows, inputMiB: bytes / 2 ** 20, memory, buckets: r.buckets, bufferMiB: budgetMiB,
          writeRowsPerSec: o.rows / writeSecs,
          scatterRowsPerSec: r.gatherStart ? r.rows / r.gatherStart : null,
          gatherRowsPerSec: r.gatherStart ? r.rows / (r.total - r.gatherStart) : null,
          rowsPerSec: r.rows / r.total, seconds: r.total, peakRssMiB: r.rss, baselineRssMiB: baseline,
          overBudgetMiB: r.rss - baseline - budgetMiB,
        });
      }
      await fs.rm(data, { recursive: true, force: true });
    }
  } finally {
    if (!o.dir) await fs.rm(dir, { recursive: true, force: true });
  }
  if (o.json) {
    process.stdout.write(JSON.stringify(results, null, 2) + '\n');
    return;
  }
  const f0 = (v) => (v === null ? '–' : Math.round(v).toLocaleString('en-US'));
  console.log(`node ${process.version}, ${os.cpus()[0]?.model ?? 'cpu'} ×${os.cpus().length}; d=${o.d}, ${o.rows} rows, input shards of ${o.shardRows} rows; baseline RSS ${baseline.toFixed(0)} MiB\n`);
  console.log('| dtype | input MiB | --memory | buckets | buffer MiB | pass 1 rows/s | pass 2 rows/s | total rows/s | s | peak RSS MiB | RSS − baseline − buffer MiB |');
  console.log('|---|---|---|---|---|---|---|---|---|---|---|');
  for (const r of results) {
    console.log(`| ${r.dtype} | ${r.inputMiB.toFixed(0)} | ${r.memory} | ${r.buckets} | ${r.bufferMiB.toFixed(1)} | ${f0(r.scatterRowsPerSec)} | ${f0(r.gatherRowsPerSec)} | ${f0(r.rowsPerSec)} | ${r.seconds.toFixed(1)} | ${r.peakRssMiB.toFixed(0)} | ${r.overBudgetMiB.toFixed(0)} |`);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
