#!/usr/bin/env node
// Harvest benchmark (issue 9): end-to-end tokens/s of `sae harvest` (corpus → tokenize → forward
// to the hook → preprocess → Parquet on disk) against the forward pass alone on the same contexts,
// for a GPT-2-small-shaped model (random weights, real shapes and GPT-2's real tokenizer) at
// blocks.6.hook_resid_pre, ctx 64. The pipeline's overhead is everything that is not the forward.
// Needs `npm run build`. Usage: node bench/harvest.mjs [--tokens 100000] [--batch 32] [--dtype float32] [--kernels native]
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
import { randomGpt2Small } from './random-gpt2.mjs';

const load = (p) => import(pathToFileURL(path.join(root, 'dist', p)).href);
const { HookedTransformer } = await load('lm/model.js');
const { loadTokenizer } = await load('lm/tokenizer.js');
const { lmKernelFactory } = await load('kernels/index.js');
const { openCorpus } = await load('corpus/corpus.js');
const { harvest } = await load('pipeline/harvest.js');
const { ActivationRows } = await load('harvest/rows.js');

const args = Object.fromEntries(process.argv.slice(2).map((a, i, all) => (a.startsWith('--') ? [a.slice(2), all[i + 1]] : null)).filter(Boolean));
const tokens = Number(args.tokens ?? 100_000);
const batch = Number(args.batch ?? 32);
const dtype = args.dtype ?? 'float32';
const kernels = args.kernels ?? 'native';

const { model, rand, d } = randomGpt2Small(HookedTransformer, lmKernelFactory(kernels));
const tokenizer = await loadTokenizer(path.join(root, 'fixtures', 'tokenizer', 'gpt2'));
const corpus = await openCorpus({});
const hook = 'blocks.6.hook_resid_pre';
const rowOpts = { hooks: [hook], ctx: 64, mode: 'concat', skipBos: false, batch };

// forward only: the same row stream without the disk (tokenization included, as small as it is)
async function forwardOnly() {
  const rows = new ActivationRows(model, tokenizer, corpus, rowOpts);
  await rows.next(); // warm-up batch
  const t0 = performance.now();
  let n = 0;
  while (n < tokens) {
    const b = await rows.next();
    if (!b) break;
    n += b.n;
  }
  return n / ((performance.now() - t0) / 1000);
}

async function endToEnd() {
  const out = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-bench-harvest-'));
  const config = { model: 'random-gpt2-small', revision: 'bench', hooks: [hook], ctx: 64, mode: 'concat', skipBos: false, maxTokens: tokens, shardRows: 65536, dtype, preprocessing: 'center_unit_norm', corpus: corpus.describe(), tokenizer: tokenizer.digest, batch };
  const t0 = performance.now();
  const s = await harvest({ out, config, model, tokenizer, corpus });
  const secs = (performance.now() - t0) / 1000;
  await fs.rm(out, { recursive: true, force: true });
  return s.rows / secs;
}

const fwd = await forwardOnly();
const e2e = await endToEnd();
const r = { tokens, batch, dtype, kernels, forwardTokensPerSec: Math.round(fwd), harvestTokensPerSec: Math.round(e2e), overhead: 1 - e2e / fwd, rssMB: Math.round(process.memoryUsage().rss / 2 ** 20) };
console.log(JSON.stringify(r));
