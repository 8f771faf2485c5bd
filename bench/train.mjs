#!/usr/bin/env node
// Training-step benchmark of the native kernels (issue 3): for each shape and activation, the
// floor (one encoder GEMM B×d by d×F with our SGEMM), the median Trainer step, tokens/s, where the
// step goes, and peak RSS against the memory the run needs; plus one step of the reference kernels.
// Prints a markdown table to stdout. Needs the compiled package (`npm run build`) and the addon
// (build/sae_kernels.node). Every configuration runs in its own child process so that its peak RSS
// is its own. See bench/README.md. `--platform-report` prints what a user on a new platform (arm64
// Linux, macOS) should send back: bench/platform-report.mjs. `--precision bf16` (issue 18) runs the
// encoder GEMM in bf16 (docs/precision.md) on the best bf16 unit (SAE_BF16 picks one) and adds the
// fp32 step of the same shape for the speed-up; `--torch PATH` runs ../shared/tools/torch_sae_bench.py
// on the same shapes (bf16-autocast under --precision bf16) in the same session.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..');
// SAE_BENCH_DIST: benchmark another build of the package (e.g. to try a change to the trainer)
const dist = process.env.SAE_BENCH_DIST ? path.resolve(process.env.SAE_BENCH_DIST) : path.join(root, 'dist');
const d = 768;
const K = 32;

function parseArgs(argv) {
  const o = {
    shapes: '6144x1536,24576x1536,24576x4096',
    acts: 'topk,mutual,mutual+aux,feature,relu',
    steps: 5,
    warmup: 2,
    reference: true,
    child: null,
    json: false,
    platformReport: false,
    ghz: null,
    peak: null,
    precision: 'fp32',
    torch: null,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--shapes') o.shapes = next();
    else if (a === '--acts') o.acts = next();
    else if (a === '--steps') o.steps = Number(next());
    else if (a === '--warmup') o.warmup = Number(next());
    else if (a === '--no-reference') o.reference = false;
    else if (a === '--quick') {
      o.shapes = '6144x1536';
      o.steps = 3;
      o.warmup = 1;
      o.reference = false;
    } else if (a === '--json') o.json = true;
    else if (a === '--platform-report') o.platformReport = true;
    else if (a === '--ghz') o.ghz = Number(next());
    else if (a === '--precision') o.precision = next();
    else if (a === '--torch') o.torch = next();
    else if (a === '--peak') o.peak = Number(next());
    else if (a === '--child') o.child = JSON.parse(next());
    else if (a === '--help' || a === '-h') {
      console.log('usage: node bench/train.mjs [--shapes FxB,...] [--acts topk,mutual,mutual+aux,feature,feature-uniform,relu] [--steps N] [--warmup N] [--no-reference] [--quick] [--precision fp32|bf16] [--torch path/to/torch_sae_bench.py] [--json]');
      console.log('       node bench/train.mjs --platform-report [--ghz CLOCK] [--peak FLOP_PER_CYCLE_PER_CORE] [--json]   (the figures to send back from a new platform)');
      process.exit(0);
    } else throw new Error(`unknown argument ${a}`);
  }
  return o;
}

// ------------------------------------------------------------------------------------ child

/** Random normal rows scaled to unit L2 norm (as tools/torch_sae_bench.py feeds torch). */
function batch(seed, B) {
  let s = (seed * 2654435761) >>> 0 || 1;
  const u = () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return (s + 0.5) / 4294967296;
  };
  const x = new Float32Array(B * d);
  for (let b = 0; b < B; b++) {
    let nn = 0;
    for (let i = 0; i < d; i++) {
      const v = Math.sqrt(-2 * Math.log(u())) * Math.cos(2 * Math.PI * u());
      x[b * d + i] = v;
      nn += v * v;
    }
    const inv = 1 / Math.sqrt(nn);
    for (let i = 0; i < d; i++) x[b * d + i] *= inv;
  }
  return x;
}

const median = (a) => {
  const s = [...a].sort((x, y) => x - y);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

/** Per-kernel wall time, to split the step into encode / sparse backward / optimiser / the rest. */
function timed(kernels, acc) {
  const out = Object.create(kernels);
  for (const name of ['encodeSelect', 'decode', 'decodeBackward', 'encoderBackward', 'optimizerStep']) {
    const f = kernels[name].bind(kernels);
    out[name] = (...args) => {
      const t0 = performance.now();
      const r = f(...args);
      acc[name] = (acc[name] ?? 0) + performance.now() - t0;
      return r;
    };
  }
  return out;
}

async function child(c) {
  const imp = (p) => import(pathToFileURL(path.join(dist, p)).href);
  const { createNativeKernels, nativeKernelsFor, nativeExtras, nativeInfo } = await imp('kernels/native.js');
  const { createReferenceKernels } = await imp('kernels/reference.js');
  const { resolveConfig } = await imp('sae/config.js');
  const { Trainer } = await imp('sae/trainer.js');
  const { F, B, act, steps, warmup, kernels, precision = 'fp32' } = c;
  const aux = act === 'mutual+aux';
  const uniform = act === 'feature-uniform';
  const activation = aux ? 'mutual' : uniform ? 'feature' : act;
  // aux off unless asked for: the torch bench has none. With aux on, the dead window is one batch
  // (features silent for a whole batch count as dead) and ranks (hence the dying set of
  // aux_zipf) are recomputed every 3 steps, so both aux selections are active while timing.
  const cfg = resolveConfig({
    activation,
    k: K,
    width: F,
    batchSize: B,
    steps: 100_000,
    seed: 1,
    auxKCoef: aux ? 1 / 32 : 0,
    auxZipfCoef: aux ? 1 / 32 : 0,
    rankInterval: aux ? 3 : 100,
    lrDecay: 'none',
    capacities: uniform ? 'uniform' : 'zipf',
  });
  const acc = {};
  const base = kernels === 'reference' ? createReferenceKernels : precision === 'bf16' ? nativeKernelsFor(null, { precision }) : createNativeKernels;
  const trainer = new Trainer({ cfg, d, F, deadWindow: aux ? B : 1e12, kernels: (shape) => timed(base(shape), acc) });
  const xs = [batch(1, B), batch(2, B), batch(3, B)];
  trainer.init(xs[0]);
  const stepMs = [];
  const parts = [];
  let auxNnz = [];
  let l0 = 0;
  for (let s = 0; s < warmup + steps; s++) {
    for (const k of Object.keys(acc)) acc[k] = 0;
    const t0 = performance.now();
    const r = trainer.trainStep(xs[s % xs.length]);
    const ms = performance.now() - t0;
    if (s >= warmup) {
      stepMs.push(ms);
      parts.push({ ...acc, total: ms });
      l0 = r.l0;
    }
  }
  // aux sizes of the last step (the workspace is the trainer's; read it for the report only)
  auxNnz = (trainer.ws?.enc?.aux ?? []).map((a) => a.nnz);
  const res = { F, B, act, kernels, precision, name: trainer.kernels.name, steps: stepMs.length, stepMs, l0, auxNnz };
  const mid = stepMs.indexOf(median(stepMs)) >= 0 ? stepMs.indexOf(median(stepMs)) : 0;
  const p = parts[mid] ?? parts[0];
  const kernelMs = (names) => names.reduce((s, n) => s + (p[n] ?? 0), 0);
  res.parts = {
    encode: kernelMs(['encodeSelect']),
    sparse: kernelMs(['decode', 'decodeBackward', 'encoderBackward']),
    optimizer: kernelMs(['optimizerStep']),
  };
  res.parts.rest = p.total - res.parts.encode - res.parts.sparse - res.parts.optimizer;
  if (kernels === 'native') {
    // the floor: one encoder GEMM (x − b_dec)·W_enc + b_enc with our SGEMM, z' computed and dropped
    const ext = nativeExtras(trainer.kernels);
    const xc = new Float32Array(B * d);
    const g = [];
    for (let r = 0; r < 7; r++) {
      const t0 = performance.now();
      ext.affinities(trainer.params, xs[r % xs.length], B, xc, null);
      if (r >= 2) g.push(performance.now() - t0);
    }
    res.floorMs = median(g);
    res.info = nativeInfo();
  }
  res.maxRssMiB = process.resourceUsage().maxRSS / 1024;
  // what the run has to hold: params, gradients and Adam m, v (4 copies of 2Fd + F + d floats),
  // plus one batch's buffers (x, xc, x̂, dL/dx̂, aux x̂: 5·B·d floats; codes and dz: 3·nnz words)
  const P = (2 * F * d + F + d) * 4;
  const nnz = B * Math.min(F, activation === 'relu' ? F : K) + auxNnz.reduce((a, b) => a + b, 0);
  res.stateMiB = (4 * P) / 2 ** 20;
  res.batchMiB = (5 * B * d * 4 + 12 * nnz) / 2 ** 20;
  console.log(JSON.stringify(res));
}

// ----------------------------------------------------------------------------------- parent

/**
 * ../shared/tools/torch_sae_bench.py on the same shapes and activations, same precision
 * (bf16-autocast for bf16), OpenBLAS forced to SkylakeX where it misdetects the CPU: its fastest
 * implementation's median step per configuration.
 */
function runTorch(o, shapes, acts) {
  const precision = o.precision === 'bf16' ? 'bf16-autocast' : 'fp32';
  const out = path.join(os.tmpdir(), `sae-torch-bench-${process.pid}.json`);
  const only = [...new Set(acts.map((a) => TORCH_ACT[a]).filter(Boolean))].join(',');
  const args = [o.torch, '--shapes', shapes.map(([F, B]) => `${F}:${B}`).join(','), '--only', only, '--precision', precision, '--no-numpy', '--openblas-core', 'SkylakeX', '--out', out];
  const r = spawnSync('/usr/bin/python3', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  if (r.status !== 0) {
    console.error(`bench: torch reference failed (exit ${r.status})`);
    return null;
  }
  return { precision, rows: parseTorchRows(r.stdout, acts) };
}

// torch_sae_bench.py's names: BatchTopK is Mutual Choice (one top-M over the batch)
const TORCH_ACT = { topk: 'topk', mutual: 'batchtopk', 'mutual+aux': null, feature: 'featurechoice', 'feature-uniform': null, relu: 'relu' };

/** Its progress lines ("topk fused F=24576 B=1536:  787.1 ms/step …"): the fastest implementation per configuration. */
function parseTorchRows(stdout, acts) {
  const best = new Map();
  for (const m of stdout.matchAll(/^(\w+)\s+(\w+)\s+F=\s*(\d+)\s+B=\s*(\d+):\s+([\d.]+) ms\/step/gm)) {
    const key = `${m[1]} ${m[3]} ${m[4]}`;
    const ms = Number(m[5]);
    if (!best.has(key) || best.get(key).ms > ms) best.set(key, { torchAct: m[1], impl: m[2], F: Number(m[3]), B: Number(m[4]), ms });
  }
  const rows = [];
  for (const act of acts) {
    for (const r of best.values()) if (TORCH_ACT[act] === r.torchAct) rows.push({ ...r, act });
  }
  return rows;
}

function runChild(c) {
  const r = spawnSync(process.execPath, [fileURLToPath(import.meta.url), '--child', JSON.stringify(c)], {
    encoding: 'utf8',
    maxBuffer: 1 << 24,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  if (r.status !== 0) throw new Error(`configuration ${JSON.stringify(c)} failed (exit ${r.status})`);
  const line = r.stdout.trim().split('\n').pop();
  return JSON.parse(line);
}

const fmt = (x, digits = 1) => (x === undefined || x === null || Number.isNaN(x) ? 'n/a' : x.toFixed(digits));
const int = (x) => Math.round(x).toLocaleString('en-US');

async function main() {
  const o = parseArgs(process.argv.slice(2));
  if (o.child) return child(o.child);
  if (o.platformReport) return (await import('./platform-report.mjs')).platformReport(o, { dist, runChild, median, d });
  if (!existsSync(path.join(dist, 'kernels', 'native.js'))) {
    console.error('bench: dist/ is missing; run `npm run build` first');
    process.exit(1);
  }
  const { nativeAvailable, nativeLoadError, nativeInfo } = await import(pathToFileURL(path.join(dist, 'kernels', 'native.js')).href);
  if (!nativeAvailable()) {
    console.error(`bench: native kernels unavailable (${nativeLoadError()}); run \`node scripts/build-native.mjs\``);
    process.exit(1);
  }
  const info = nativeInfo();
  const shapes = o.shapes.split(',').map((s) => s.split('x').map(Number));
  const acts = o.acts.split(',');
  const rows = [];
  const started = new Date();
  for (const [F, B] of shapes) {
    for (const act of acts) {
      const r = runChild({ F, B, act, steps: o.steps, warmup: o.warmup, kernels: 'native', precision: o.precision });
      if (o.precision !== 'fp32') r.fp32 = runChild({ F, B, act, steps: o.steps, warmup: o.warmup, kernels: 'native' });
      rows.push(r);
      console.error(`bench: ${act} F=${F} B=${B} ${r.name}: ${fmt(median(r.stepMs))} ms/step, floor ${fmt(r.floorMs)} ms` + (r.fp32 ? `; fp32 ${fmt(median(r.fp32.stepMs))} ms/step` : ''));
    }
  }
  let torch = null;
  if (o.torch) torch = runTorch(o, shapes, acts);
  let ref = null;
  if (o.reference) {
    ref = runChild({ F: 24576, B: 1536, act: 'topk', steps: 1, warmup: 0, kernels: 'reference' });
    console.error(`bench: reference topk F=24576 B=1536: ${fmt(ref.stepMs[0])} ms/step`);
  }
  if (o.json) {
    console.log(JSON.stringify({ rows, ref, torch }, null, 2));
    return;
  }
  const cpu = os.cpus()[0]?.model ?? 'unknown CPU';
  console.log(`# sae training-step benchmark (native kernels)\n`);
  console.log(`${started.toISOString()} · ${cpu}, ${os.cpus().length} CPUs · node ${process.version} · ${info.threads} threads · ${info.isa} kernels · d=${d}, k=${K}, ${o.precision === 'fp32' ? 'float32' : `precision ${o.precision} (${rows[0]?.name})`}`);
  console.log(`median of ${o.steps} steps after ${o.warmup} warm-up steps; floor = one encoder GEMM (B×d by d×F) with the same SGEMM, median of 5\n`);
  console.log('| activation | F | B | floor ms | GFLOP/s | step ms (min–max) | step / floor | tokens/s | encode | sparse fwd+bwd | optimizer | rest (JS) | L0 | aux nnz | peak RSS MiB | state + batch MiB | RSS / (state + batch) |');
  console.log('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|');
  for (const r of rows) {
    const med = median(r.stepMs);
    const gf = (2 * r.B * d * r.F) / (r.floorMs * 1e6);
    const need = r.stateMiB + r.batchMiB;
    console.log(
      `| ${r.act} | ${r.F} | ${r.B} | ${fmt(r.floorMs)} | ${fmt(gf, 0)} | ${fmt(med)} (${fmt(Math.min(...r.stepMs))}–${fmt(Math.max(...r.stepMs))}) | ${fmt(med / r.floorMs, 2)} | ${int(r.B / (med / 1000))} | ${fmt(r.parts.encode)} | ${fmt(r.parts.sparse)} | ${fmt(r.parts.optimizer)} | ${fmt(r.parts.rest)} | ${fmt(r.l0, 1)} | ${r.auxNnz.length ? r.auxNnz.join(' + ') : '–'} | ${int(r.maxRssMiB)} | ${int(need)} | ${fmt(r.maxRssMiB / need, 2)} |`,
    );
  }
  if (o.precision !== 'fp32') {
    console.log(`\n| activation | F | B | fp32 step ms | ${o.precision} step ms | speed-up | fp32 floor ms | ${o.precision} floor ms | floor speed-up |` + (torch ? ` torch ${torch.precision} step ms | ours / torch |` : ''));
    console.log('|---|---|---|---|---|---|---|---|---|' + (torch ? '---|---|' : ''));
    for (const r of rows) {
      const a = median(r.fp32.stepMs), b = median(r.stepMs);
      const t = torch?.rows.find((x) => x.act === r.act && x.F === r.F && x.B === r.B);
      console.log(`| ${r.act} | ${r.F} | ${r.B} | ${fmt(a)} | ${fmt(b)} | ${fmt(a / b, 2)}× | ${fmt(r.fp32.floorMs)} | ${fmt(r.floorMs)} | ${fmt(r.fp32.floorMs / r.floorMs, 2)}× |` + (torch ? (t ? ` ${fmt(t.ms)} | ${fmt(t.ms / b, 2)}× |` : ' – | – |') : ''));
    }
  }
  if (ref) {
    const nat = rows.find((r) => r.act === 'topk' && r.F === 24576 && r.B === 1536);
    console.log(`\nReference kernels (plain TypeScript), topk F=24576 B=1536, one step: ${fmt(ref.stepMs[0] / 1000, 1)} s` + (nat ? ` (${fmt(ref.stepMs[0] / median(nat.stepMs), 0)}× the native step)` : '') + `; peak RSS ${int(ref.maxRssMiB)} MiB.`);
  }
  console.log('\nencode = encodeSelect (GEMM + selection); sparse = decode, decodeBackward, encoderBackward (main and aux); optimizer = optimizerStep (decoder-gradient projection, clipping norm, AdamW, renormalisation); rest = the trainer\'s own JS (loss loops, statistics, batch variance).');
  console.log('state = params + gradients + Adam m and v; batch = x, xc, x̂, dL/dx̂, aux x̂ and the codes.');
}

main().catch((e) => {
  console.error(`bench: ${e.message}`);
  process.exit(1);
});
