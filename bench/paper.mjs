#!/usr/bin/env node
// The paper's comparison, reproduced small (issue 10, point 5): TopK, BatchTopK, Mutual Choice with
// and without aux_zipf, and Feature Choice with uniform and Zipf capacities (each as the paper's
// phased MC → FC run), all at the same mean L0, on (a) `sae synth` data whose number of active
// features varies strongly between samples and (b) activations of a small GPT-2 trained on Brown's
// train split (fixtures/hf-tiny/gpt2-brown) at its middle layer, evaluated on the held-out Brown
// texts (activations and splice-eval). Prints a Markdown table and writes a report. Needs `npm run build`. Usage: node bench/paper.mjs [--out paper-run] [--steps 1500] [--seed 0]
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const load = (p) => import(pathToFileURL(path.join(root, 'dist', p)).href);
const { writeSynth, loadDictionary } = await load('pipeline/synth.js');
const { train } = await load('pipeline/train/train.js');
const { finetunePhase } = await load('sae/config.js');
const { loadCheckpoint } = await load('sae/checkpoint.js');
const { selectionForCheckpoint } = await load('sae/inference.js');
const { openShards } = await load('store/shard-set.js');
const { evaluateSae } = await load('eval/evaluate.js');
const { saveRunEval } = await load('eval/summary.js');
const { featureRecovery } = await load('eval/recovery.js');
const { dyingFeatures } = await load('sae/zipf.js');
const { kernelFactory, lmKernelFactory } = await load('kernels/index.js');
const { HookedTransformer } = await load('lm/model.js');
const { loadTokenizer } = await load('lm/tokenizer.js');
const { openCorpus } = await load('corpus/corpus.js');
const { harvest } = await load('pipeline/harvest.js');
const { spliceEval } = await load('eval/splice.js');
const { loadRuns } = await load('report/data.js');
const { writeReport } = await load('report/render.js');

const args = Object.fromEntries(process.argv.slice(2).map((a, i, all) => (a.startsWith('--') ? [a.slice(2), all[i + 1]] : null)).filter(Boolean));
const out = path.resolve(args.out ?? 'paper-run');
const steps = Number(args.steps ?? 1500);
const seed = Number(args.seed ?? 0);
const kernels = kernelFactory('auto');
await fs.mkdir(out, { recursive: true });
const t0 = Date.now();

// every variant spends the same budget: mean L0 = k
const phase2 = Math.round(steps / 4);
const VARIANTS = [
  { name: 'TopK', config: { activation: 'topk' } },
  { name: 'BatchTopK', config: { activation: 'batchtopk' } },
  { name: 'MC + aux_zipf', config: { activation: 'mutual' } },
  { name: 'MC, no aux_zipf', config: { activation: 'mutual', auxZipfCoef: 0 } },
  { name: 'MC → FC uniform', config: { activation: 'mutual', steps: steps - phase2, capacities: 'uniform', phases: [finetunePhase(phase2)] } },
  { name: 'MC → FC Zipf', config: { activation: 'mutual', steps: steps - phase2, phases: [finetunePhase(phase2)] } },
];

/** Spread of features per token: the standard deviation of the L0 histogram. */
function spread(hist) {
  const n = hist.reduce((a, b) => a + b, 0);
  const m = hist.reduce((a, c, i) => a + c * i, 0) / n;
  return Math.sqrt(hist.reduce((a, c, i) => a + c * (i - m) ** 2, 0) / n);
}

async function evaluate(s, set, batchSize) {
  const ck = await loadCheckpoint(s.final, { withState: true });
  const ev = await evaluateSae(ck.params, set, selectionForCheckpoint(ck), { batchSize, maxRows: 32768, kernels });
  const cfg = ck.cfg.sae_train.config;
  const dying = dyingFeatures(ev.density, cfg.zipfAlpha, cfg.zipfBeta).count / ck.cfg.d_sae;
  return { ck, ev, dying };
}

const rows = [];
const dirsLm = [];

// (a) synthetic: difficulty σ = 1 makes the number of active features per sample vary strongly
const synthDir = path.join(out, 'synth');
await writeSynth({ out: synthDir, d: 48, fTrue: 96, kTrue: 4, rows: 65536, difficultySigma: 1, seed, overwrite: true });
const dict = await loadDictionary(synthDir);
const synthSet = await openShards(synthDir);
for (const v of VARIANTS) {
  const s = await train({ data: synthDir, out: path.join(out, `synth-${v.name.replace(/[^a-z0-9]+/gi, '-')}`), force: true, kernels,
    config: { width: 384, k: 4, batchSize: 256, lr: 3e-3, steps, seed, logEvery: 50, checkpointEvery: 100_000, ...v.config } });
  const { ck, ev, dying } = await evaluate(s, synthSet, 256);
  const rec = featureRecovery(dict.G, dict.fTrue, ck.params.Wdec, ck.cfg.d_sae, ck.cfg.d_in, 0.9);
  rows.push({ data: 'synth', variant: v.name, l0: ev.l0, fvu: ev.fvu, dead: s.deadFraction, deadWindow: s.deadWindow, dying, spread: spread(ev.l0Histogram), recovered: rec.fractionRecovered, meanMaxCos: rec.meanMaxCos, lossRecovered: null, zipfR2: null });
  process.stderr.write(`synth ${v.name}: FVU ${ev.fvu.toFixed(4)} L0 ${ev.l0.toFixed(2)}\n`);
}

// (b) a GPT-2 trained on Brown's train split, at its middle layer; evaluated and spliced on the
// held-out texts, which neither it nor the SAEs ever saw
const fixture = path.join(root, 'fixtures', 'hf-tiny', 'gpt2-brown');
const model = await HookedTransformer.load(fixture, lmKernelFactory('auto'));
const tokenizer = await loadTokenizer(fixture);
const hook = 'blocks.2.hook_resid_pre';
const harvestCfg = (c, maxTokens) => ({ model: 'fixtures/hf-tiny/gpt2-brown', revision: 'local', hooks: [hook], ctx: 64, mode: 'concat', skipBos: false, maxTokens, shardRows: 32768, dtype: 'float32', preprocessing: 'center_unit_norm', corpus: c.describe(), tokenizer: tokenizer.digest, batch: 16 });
const corpus = await openCorpus({});
const acts = path.join(out, 'harvest');
await harvest({ out: acts, model, tokenizer, corpus, force: true, config: harvestCfg(corpus, 131072) });
const heldout = await openCorpus({ brown: 'heldout' });
const heldoutActs = path.join(out, 'heldout');
await harvest({ out: heldoutActs, model, tokenizer, corpus: heldout, force: true, config: harvestCfg(heldout, 32768) });
const heldoutSet = await openShards(heldoutActs);
for (const v of VARIANTS) {
  const dir = path.join(out, `lm-${v.name.replace(/[^a-z0-9]+/gi, '-')}`);
  const s = await train({ data: acts, out: dir, force: true, kernels, config: { width: 512, k: 8, batchSize: 512, lr: 2e-3, steps: Math.round(steps / 2), seed, logEvery: 50, checkpointEvery: 100_000, ...v.config, ...(v.config.phases ? { steps: Math.round(steps / 2) - Math.round(phase2 / 2), phases: [finetunePhase(Math.round(phase2 / 2))] } : {}) } });
  // eval.json in the run: the report's features-per-token figure and L0/FVU come from it
  const ev = await saveRunEval(dir, heldoutSet, { data: heldoutActs, kernels });
  const ck = await loadCheckpoint(s.final, { withState: true });
  const r = await spliceEval({ model, tokenizer, corpus: heldout, hook, ctx: 64, batch: 8, maxTokens: 8000, kernels, saes: [{ label: v.name, params: ck.params, selectionFor: selectionForCheckpoint(ck), batchSize: 512, preprocessing: 'center_unit_norm' }] });
  await fs.writeFile(path.join(dir, 'splice.json'), JSON.stringify({ schema: 'sae-splice/1', ...r }, null, 2));
  dirsLm.push(dir);
  rows.push({ data: 'GPT-2 (Brown)', variant: v.name, l0: ev.l0, fvu: ev.fvu, dead: s.deadFraction, deadWindow: s.deadWindow, dying: ev.dyingFraction, spread: spread(ev.l0Histogram), recovered: null, meanMaxCos: null, lossRecovered: r.spliced[0].lossRecovered, zipfR2: ev.zipfFit.all?.r2 ?? null, clean: r.cleanLoss, zero: r.zeroLoss, spliced: r.spliced[0].loss });
  process.stderr.write(`lm ${v.name}: FVU ${ev.fvu.toFixed(4)} L0 ${ev.l0.toFixed(2)} loss recovered ${r.spliced[0].lossRecovered.toFixed(1)}% (clean ${r.cleanLoss.toFixed(3)}, spliced ${r.spliced[0].loss.toFixed(3)}, zero ${r.zeroLoss.toFixed(3)})\n`);
}
await writeReport(await loadRuns(dirsLm), path.join(out, 'report'), { force: true });

const pct = (x) => (x === null ? '—' : `${(100 * x).toFixed(1)} %`);
const lines = [
  '| data | variant | L0 | FVU | dead (window) | dying | features/token spread (std) | true features recovered (mean max cos) | loss recovered | density Zipf R² |',
  '|---|---|---|---|---|---|---|---|---|---|',
  ...rows.map((r) => `| ${r.data} | ${r.variant} | ${r.l0.toFixed(2)} | ${r.fvu.toFixed(4)} | ${pct(r.dead)} (${r.deadWindow}) | ${pct(r.dying)} | ${r.spread.toFixed(2)} | ${r.recovered === null ? '—' : `${pct(r.recovered)} (${r.meanMaxCos.toFixed(3)})`} | ${r.lossRecovered === null ? '—' : `${r.lossRecovered.toFixed(1)} %`} | ${r.zipfR2 === null ? '—' : r.zipfR2.toFixed(3)} |`),
];
const lmRow = rows.find((r) => r.clean !== undefined);
if (lmRow) lines.push('', `GPT-2 (Brown) on held-out text: clean CE ${lmRow.clean.toFixed(3)} nats, zero-ablated ${lmRow.zero.toFixed(3)}; spliced ${rows.filter((r) => r.spliced !== undefined).map((r) => `${r.variant} ${r.spliced.toFixed(3)}`).join(', ')}.`);
await fs.writeFile(path.join(out, 'table.md'), lines.join('\n') + '\n');
console.log(lines.join('\n'));
console.error(`report: ${path.join(out, 'report', 'report.html')}; ${((Date.now() - t0) / 1000).toFixed(0)} s in all`);
