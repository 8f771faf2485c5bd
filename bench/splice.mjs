#!/usr/bin/env node
// Splice-eval benchmark (issue 10): tokens/s of splice-eval (clean forward, the spliced and the
// zero-ablated runs started at the hook with the clean prefix shared, logits and KL) for a
// GPT-2-small-shaped model (random weights, GPT-2's tokenizer) with a 24,576-feature TopK SAE at
// blocks.6.hook_resid_pre, ctx 64. Compare with ../shared/tools/torch_lm_bench.py --full ÷ 3
// (SAELens runs three full forwards). Needs `npm run build`.
// Usage: node bench/splice.mjs [--tokens 4000] [--batch 8] [--kernels native]
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
const { spliceEval } = await load('eval/splice.js');
const { kernelFactory } = await load('kernels/index.js');
const { allocParams } = await load('kernels/params.js');

const args = Object.fromEntries(process.argv.slice(2).map((a, i, all) => (a.startsWith('--') ? [a.slice(2), all[i + 1]] : null)).filter(Boolean));
const tokens = Number(args.tokens ?? 4000);
const batch = Number(args.batch ?? 8);
const kernels = args.kernels ?? 'native';

const { model, rand, d } = randomGpt2Small(HookedTransformer, lmKernelFactory(kernels));
const tokenizer = await loadTokenizer(path.join(root, 'fixtures', 'tokenizer', 'gpt2'));
const corpus = await openCorpus({ brown: 'heldout' });
const F = 24576;
const params = allocParams(d, F);
params.WencT.set(rand(F * d, 0.03));
params.Wdec.set(rand(F * d, 0.036));
const sae = { label: 'topk', params, selectionFor: () => ({ kind: 'topk', k: 32 }), batchSize: 1536, preprocessing: 'center_unit_norm' };
const opts = { model, tokenizer, corpus, hook: 'blocks.6.hook_resid_pre', saes: [sae], ctx: 64, batch, kernels: kernelFactory(kernels) };
await spliceEval({ ...opts, maxTokens: 1 }); // warm-up batch
const t0 = performance.now();
const r = await spliceEval({ ...opts, maxTokens: tokens });
const secs = (performance.now() - t0) / 1000;
console.log(JSON.stringify({ tokens: r.tokens, batch, kernels, tokensPerSec: Math.round(r.tokens / secs), seconds: +secs.toFixed(1), rssMB: Math.round(process.memoryUsage().rss / 2 ** 20) }));
