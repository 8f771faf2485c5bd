#!/usr/bin/env node
// bf16 accuracy on a real (trained) LM (issue 18 part 6): fixtures/hf-tiny/gpt2-brown (GPT-2,
// 4 layers, d 192, trained on Brown's train split) run on Brown's held-out split with the native
// LM kernels in fp32 and in bf16 (docs/precision.md: the linear layers' and the unembedding's
// operands rounded to bf16, sums in fp32). Reports, over the same held-out contexts:
//   1. per hook, the relative error of the bf16 activations, ‖a_bf16 − a_fp32‖ / ‖a_fp32‖ per
//      token (mean and max over tokens) and over all tokens at once; the logits too;
//   2. clean next-token CE in fp32 and bf16 and their difference (positions as splice-eval counts
//      them: special tokens left out), with the per-token |ΔCE|;
//   3. a TopK SAE trained in fp32 on fp32 activations of the middle hook (library harvest → train,
//      into a temporary folder), spliced back with the LM in fp32 and in bf16: loss recovered and
//      its difference: LM and encoder both bf16 (what splice-eval at bf16 runs), and each alone
//      (the SAE reconstructed through splice-eval's reconstructOverride with the other precision's
//      kernels, since splice-eval runs the SAE at the model's precision). With --full-bf16 (and a TrainConfig that has `precision`), also the all-bf16
//      pipeline: harvest, train and splice in bf16.
// Needs `npm run build` (dist/ and build/sae_kernels.node).
// Usage: node bench/bf16-accuracy.mjs [--tokens 40000] [--ctx 64] [--batch 16] [--hook blocks.2.hook_resid_pre]
//        [--train-tokens 262144] [--steps 600] [--width 1536] [--k 16] [--sae-batch 1024] [--full-bf16] [--json]
import { promises as fs, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const load = (p) => import(pathToFileURL(path.join(root, 'dist', p)).href);
const { HookedTransformer } = await load('lm/model.js');
const { loadTokenizer } = await load('lm/tokenizer.js');
const { kernelFactory, lmKernelFactory } = await load('kernels/index.js');
const { nativeAvailable, nativeInfo, nativeLoadError } = await load('kernels/native.js');
const { openCorpus } = await load('corpus/corpus.js');
const { HeldOutContexts } = await load('eval/splice-contexts.js');
const { spliceEval } = await load('eval/splice.js');
const { harvest } = await load('pipeline/harvest.js');
const { train } = await load('pipeline/train/train.js');
const { openSae } = await load('sae/sae.js');
const { DEFAULTS } = await load('sae/config.js');
const { preprocessRows } = await load('store/preprocess.js');
const { allocCodes } = await load('kernels/selection.js');

const argv = process.argv.slice(2);
const args = Object.fromEntries(argv.map((a, i, all) => (a.startsWith('--') ? [a.slice(2), all[i + 1]?.startsWith('--') ? true : (all[i + 1] ?? true)] : null)).filter(Boolean));
const tokens = Number(args.tokens ?? 40_000);
const ctx = Number(args.ctx ?? 64);
const batch = Number(args.batch ?? 16);
const hook = args.hook ?? 'blocks.2.hook_resid_pre';
const trainTokens = Number(args['train-tokens'] ?? 262_144);
const steps = Number(args.steps ?? 600);
const width = Number(args.width ?? 1536);
const k = Number(args.k ?? 16);
const saeBatch = Number(args['sae-batch'] ?? 1024);
const fullBf16 = !!args['full-bf16'];
const modelDir = path.join(root, 'fixtures', 'hf-tiny', 'gpt2-brown');

if (!nativeAvailable()) {
  console.error(`native kernels unavailable (${nativeLoadError()}): build them with node scripts/build-native.mjs`);
  process.exit(1);
}
const tStart = performance.now();
const secsSince = (t) => ((performance.now() - t) / 1000).toFixed(1);

// ---- the machine
const cpuinfo = (() => {
  try {
    return readFileSync('/proc/cpuinfo', 'utf8');
  } catch {
    return '';
  }
})();
const cpuModel = /^model name\s*:\s*(.*)$/m.exec(cpuinfo)?.[1] ?? os.cpus()[0]?.model ?? 'unknown';
const cpuFlags = new Set((/^flags\s*:\s*(.*)$/m.exec(cpuinfo)?.[1] ?? '').split(/\s+/));
const info = nativeInfo();
const bf16Flags = ['avx512_bf16', 'amx_bf16', 'amx_tile'].filter((f) => cpuFlags.has(f));

// ---- the two models (the same weights, two kernel sets)
const m32 = await HookedTransformer.load(modelDir, lmKernelFactory('native'));
const m16 = await HookedTransformer.load(modelDir, lmKernelFactory('native', 'bf16'));
const tokenizer = await loadTokenizer(modelDir);
const cfg = m32.cfg;
const d = cfg.dModel;
const V = cfg.vocab;
const heldout = () => openCorpus({ brown: 'heldout' });

// ---- 1 and 2: activations and clean CE on the same held-out contexts
const hooks = [];
for (let L = 0; L < cfg.nLayers; L++) hooks.push(`blocks.${L}.hook_resid_pre`, `blocks.${L}.hook_attn_out`, `blocks.${L}.hook_resid_mid`, `blocks.${L}.hook_mlp_out`, `blocks.${L}.hook_resid_post`);
hooks.push('ln_final.hook_normalized');
const err = Object.fromEntries([...hooks, 'logits'].map((h) => [h, { sumRel: 0, maxRel: 0, n: 0, dd: 0, aa: 0 }]));
const ce = { n: 0, s32: 0, s16: 0, absDiff: 0, maxAbsDiff: 0 };
let maxAbsLogit = 0;
let maxAbsDLogit = 0;

/** Per-row relative errors of b against a ([n×w]), into acc. */
function accumulate(acc, a, b, n, w) {
  for (let r = 0; r < n; r++) {
    let dd = 0;
    let aa = 0;
    for (let j = r * w, e = j + w; j < e; j++) {
      const diff = b[j] - a[j];
      dd += diff * diff;
      aa += a[j] * a[j];
    }
    const rel = aa > 0 ? Math.sqrt(dd / aa) : dd > 0 ? Infinity : 0;
    acc.sumRel += rel;
    if (rel > acc.maxRel) acc.maxRel = rel;
    acc.n++;
    acc.dd += dd;
    acc.aa += aa;
  }
}

/** Next-token CE of one row of logits. */
function rowCe(logits, o, target) {
  let m = -Infinity;
  for (let v = 0; v < V; v++) if (logits[o + v] > m) m = logits[o + v];
  let s = 0;
  for (let v = 0; v < V; v++) s += Math.exp(logits[o + v] - m);
  return m + Math.log(s) - logits[o + target];
}

const t1 = performance.now();
{
  const texts = new HeldOutContexts(await heldout(), tokenizer, ctx, batch, false);
  const Tr = ctx - 1;
  let counted = 0;
  while (counted < tokens) {
    const B = await texts.take(tokens - counted);
    if (B === 0) break;
    const n = B * Tr;
    const ids = texts.ids.subarray(0, n);
    const r32 = m32.run(ids, B, Tr, { capture: hooks, logits: true });
    const r16 = m16.run(ids, B, Tr, { capture: hooks, logits: true });
    for (const h of hooks) accumulate(err[h], r32.captured[h], r16.captured[h], n, d);
    accumulate(err.logits, r32.logits, r16.logits, n, V);
    for (let i = 0; i < n * V; i++) {
      const a = Math.abs(r32.logits[i]);
      if (a > maxAbsLogit) maxAbsLogit = a;
      const dl = Math.abs(r16.logits[i] - r32.logits[i]);
      if (dl > maxAbsDLogit) maxAbsDLogit = dl;
    }
    for (let i = 0; i < n; i++) {
      if (!texts.counts(ids[i])) continue;
      const c32 = rowCe(r32.logits, i * V, texts.next[i]);
      const c16 = rowCe(r16.logits, i * V, texts.next[i]);
      ce.n++;
      ce.s32 += c32;
      ce.s16 += c16;
      const diff = Math.abs(c16 - c32);
      ce.absDiff += diff;
      if (diff > ce.maxAbsDiff) ce.maxAbsDiff = diff;
      counted++;
    }
    if (texts.exhausted) break;
  }
}
const secsActs = secsSince(t1);

// ---- 3: an fp32 TopK SAE at the middle hook, spliced with the LM in fp32 and in bf16
const tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-bf16-accuracy-'));
const splices = [];
let trainSummary = null;
let secsHarvest = '';
let secsTrain = '';
let secsSplice = '';
try {
  const harvestConfig = (precision) => ({ model: 'fixtures/hf-tiny/gpt2-brown', revision: 'local', hooks: [hook], ctx, mode: 'concat', skipBos: false, maxTokens: trainTokens, shardRows: 65536, dtype: 'float32', preprocessing: 'center_unit_norm', corpus: 'brown', tokenizer: tokenizer.digest, batch: 32, ...(precision === 'bf16' ? { precision } : {}) });
  const saeConfig = { activation: 'topk', width, k, batchSize: saeBatch, steps, logEvery: 100, checkpointEvery: 1_000_000 };
  let t = performance.now();
  const acts32 = path.join(tmp, 'acts-fp32');
  await harvest({ out: acts32, config: harvestConfig('fp32'), model: m32, tokenizer, corpus: await openCorpus({ brown: 'train' }) });
  secsHarvest = secsSince(t);
  t = performance.now();
  trainSummary = await train({ data: acts32, out: path.join(tmp, 'sae-fp32'), config: saeConfig, kernels: kernelFactory('native') });
  secsTrain = secsSince(t);
  const sae32 = await openSae(trainSummary.final);

  const spliceSae = (sae, label) => ({ label, params: sae.params, selectionFor: sae.selection(), batchSize: sae.batchSize, preprocessing: sae.preprocessing, scale: sae.scale });
  // splice-eval runs the SAE at the model's precision (it refuses SAE kernels of another); to
  // separate the LM's share from the encoder's, the mixed runs reconstruct through splice-eval's
  // reconstructOverride with the SAE's own kernels, exactly as splice-runs.ts reconstructs
  const mixed = (sae, saeKernels) => {
    const kern = saeKernels({ d, F: sae.params.F, maxB: sae.batchSize });
    const selectionFor = sae.selection();
    const enc = { xc: new Float32Array(sae.batchSize * d), codes: allocCodes(sae.batchSize, sae.batchSize * 64), aux: [] };
    const xhat = new Float32Array(sae.batchSize * d);
    return (rows, m) => {
      const mean = new Float32Array(m);
      const norm = new Float32Array(m);
      preprocessRows(rows, m, d, sae.preprocessing, sae.scale, mean, norm);
      for (let r0 = 0; r0 < m; r0 += sae.batchSize) {
        const b = Math.min(sae.batchSize, m - r0);
        kern.encodeSelect(sae.params, rows.subarray(r0 * d, (r0 + b) * d), b, selectionFor(b), [], enc);
        kern.decode(sae.params, enc.codes, xhat, true);
        for (let r = 0; r < b; r++) {
          for (let j = 0; j < d; j++) {
            const v = xhat[r * d + j];
            rows[(r0 + r) * d + j] = sae.preprocessing === 'center_unit_norm' ? v * norm[r0 + r] + mean[r0 + r] : sae.preprocessing === 'dataset_scale' ? v / sae.scale : v;
          }
        }
      }
    };
  };
  const runSplice = async (label, sae, model, saeKernels, viaOverride = false) => {
    const t0 = performance.now();
    try {
      const how = viaOverride ? { reconstructOverride: mixed(sae, saeKernels) } : { kernels: saeKernels };
      const r = await spliceEval({ model, tokenizer, corpus: await heldout(), hook, saes: [spliceSae(sae, label)], ctx, batch, maxTokens: tokens, ...how });
      splices.push({ label, tokens: r.tokens, cleanLoss: r.cleanLoss, zeroLoss: r.zeroLoss, loss: r.spliced[0].loss, lossRecovered: r.spliced[0].lossRecovered, kl: r.spliced[0].kl, klScore: r.spliced[0].klScore, seconds: +secsSince(t0) });
    } catch (e) {
      splices.push({ label, refused: String(e.message ?? e) });
    }
  };
  t = performance.now();
  await runSplice('fp32 SAE; LM fp32, encoder fp32', sae32, m32, kernelFactory('native'));
  await runSplice('fp32 SAE; LM bf16, encoder bf16', sae32, m16, kernelFactory('native', 'bf16'));
  await runSplice('fp32 SAE; LM bf16, encoder fp32 (override)', sae32, m16, kernelFactory('native'), true);
  await runSplice('fp32 SAE; LM fp32, encoder bf16 (override)', sae32, m32, kernelFactory('native', 'bf16'), true);
  // the override path against splice-eval's own: must repeat the first row's numbers
  await runSplice('check: LM fp32, encoder fp32 (override)', sae32, m32, kernelFactory('native'), true);
  secsSplice = secsSince(t);

  if (fullBf16) {
    // the whole pipeline at bf16: needs TrainConfig.precision (issue 18 part 4)
    if (!('precision' in DEFAULTS)) splices.push({ label: 'all-bf16 pipeline', refused: 'this build has no TrainConfig precision key' });
    else {
      const acts16 = path.join(tmp, 'acts-bf16');
      await harvest({ out: acts16, config: harvestConfig('bf16'), model: m16, tokenizer, corpus: await openCorpus({ brown: 'train' }) });
      const s16 = await train({ data: acts16, out: path.join(tmp, 'sae-bf16'), config: { ...saeConfig, precision: 'bf16' }, kernels: kernelFactory('native', 'bf16') });
      await runSplice('bf16 SAE (bf16 harvest, bf16 training); LM bf16, encoder bf16', await openSae(s16.final), m16, kernelFactory('native', 'bf16'));
    }
  }
} finally {
  await fs.rm(tmp, { recursive: true, force: true });
}

// ---- report
const f = (x, digits = 4) => (Number.isFinite(x) ? x.toFixed(digits) : String(x));
const e = (x) => (x === 0 ? '0' : x.toExponential(2));
const result = {
  machine: { cpu: cpuModel, cpus: os.cpus().length, cpuFlags: bf16Flags, isa: info?.isa, threads: info?.threads, bf16Unit: info?.bf16Unit, bf16Units: info?.bf16Units, lmKernels: [m32.kernels.name, m16.kernels.name] },
  model: { dir: 'fixtures/hf-tiny/gpt2-brown', layers: cfg.nLayers, d, vocab: V, ctx, heldOutTokens: ce.n },
  activations: Object.fromEntries(Object.entries(err).map(([h, a]) => [h, { meanRel: a.sumRel / a.n, maxRel: a.maxRel, totalRel: Math.sqrt(a.dd / a.aa), rows: a.n }])),
  logits: { maxAbs: maxAbsLogit, maxAbsDiff: maxAbsDLogit },
  cleanCe: { fp32: ce.s32 / ce.n, bf16: ce.s16 / ce.n, diff: (ce.s16 - ce.s32) / ce.n, meanAbsTokenDiff: ce.absDiff / ce.n, maxAbsTokenDiff: ce.maxAbsDiff, tokens: ce.n },
  sae: trainSummary && { hook, activation: 'topk', width, k, batchSize: saeBatch, steps, trainTokens, finalFvu: trainSummary.last?.fvu, deadFraction: trainSummary.deadFraction },
  splice: splices,
  seconds: { activationsAndCe: +secsActs, harvest: +secsHarvest, train: +secsTrain, splice: +secsSplice, total: +secsSince(tStart) },
};

if (args.json) {
  console.log(JSON.stringify(result, null, 2));
  process.exit(0);
}
const out = [];
out.push(`## bf16 against fp32 on fixtures/hf-tiny/gpt2-brown (Brown held-out split)`);
out.push('');
out.push(`Machine: ${cpuModel}, ${os.cpus().length} CPUs; /proc/cpuinfo bf16 flags: ${bf16Flags.join(', ') || 'none'}; addon ISA ${info?.isa}, ${info?.threads} threads, bf16 unit ${info?.bf16Unit} (units: ${info?.bf16Units?.join(', ')}); LM kernels ${m32.kernels.name} / ${m16.kernels.name}.`);
out.push(`Model: ${cfg.nLayers} layers, d ${d}, vocab ${V}; ${ce.n} held-out tokens counted (contexts of ${ctx}, BOS first, documents joined with EOS, special tokens left out of CE; activation errors over all ${err.logits.n} positions run).`);
out.push('');
out.push('### Hook activations: ‖a_bf16 − a_fp32‖ / ‖a_fp32‖');
out.push('');
out.push('| hook | mean over tokens | max over tokens | all tokens at once |');
out.push('| --- | --- | --- | --- |');
for (const [h, a] of Object.entries(result.activations)) out.push(`| ${h} | ${e(a.meanRel)} | ${e(a.maxRel)} | ${e(a.totalRel)} |`);
out.push('');
out.push(`Logits: max |logit| ${f(maxAbsLogit, 2)}, max |Δlogit| ${f(maxAbsDLogit)}.`);
out.push('');
out.push('### Clean next-token CE (nats)');
out.push('');
out.push('| fp32 | bf16 | bf16 − fp32 | mean \\|ΔCE\\| per token | max \\|ΔCE\\| per token |');
out.push('| --- | --- | --- | --- | --- |');
out.push(`| ${f(result.cleanCe.fp32, 5)} | ${f(result.cleanCe.bf16, 5)} | ${result.cleanCe.diff >= 0 ? '+' : ''}${e(result.cleanCe.diff)} | ${e(result.cleanCe.meanAbsTokenDiff)} | ${e(result.cleanCe.maxAbsTokenDiff)} |`);
out.push('');
if (result.sae) {
  out.push(`### Splice-eval at ${hook}: TopK SAE trained in fp32 on fp32 activations`);
  out.push('');
  out.push(`SAE: width ${width}, k ${k}, batch ${saeBatch}, ${steps} steps on ${trainTokens} harvested train-split tokens (center_unit_norm); final training FVU ${f(result.sae.finalFvu)}, dead ${f(100 * result.sae.deadFraction, 1)} %.`);
  out.push('');
  out.push('| run | clean CE | spliced CE | zero-ablated CE | loss recovered | Δ loss recovered vs fp32 | KL score |');
  out.push('| --- | --- | --- | --- | --- | --- | --- |');
  const base = splices.find((s) => !s.refused);
  for (const s of splices) {
    if (s.refused) out.push(`| ${s.label} | refused: ${s.refused} | | | | | |`);
    else out.push(`| ${s.label} | ${f(s.cleanLoss, 5)} | ${f(s.loss, 5)} | ${f(s.zeroLoss, 5)} | ${f(s.lossRecovered, 3)} % | ${s === base ? '—' : `${s.lossRecovered >= base.lossRecovered ? '+' : ''}${f(s.lossRecovered - base.lossRecovered, 4)} pt`} | ${f(s.klScore, 5)} |`);
  }
  out.push('');
}
out.push(`Time: activations and CE ${secsActs} s, harvest ${secsHarvest} s, training ${secsTrain} s, splice-eval ${secsSplice} s; total ${secsSince(tStart)} s.`);
console.log(out.join('\n'));
