/**
 * The demo's half on real text: a small trained GPT-2 over the embedded Brown corpus, SAEs trained
 * on its middle layer, each spliced back on the held-out texts, and a report. Kept out of the
 * command so that a test can run exactly what `sae demo` runs.
 */
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeFileAtomic } from '../util/atomic.js';
import { Progress } from '../util/progress.js';
import { train } from './train/train.js';
import { loadCheckpoint } from '../sae/checkpoint.js';
import { selectionForCheckpoint } from '../sae/inference.js';
import { openShards } from '../store/shard-set.js';
import { kernelFactory, lmKernelFactory, type KernelName } from '../kernels/index.js';
import type { Precision } from '../kernels/bf16.js';
import { HookedTransformer } from '../lm/model.js';
import { loadTokenizer } from '../lm/tokenizer.js';
import { openCorpus } from '../corpus/corpus.js';
import { harvest, type HarvestConfig } from './harvest.js';
import { spliceEval } from '../eval/splice.js';
import { saveRunEval } from '../eval/summary.js';
import { loadFeatureFolders, loadRuns } from '../report/data.js';
import { writeReport } from '../report/render.js';
import { saeFromCheckpoint, type Sae } from '../sae/sae.js';
import { features } from './features.js';

/**
 * A GPT-2 trained on Brown's train split (fixtures/hf-tiny/gpt2-brown/README.md), shipped with the
 * package (dist/demo/lm.js → fixtures/). A random model would give loss recovered above 100 %
 * (splicing noise into noise can lower the loss), which reads as a bug to anyone who knows the metric.
 */
export const DEMO_MODEL = fileURLToPath(new URL('../../fixtures/hf-tiny/gpt2-brown', import.meta.url));
export const DEMO_MODEL_NAME = 'fixtures/hf-tiny/gpt2-brown';
/** the middle of its 4 layers, as GPT-2 small's layer 6 of 12 in the paper */
export const DEMO_HOOK = 'blocks.2.hook_resid_pre';
export const DEMO_LM_ACTIVATIONS = ['topk', 'mutual', 'feature'] as const;

export interface LmDemoRow {
  activation: string;
  /** measured on the held-out activations (eval.json) */
  fvu: number;
  l0: number;
  /** fraction of held-out tokens with n active features (last bin: n or more) */
  featuresPerToken: number[];
  deadFraction: number;
  deadWindow: number;
  lossRecovered: number;
  klScore: number;
  tokens: number;
}

export interface LmDemoOptions {
  out: string;
  /** training steps of each SAE */
  steps: number;
  seed: number;
  kernels: KernelName;
  /** of the LM and the SAEs, harvest, training and splice-eval alike (default fp32) */
  precision?: Precision;
  info?: (line: string) => void;
}

function harvestConfig(corpus: string, tokenizer: string, maxTokens: number, precision: Precision): HarvestConfig {
  return { precision, model: DEMO_MODEL_NAME, revision: 'local', hooks: [DEMO_HOOK], ctx: 64, mode: 'concat', skipBos: false, maxTokens, shardRows: 16384, dtype: 'float32', preprocessing: 'center_unit_norm', corpus, tokenizer, batch: 16 };
}

export async function lmDemo(opts: LmDemoOptions): Promise<{ results: LmDemoRow[]; report: string; browser: string }> {
  const info = opts.info ?? (() => undefined);
  const t0 = Date.now();
  const precision = opts.precision ?? 'fp32';
  const model = await HookedTransformer.load(DEMO_MODEL, lmKernelFactory(opts.kernels, precision));
  const tokenizer = await loadTokenizer(DEMO_MODEL);
  const corpus = await openCorpus({});
  const acts = path.join(opts.out, 'harvest');
  const h = await harvest({ out: acts, model, tokenizer, corpus, force: true, config: harvestConfig(corpus.describe(), tokenizer.digest, 65536, precision) });
  // the evaluation's activations come from the held-out texts too: no SAE has seen them
  const heldout = await openCorpus({ brown: 'heldout' });
  const heldoutActs = path.join(opts.out, 'heldout');
  const hh = await harvest({ out: heldoutActs, model, tokenizer, corpus: heldout, force: true, config: harvestConfig(heldout.describe(), tokenizer.digest, 16384, precision) });
  info(`harvest: ${h.rows} tokens of the Brown corpus (train split) and ${hh.rows} held-out tokens through ${DEMO_MODEL_NAME} at ${DEMO_HOOK} → ${acts}, ${heldoutActs} (${((Date.now() - t0) / 1000).toFixed(1)}s)`);
  const heldoutSet = await openShards(heldoutActs);
  const kernels = kernelFactory(opts.kernels, precision);
  const dirs: string[] = [];
  const results: LmDemoRow[] = [];
  const saes = new Map<string, Sae>();
  for (const activation of DEMO_LM_ACTIVATIONS) {
    const dir = path.join(opts.out, `lm-${activation}`);
    const progress = new Progress(`lm ${activation}`.padEnd(15));
    const s = await train({
      data: acts, out: dir, kernels, force: true, onStep: (a, b) => progress.tick(a, b),
      config: { activation, width: 512, k: 8, batchSize: 512, lr: 2e-3, steps: opts.steps, seed: opts.seed, logEvery: 25, checkpointEvery: 100_000, precision },
    });
    progress.done();
    const ev = await saveRunEval(dir, heldoutSet, { data: heldoutActs, kernels });
    const ck = await loadCheckpoint(s.final!, { withState: true });
    saes.set(activation, saeFromCheckpoint(ck));
    const r = await spliceEval({
      model, tokenizer, corpus: heldout, hook: DEMO_HOOK, ctx: 64, batch: 8, maxTokens: 4000, kernels,
      saes: [{ label: activation, params: ck.params, selectionFor: selectionForCheckpoint(ck), batchSize: 512, preprocessing: 'center_unit_norm' }],
    });
    await writeFileAtomic(path.join(dir, 'splice.json'), JSON.stringify({ schema: 'sae-splice/1', ...r }, null, 2) + '\n');
    const sp = r.spliced[0];
    const hist = ev.l0Histogram as number[];
    const rows = ev.rows as number;
    const row: LmDemoRow = {
      activation, fvu: ev.fvu as number, l0: ev.l0 as number, featuresPerToken: hist.map((c) => c / rows),
      deadFraction: s.deadFraction, deadWindow: s.deadWindow, lossRecovered: sp.lossRecovered, klScore: sp.klScore, tokens: r.tokens,
    };
    results.push(row);
    dirs.push(dir);
    info(
      `lm ${activation.padEnd(12)} FVU ${row.fvu.toFixed(4)}  L0 ${row.l0.toFixed(2)} (${spreadText(hist)})  dead ${(100 * row.deadFraction).toFixed(1).padStart(5)}% (last ${row.deadWindow} tokens)  ` +
        `loss recovered ${sp.lossRecovered.toFixed(1)}% (clean ${r.cleanLoss.toFixed(3)}, spliced ${sp.loss.toFixed(3)}, zero ${r.zeroLoss.toFixed(3)}; ${r.tokens} held-out tokens)`,
    );
  }
  // the feature browser of the Mutual Choice SAE, TopK beside it for the per-token view (issue 20)
  const t1 = Date.now();
  const browser = await features({
    out: path.join(opts.out, 'features'), force: true, model, modelName: DEMO_MODEL_NAME, tokenizer, corpus: heldout, kernels,
    saes: [{ label: 'mutual', sae: saes.get('mutual')!, mode: 'batch' }, { label: 'topk', sae: saes.get('topk')!, mode: 'batch' }],
    maxTokens: 16384, ctx: 64, batch: 8, skipBos: false, top: 12, samples: 16, bands: 4, before: 8, after: 3, texts: 8, logits: 10, seed: opts.seed,
  });
  info(`features: ${browser.manifest.tokens} held-out tokens through the Mutual Choice and TopK SAEs → the feature browser ${browser.index} (${((Date.now() - t1) / 1000).toFixed(1)}s)`);
  const reportDir = path.join(opts.out, 'report');
  // the demo's folder is its own (marked), and so is everything in it
  await writeReport(await loadRuns(dirs), reportDir, { force: true, features: await loadFeatureFolders([browser.out]) });
  return { results, report: path.join(reportDir, 'report.html'), browser: browser.index };
}

/** The range of active features per token that holds the middle 90 % of tokens, from an L0 histogram. */
export function spreadText(hist: number[]): string {
  const total = hist.reduce((a, b) => a + b, 0);
  let lo = -1;
  let hi = -1;
  let acc = 0;
  for (let n = 0; n < hist.length; n++) {
    acc += hist[n];
    if (lo < 0 && acc > 0.05 * total) lo = n;
    if (hi < 0 && acc >= 0.95 * total) hi = n;
  }
  return lo === hi ? `${lo} features on 90 % of tokens` : `${lo}–${hi} features on 90 % of tokens`;
}
