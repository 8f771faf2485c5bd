#!/usr/bin/env node
// `sae features` benchmark (issue 20): tokens/s of the features pass (corpus → LM forward to the
// hook → SAE encode in batches → per-feature heaps, samples, histograms → logit effects → the
// folder of 24,576 feature pages) against `sae harvest` over the same tokens, for a
// GPT-2-small-shaped model (random weights, real shapes, GPT-2's real tokenizer) at
// blocks.6.hook_resid_pre, ctx 64, with a random 24,576-feature SAE (Mutual Choice and TopK,
// k 32, B 1536). Peak RSS after each run shows whether memory grows with the corpus.
// Needs `npm run build`. Usage:
//   node bench/features.mjs [--tokens 100000] [--activation mutual|topk] [--kernels native] [--precision fp32|bf16] [--skip-harvest]
// Run one corpus size per process (RSS is per process); compare sizes across runs.
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { randomGpt2Small } from './random-gpt2.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const load = (p) => import(pathToFileURL(path.join(root, 'dist', p)).href);
const { HookedTransformer } = await load('lm/model.js');
const { loadTokenizer } = await load('lm/tokenizer.js');
const { lmKernelFactory, kernelFactory } = await load('kernels/index.js');
const { openCorpus } = await load('corpus/corpus.js');
const { harvest } = await load('pipeline/harvest.js');
const { features } = await load('pipeline/features.js');
const { initParams } = await load('sae/params.js');

const argv = process.argv.slice(2);
const args = Object.fromEntries(argv.map((a, i, all) => (a.startsWith('--') ? [a.slice(2), all[i + 1] === undefined || all[i + 1].startsWith('--') ? 'true' : all[i + 1]] : null)).filter(Boolean));
const tokens = Number(args.tokens ?? 100_000);
const activation = args.activation ?? 'mutual';
const kernels = args.kernels ?? 'native';
const precision = args.precision ?? 'fp32';
const batch = 32;
const F = 24_576;
const k = 32;
const B = 1536;

const { model, d } = randomGpt2Small(HookedTransformer, lmKernelFactory(kernels, precision));
const tokenizer = await loadTokenizer(path.join(root, 'fixtures', 'tokenizer', 'gpt2'));
// the whole embedded Brown corpus, repeated if a run asks for more tokens than it has
const brown = await openCorpus({});
const corpus = {
  describe: () => brown.describe(),
  async *documents() {
    for (let pass = 0; ; pass++) for await (const doc of brown.documents(null)) yield { text: doc.text, position: { pass, at: doc.position } };
  },
};
const hook = 'blocks.6.hook_resid_pre';
const params = { d, F, WencT: new Float32Array(F * d), bEnc: new Float32Array(F), Wdec: new Float32Array(F * d), bDec: new Float32Array(d) };
initParams(params, 1);
const sel = activation === 'mutual' ? { kind: 'mutual', M: k * B } : { kind: 'topk', k };
const sae = {
  dir: 'bench', format: 'sae', cfg: {}, params, d, F, hook, model: 'random-gpt2-small', preprocessing: 'center_unit_norm',
  trainConfig: { activation, k, batchSize: B }, trainedPrecision: 'fp32', batchSize: B, selection: () => () => sel, checkData: () => undefined,
};

const out = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-bench-features-'));
const result = { cpu: os.cpus()[0]?.model, tokens, activation, F, k, B, kernels, precision };
try {
  if (!args['skip-harvest']) {
    const config = { model: 'random-gpt2-small', revision: 'bench', hooks: [hook], ctx: 64, mode: 'concat', skipBos: false, maxTokens: tokens, shardRows: 65536, dtype: 'float32', preprocessing: 'center_unit_norm', corpus: corpus.describe(), tokenizer: tokenizer.digest, batch, precision };
    const t0 = performance.now();
    const h = await harvest({ out: path.join(out, 'harvest'), config, model, tokenizer, corpus });
    result.harvestSeconds = (performance.now() - t0) / 1000;
    result.harvestTokensPerSec = Math.round(h.rows / result.harvestSeconds);
    await fs.rm(path.join(out, 'harvest'), { recursive: true, force: true });
  }
  const marks = [];
  const t0 = performance.now();
  const r = await features({
    out: path.join(out, 'features'), model, modelName: 'random-gpt2-small', tokenizer, corpus, saes: [{ label: activation, sae, mode: 'batch' }],
    kernels: kernelFactory(kernels, precision), maxTokens: tokens, ctx: 64, batch, skipBos: false,
    top: 12, samples: 16, bands: 4, before: 8, after: 3, texts: 8, logits: 10, seed: 0,
    info: (line) => marks.push([(performance.now() - t0) / 1000, line]),
  });
  result.featuresSeconds = (performance.now() - t0) / 1000;
  result.featuresTokensPerSec = Math.round(r.manifest.tokens / result.featuresSeconds);
  result.passSeconds = marks[0]?.[0];
  result.logitEffectsSeconds = Number(/\(([\d.]+)s\)/.exec(marks[1]?.[1] ?? '')?.[1]);
  result.writeSeconds = result.featuresSeconds - result.passSeconds - result.logitEffectsSeconds;
  result.l0 = r.manifest.saes[0].l0;
  if (result.harvestSeconds) result.featuresOverHarvest = result.featuresSeconds / result.harvestSeconds;
  const files = (await fs.readdir(path.join(out, 'features'), { recursive: true, withFileTypes: true })).filter((e) => e.isFile());
  result.files = files.length;
  let bytes = 0;
  for (const f of files) bytes += (await fs.stat(path.join(f.parentPath ?? f.path, f.name))).size;
  result.folderMB = Math.round(bytes / 2 ** 20);
  result.peakRssMB = Math.round(process.resourceUsage().maxRSS / 1024);
} finally {
  await fs.rm(out, { recursive: true, force: true });
}
console.log(JSON.stringify(result));
