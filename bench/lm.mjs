#!/usr/bin/env node
// Host LM forward benchmark (issue 8): tokens/s of a GPT-2-small- and a Pythia-70m-shaped forward
// with random weights, composed from `LmKernels` calls, for the two workloads of the project —
// the harvest (embeddings + blocks up to the hooked layer: blocks.L.hook_resid_pre) and
// splice-eval's full pass (every block, final LayerNorm, unembedding, mean next-token
// cross-entropy). Reports effective GFLOP/s of the linear layers against the measured peak of the
// same GEMM, and memory after every batch. Optionally runs the PyTorch reference
// (../shared/tools/torch_lm_bench.py) in the same session. `--precision bf16` (issue 18) runs the
// linear layers in bf16 (docs/precision.md) on the best bf16 unit (SAE_BF16 picks one), passes
// the same precision to PyTorch, and reports % of the unit's peak (AMX: 1,024 FLOP/cycle/core;
// AVX512-BF16: 128; the emulated path's and fp32's: 64, two 16-lane FMA ports) at --ghz.
// Needs `npm run build`. See bench/README.md.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..');
const dist = process.env.SAE_BENCH_DIST ? path.resolve(process.env.SAE_BENCH_DIST) : path.join(root, 'dist');

// The shapes of tools/torch_lm_bench.py (d_model, heads, d_mlp, vocab, rotary fraction, layers).
const ARCHS = {
  gpt2: { d: 768, heads: 12, mlp: 3072, vocab: 50257, rotary: 0, layers: 12, hook: 6, nPositions: 1024 },
  'pythia-70m': { d: 512, heads: 8, mlp: 2048, vocab: 50304, rotary: 0.25, layers: 6, hook: 6, nPositions: 0 },
};

function parseArgs(argv) {
  const o = { archs: 'gpt2,pythia-70m', workloads: 'hook,full', ctx: 64, batch: 32, reps: 5, warmup: 2, kernels: 'native', precision: 'fp32', ghz: null, torch: null, json: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--archs') o.archs = next();
    else if (a === '--workloads') o.workloads = next();
    else if (a === '--ctx') o.ctx = Number(next());
    else if (a === '--batch') o.batch = Number(next());
    else if (a === '--reps') o.reps = Number(next());
    else if (a === '--warmup') o.warmup = Number(next());
    else if (a === '--kernels') o.kernels = next();
    else if (a === '--precision') o.precision = next();
    else if (a === '--ghz') o.ghz = Number(next());
    else if (a === '--torch') o.torch = next();
    else if (a === '--json') o.json = true;
    else if (a === '--help' || a === '-h') {
      console.log('usage: node bench/lm.mjs [--archs gpt2,pythia-70m] [--workloads hook,full] [--ctx 64] [--batch 32] [--reps 5] [--warmup 2] [--kernels native|auto|reference] [--precision fp32|bf16] [--ghz CLOCK] [--torch path/to/torch_lm_bench.py] [--json]');
      process.exit(0);
    } else throw new Error(`unknown argument ${a}`);
  }
  return o;
}

// ------------------------------------------------------------------------------------ model

/** Deterministic N(0, σ²)-ish weights (uniform with the same variance; the values do not matter). */
function filled(n, std, seed) {
  const a = new Float32Array(n);
  let s = seed >>> 0 || 1;
  const k = std * Math.sqrt(3) * 2 / 4294967296;
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    a[i] = (s >>> 0) * k - std * Math.sqrt(3);
  }
  return a;
}

function randomWeights(s, full, seed) {
  const { d, mlp, vocab } = s;
  const layout = s.rotary > 0 ? 'out_in' : 'in_out';  // HF GPT-2's Conv1D vs GPT-NeoX's nn.Linear
  const nBlocks = full ? s.layers : s.hook;
  const ones = new Float32Array(d).fill(1);
  const blocks = [];
  for (let l = 0; l < nBlocks; l++) {
    const z = seed + 100 * l;
    blocks.push({
      ln1: { w: ones, b: filled(d, 0.02, z + 1) },
      ln2: { w: ones, b: filled(d, 0.02, z + 2) },
      Wq: filled(d * d, 0.02, z + 3), Wk: filled(d * d, 0.02, z + 4), Wv: filled(d * d, 0.02, z + 5),
      bq: filled(d, 0.02, z + 6), bk: filled(d, 0.02, z + 7), bv: filled(d, 0.02, z + 8),
      Wo: filled(d * d, 0.02, z + 9), bo: filled(d, 0.02, z + 10),
      Wup: filled(d * mlp, 0.02, z + 11), bup: filled(mlp, 0.02, z + 12),
      Wdown: filled(mlp * d, 0.02, z + 13), bdown: filled(d, 0.02, z + 14),
    });
  }
  return {
    layout,
    wte: filled(vocab * d, 0.02, seed + 1),
    wpe: s.nPositions ? filled(s.nPositions * d, 0.01, seed + 2) : null,
    blocks,
    lnf: { w: ones, b: filled(d, 0.02, seed + 3) },
    // GPT-2 ties the unembedding to wte; GPT-NeoX has its own embed_out [V×d]
    unembed: s.rotary > 0 ? filled(vocab * d, 0.02, seed + 4) : null,
  };
}

/** Every activation buffer of one forward, allocated once for a batch of n = B·T tokens. */
function allocBuffers(s, n, full) {
  const f = (len) => new Float32Array(len);
  return {
    x: f(n * s.d), ln1: f(n * s.d), ln2: f(n * s.d), q: f(n * s.d), k: f(n * s.d), v: f(n * s.d), att: f(n * s.d), o: f(n * s.d),
    h: f(n * s.mlp), m: f(n * s.d), pos: s.nPositions ? f(n * s.d) : null,
    logits: full ? f(n * s.vocab) : null, loss: full ? f(n) : null, targets: full ? new Int32Array(n) : null,
  };
}

/** Linear-layer FLOPs per token of the forward (2·k·m per linear; attention's T² terms not counted). */
function linearFlopsPerToken(s, full) {
  const perBlock = 2 * (4 * s.d * s.d + 2 * s.d * s.mlp);
  return (full ? s.layers : s.hook) * perBlock + (full ? 2 * s.d * s.vocab : 0);
}

/**
 * The forward pass composed from LmKernels calls: embeddings, blocks (GPT-2's sequential residual
 * or GPT-NeoX's parallel residual with rotary), and for the full workload the final LayerNorm,
 * unembedding and mean next-token cross-entropy. Returns the residual stream at the hook (hook
 * workload) or the mean loss. src/lm's model replaces this function once it exists.
 */
function composedForward(K, s, w, buf, ids, B, T, full) {
  const { d, heads } = s;
  const hd = d / heads;
  const n = B * T;
  const { x, ln1, ln2, q, k, v, att, o, h, m } = buf;
  for (let i = 0; i < n; i++) x.set(w.wte.subarray(ids[i] * d, ids[i] * d + d), i * d);
  if (w.wpe) K.add(x, buf.pos, n * d);
  const rotDims = Math.floor(hd * s.rotary);
  for (const b of w.blocks) {
    K.layerNorm(x, n, d, b.ln1.w, b.ln1.b, 1e-5, ln1);
    K.linear(ln1, n, d, b.Wq, d, w.layout, b.bq, q);
    K.linear(ln1, n, d, b.Wk, d, w.layout, b.bk, k);
    K.linear(ln1, n, d, b.Wv, d, w.layout, b.bv, v);
    if (rotDims > 0) {
      K.rotary(q, B, T, heads, hd, rotDims, 10000);
      K.rotary(k, B, T, heads, hd, rotDims, 10000);
    }
    K.attention(q, k, v, B, T, heads, hd, att, null);
    K.linear(att, n, d, b.Wo, d, w.layout, b.bo, o);
    if (s.rotary > 0) {
      // parallel residual: x + attn(ln1(x)) + mlp(ln2(x))
      K.layerNorm(x, n, d, b.ln2.w, b.ln2.b, 1e-5, ln2);
      K.add(x, o, n * d);
    } else {
      K.add(x, o, n * d);
      K.layerNorm(x, n, d, b.ln2.w, b.ln2.b, 1e-5, ln2);
    }
    K.linear(ln2, n, d, b.Wup, s.mlp, w.layout, b.bup, h);
    K.gelu(h, n * s.mlp, s.rotary > 0 ? 'erf' : 'tanh');
    K.linear(h, n, s.mlp, b.Wdown, d, w.layout, b.bdown, m);
    K.add(x, m, n * d);
  }
  if (!full) return x;
  K.layerNorm(x, n, d, w.lnf.w, w.lnf.b, 1e-5, ln1);
  K.linear(ln1, n, d, w.unembed ?? w.wte, s.vocab, 'out_in', null, buf.logits);
  // next-token targets: position t predicts ids[t + 1]; the last position of each context has none
  let sum = 0;
  for (let b = 0; b < B; b++) {
    const r0 = b * T;
    for (let t = 0; t < T - 1; t++) buf.targets[t] = ids[r0 + t + 1];
    K.crossEntropy(buf.logits.subarray(r0 * s.vocab, (r0 + T - 1) * s.vocab), T - 1, s.vocab, buf.targets, buf.loss);
    for (let t = 0; t < T - 1; t++) sum += buf.loss[t];
  }
  return sum / (B * (T - 1));
}

// ------------------------------------------------------------------------------------ runs

const median = (a) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];
const mib = (bytes) => bytes / (1 << 20);

async function benchOne(K, arch, workload, o) {
  const s = ARCHS[arch];
  const full = workload === 'full';
  const B = o.batch, T = o.ctx, n = B * T;
  const w = randomWeights(s, full, 7);
  const buf = allocBuffers(s, n, full);
  if (buf.pos) for (let i = 0; i < n; i++) buf.pos.set(w.wpe.subarray((i % T) * s.d, (i % T + 1) * s.d), i * s.d);
  const ids = new Int32Array(n);
  let seed = 12345;
  const times = [];
  const rss = [];
  let out = null;
  for (let r = 0; r < o.warmup + o.reps; r++) {
    for (let i = 0; i < n; i++) ids[i] = (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) % s.vocab;
    const t0 = performance.now();
    out = composedForward(K, s, w, buf, ids, B, T, full);
    const dt = (performance.now() - t0) / 1e3;
    if (r >= o.warmup) times.push(dt);
    rss.push(mib(process.memoryUsage().rss));
  }
  const med = median(times);
  const flops = linearFlopsPerToken(s, full);
  return {
    arch, workload, B, T, s_per_batch: med, s_min: Math.min(...times), s_max: Math.max(...times),
    tokens_per_s: n / med, mflop_per_token: flops / 1e6, gflops: (flops * n) / med / 1e9,
    rss_first_mib: rss[0], rss_last_mib: rss[rss.length - 1], loss: full ? out : null,
  };
}

/** The GEMM's peak on this machine: the best of several linears at the MLP's shape. */
function gemmPeak(K) {
  const [n, k, m] = [2048, 768, 3072];
  const x = filled(n * k, 1, 3), W = filled(k * m, 0.02, 4), y = new Float32Array(n * m);
  let best = Infinity;
  for (let r = 0; r < 8; r++) {
    const t0 = performance.now();
    K.linear(x, n, k, W, m, 'in_out', null, y);
    best = Math.min(best, (performance.now() - t0) / 1e3);
  }
  return (2 * n * k * m) / best / 1e9;
}

/**
 * The arithmetic peak of the unit the linear layers run on: FLOP/cycle/core × threads × GHz (--ghz,
 * else /proc/cpuinfo's "cpu MHz", a nominal clock: turbo may run above it).
 */
function unitPeakGflops(K, info, o) {
  const unit = K.name.match(/bf16-(\w+)/)?.[1] ?? 'fp32';
  const perCycle = unit === 'amx' ? 1024 : unit === 'avx512bf16' ? 128 : info?.isa === 'avx512' ? 64 : 32;
  let ghz = o.ghz;
  if (!ghz) {
    try {
      const mhz = readFileSync('/proc/cpuinfo', 'utf8').match(/cpu MHz\s*:\s*([\d.]+)/);
      ghz = mhz ? Number(mhz[1]) / 1000 : NaN;
    } catch {
      ghz = NaN;
    }
  }
  const threads = info?.threads ?? 1;
  const gflops = perCycle * threads * ghz;
  return { gflops, what: `${gflops.toFixed(0)} GFLOP/s (${unit}: ${perCycle} FLOP/cycle/core × ${threads} × ${ghz.toFixed(2)} GHz)` };
}

function runTorch(script, arch, workload, o) {
  const env = { ...process.env };
  // OpenBLAS misdetects recent Intel CPUs (AMX) as SSE3 and falls back to 5× slower kernels: force
  // its AVX-512 ones where the CPU has AVX-512, else let it detect
  let avx512 = false;
  try {
    avx512 = /\bavx512f\b/.test(readFileSync('/proc/cpuinfo', 'utf8'));
  } catch {}
  if (avx512) env.OPENBLAS_CORETYPE = 'SkylakeX';
  else delete env.OPENBLAS_CORETYPE;
  const tc = '/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4';
  if (existsSync(tc)) env.LD_PRELOAD = tc;
  const args = [script, '--arch', arch, '--layer', String(ARCHS[arch].hook), '--ctx', String(o.ctx), '--batch', String(o.batch), '--threads', '2', '--precision', o.precision];
  if (workload === 'full') args.push('--full');
  const r = spawnSync('/usr/bin/python3', args, { encoding: 'utf8', env });
  if (r.status !== 0) return { error: (r.stderr || r.stdout).trim().split('\n').pop() };
  return JSON.parse(r.stdout.trim().split('\n').pop());
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const entry = path.join(dist, 'kernels', 'index.js');
  if (!existsSync(entry)) throw new Error(`${entry} missing: run \`npm run build\` first`);
  const { lmKernelFactory } = await import(pathToFileURL(entry).href);
  const { nativeInfo } = await import(pathToFileURL(path.join(dist, 'kernels', 'native.js')).href);
  const K = lmKernelFactory(o.kernels, o.precision);
  const info = nativeInfo();
  const unitPeak = unitPeakGflops(K, info, o);
  // measured before and after the runs, the better kept: on a shared machine one of them may be disturbed
  let peak = K.name.startsWith('native') ? gemmPeak(K) : NaN;
  const rows = [];
  for (const arch of o.archs.split(',')) {
    for (const workload of o.workloads.split(',')) {
      const r = await benchOne(K, arch, workload, o);
      if (o.torch) r.torch = runTorch(o.torch, arch, workload, o);
      rows.push(r);
    }
  }
  if (K.name.startsWith('native')) peak = Math.max(peak, gemmPeak(K));
  if (o.json) {
    console.log(JSON.stringify({ kernels: K.name, precision: o.precision, native: info, gemm_peak_gflops: peak, unit_peak: unitPeak, rows }, null, 2));
    return;
  }
  const f1 = (x) => x.toLocaleString('en-US', { maximumFractionDigits: 0 });
  console.log(`kernels: ${K.name}${info ? ` (${info.isa}, ${info.threads} threads)` : ''}, precision ${o.precision}; GEMM peak (linear 2048×768 by 768×3072, best of 8, before and after): ${peak.toFixed(0)} GFLOP/s; unit peak ${unitPeak.what}; B=${o.batch} contexts of T=${o.ctx}, median of ${o.reps} after ${o.warmup} warm-up\n`);
  console.log('| model | workload | MFLOP/token (linear) | s/batch (min–max) | tokens/s (best) | GFLOP/s (best) | % of GEMM peak (best) | % of unit peak (best) | RSS after first / last batch MiB |' + (o.torch ? ` torch ${o.precision} tokens/s (best) | ours / torch (best / best) |` : ''));
  console.log('|---|---|---|---|---|---|---|---|---|' + (o.torch ? '---|---|' : ''));
  for (const r of rows) {
    const wl = r.workload === 'hook' ? `hook (blocks.${ARCHS[r.arch].hook}.hook_resid_pre)` : 'full (logits + mean CE)';
    const n = r.B * r.T;
    const best = n / r.s_min;
    const bestG = (r.mflop_per_token * best) / 1e3;
    let line = `| ${r.arch} | ${wl} | ${r.mflop_per_token.toFixed(1)} | ${r.s_per_batch.toFixed(3)} (${r.s_min.toFixed(3)}–${r.s_max.toFixed(3)}) | ${f1(r.tokens_per_s)} (${f1(best)}) | ${r.gflops.toFixed(0)} (${bestG.toFixed(0)}) | ${((100 * r.gflops) / peak).toFixed(0)}% (${((100 * bestG) / peak).toFixed(0)}%) | ${((100 * r.gflops) / unitPeak.gflops).toFixed(0)}% (${((100 * bestG) / unitPeak.gflops).toFixed(0)}%) | ${r.rss_first_mib.toFixed(0)} / ${r.rss_last_mib.toFixed(0)} |`;
    if (o.torch) {
      const tb = n / r.torch.s_min;
      line += r.torch.error ? ` ${r.torch.error} | – |` : ` ${f1(r.torch.tokens_per_s)} (${f1(tb)}) | ${(r.tokens_per_s / r.torch.tokens_per_s).toFixed(2)}× (${(best / tb).toFixed(2)}×) |`;
    }
    console.log(line);
  }
}

main().catch((e) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});
