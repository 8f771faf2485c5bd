import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { ensureOutDir } from '../util/outdir.js';
import { describeFsError, writeFileAtomic } from '../util/atomic.js';
import { Flags } from '@oclif/core';
import { SaeCommand } from '../util/command.js';
import { finetunePhase } from '../sae/config.js';
import { sharedFlags } from '../cli/flags.js';
import { UserError } from '../util/errors.js';
import { writeSynth, loadDictionary } from '../synth/synth.js';
import { train } from '../sae/train.js';
import { loadCheckpoint } from '../sae/checkpoint.js';
import { selectionForCheckpoint } from '../sae/inference.js';
import { openShards } from '../store/reader.js';
import { evaluateSae } from '../eval/evaluate.js';
import { featureRecovery } from '../eval/recovery.js';
import { kernelFactory, lmKernelFactory, type KernelName } from '../kernels/index.js';
import { Progress } from '../util/progress.js';
import { fileURLToPath } from 'node:url';
import { HookedTransformer } from '../lm/model.js';
import { loadTokenizer } from '../lm/tokenizer.js';
import { openCorpus } from '../harvest/corpus.js';
import { harvest } from '../harvest/harvest.js';
import { spliceEval } from '../eval/splice.js';
import { loadRuns } from '../report/data.js';
import { writeReport } from '../report/render.js';

/** The embedded default: offline, about a minute, exercises synth → train → eval for each selection. */
const RUNS: Array<{ name: string; config: Record<string, unknown> }> = [
  { name: 'topk', config: { activation: 'topk' } },
  { name: 'mutual', config: { activation: 'mutual' } },
  { name: 'feature', config: { activation: 'feature' } },
  { name: 'mutual→feature', config: { activation: 'mutual', steps: 1500, phases: [finetunePhase(500)] } },
];

/** Marks a directory as the demo's own, so that rerunning replaces only what an earlier demo wrote. */
const MARKER = '.sae-demo';

/** The demo rewrites its working directory on every run: only ever one that is empty or already the demo's. */
async function claimDemoDir(out: string): Promise<void> {
  await ensureOutDir(out);
  const entries = await fs.readdir(out).catch((e) => {
    throw describeFsError(e, `reading ${out}`);
  });
  if (entries.length > 0 && !entries.includes(MARKER)) throw new UserError(`--out ${out} is not empty and not a demo directory; choose another --out`);
  await writeFileAtomic(path.join(out, MARKER), 'working directory of `sae demo`; rerunning the demo replaces its contents\n');
}

/** The tiny GPT-2 of the fixtures, shipped with the package (dist/commands/demo.js → fixtures/). */
const FIXTURE_MODEL = fileURLToPath(new URL('../../fixtures/hf-tiny/gpt2', import.meta.url));
const DEMO_HOOK = 'blocks.1.hook_resid_pre';

export default class Demo extends SaeCommand {
  /**
   * The whole pipeline on real text, offline: harvest the fixture model over the embedded Brown
   * corpus, train TopK, Mutual Choice and Feature Choice SAEs on it, splice each back into the
   * model on the held-out Brown texts, and write a report.
   */
  private async lmPipeline(out: string, steps: number, seed: number, kernelName: KernelName) {
    const t0 = Date.now();
    const model = await HookedTransformer.load(FIXTURE_MODEL, lmKernelFactory(kernelName));
    const tokenizer = await loadTokenizer(FIXTURE_MODEL);
    const corpus = await openCorpus({});
    const acts = path.join(out, 'harvest');
    const h = await harvest({
      out: acts, model, tokenizer, corpus, force: true,
      config: { model: 'fixtures/hf-tiny/gpt2', revision: 'local', hooks: [DEMO_HOOK], ctx: 64, mode: 'concat', skipBos: false, maxTokens: 65536, shardRows: 16384, dtype: 'float32', preprocessing: 'center_unit_norm', corpus: corpus.describe(), tokenizer: tokenizer.digest, batch: 16 },
    });
    this.info(`harvest: ${h.rows} tokens of the Brown corpus through the fixture GPT-2 at ${DEMO_HOOK} → ${acts} (${((Date.now() - t0) / 1000).toFixed(1)}s)`);
    const heldout = await openCorpus({ brown: 'heldout' });
    const kernels = kernelFactory(kernelName);
    const dirs: string[] = [];
    const results = [];
    for (const activation of ['topk', 'mutual', 'feature']) {
      const dir = path.join(out, `lm-${activation}`);
      const progress = new Progress(`lm ${activation}`.padEnd(15));
      const s = await train({
        data: acts, out: dir, kernels, force: true, onStep: (a, b) => progress.tick(a, b),
        config: { activation, width: 512, k: 8, batchSize: 512, lr: 2e-3, steps: Math.max(10, Math.round(steps / 4)), seed, logEvery: 25, checkpointEvery: 100_000 },
      });
      progress.done();
      const ck = await loadCheckpoint(s.final!, { withState: true });
      const r = await spliceEval({
        model, tokenizer, corpus: heldout, hook: DEMO_HOOK, ctx: 64, batch: 8, maxTokens: 4000, kernels,
        saes: [{ label: activation, params: ck.params, selectionFor: selectionForCheckpoint(ck), batchSize: 512, preprocessing: 'center_unit_norm' }],
      });
      await writeFileAtomic(path.join(dir, 'splice.json'), JSON.stringify({ schema: 'sae-splice/1', ...r }, null, 2) + '\n');
      const sp = r.spliced[0];
      const row = { activation, fvu: s.last?.fvu ?? NaN, l0: s.last?.l0 ?? NaN, deadFraction: s.deadFraction, deadWindow: s.deadWindow, lossRecovered: sp.lossRecovered, klScore: sp.klScore, tokens: r.tokens };
      results.push(row);
      dirs.push(dir);
      this.info(
        `lm ${activation.padEnd(12)} FVU ${row.fvu.toFixed(4)}  L0 ${row.l0.toFixed(2)}  dead ${(100 * row.deadFraction).toFixed(1).padStart(5)}% (last ${row.deadWindow} tokens)  ` +
          `loss recovered ${sp.lossRecovered.toFixed(1)}% (clean ${r.cleanLoss.toFixed(3)}, spliced ${sp.loss.toFixed(3)}, zero ${r.zeroLoss.toFixed(3)}; ${r.tokens} held-out tokens)`,
      );
    }
    const reportDir = path.join(out, 'report');
    await writeReport(await loadRuns(dirs), reportDir);
    return { results, report: path.join(reportDir, 'report.html') };
  }

  static override description =
    'Offline demo of the whole pipeline: harvest the fixture GPT-2 over the embedded corpus, train TopK, Mutual Choice and Feature Choice SAEs, splice them back (loss recovered) and write a report; then synthetic activations with known features, and how well each SAE recovers them.';

  static override flags = {
    out: Flags.string({ description: 'working directory for data and runs', default: 'sae-demo' }),
    steps: Flags.integer({ description: 'training steps per SAE', default: 2000 }),
    seed: Flags.integer({ description: 'random seed', default: 0 }),
    json: Flags.boolean({ description: 'print the results as JSON on stdout' }),
    kernels: sharedFlags.kernels,
  };

  async run(): Promise<void> {
    const { flags } = await this.parse(Demo);
    if (flags.steps < 10) throw new UserError('--steps must be ≥ 10');
    const kernels = kernelFactory(flags.kernels as KernelName);
    await claimDemoDir(flags.out);
    const data = path.join(flags.out, 'synth');
    const t0 = Date.now();
    const lm = await this.lmPipeline(flags.out, flags.steps, flags.seed, flags.kernels as KernelName);
    const synth = await writeSynth({ out: data, d: 48, fTrue: 96, kTrue: 3, rows: 65536, seed: flags.seed, overwrite: true });
    this.info(`synth: ${synth.rows} rows, d=48, 96 true features (Zipf firing, mean ${synth.meanActive.toFixed(2)} active, difficulty σ=0.5) → ${data}`);
    const dict = await loadDictionary(data);
    const set = await openShards(data);
    const results = [];
    for (const run of RUNS) {
      const progress = new Progress(run.name.padEnd(15));
      const scale = flags.steps / 2000;
      const config: Record<string, unknown> = { width: 192, k: 3, batchSize: 256, lr: 3e-3, steps: flags.steps, seed: flags.seed, logEvery: 100, checkpointEvery: 100_000, ...run.config };
      if (run.config.phases) {
        config.steps = Math.round(1500 * scale);
        config.phases = [finetunePhase(Math.max(1, Math.round(500 * scale)))];
      }
      const s = await train({ data, out: path.join(flags.out, run.name.replace('→', '-')), config, kernels, force: true, onStep: (a, b) => progress.tick(a, b) });
      progress.done();
      const ck = await loadCheckpoint(s.final!, { withState: true });
      const ev = await evaluateSae(ck.params, set, selectionForCheckpoint(ck), { batchSize: 256, maxRows: 16384, kernels });
      const rec = featureRecovery(dict.G, dict.fTrue, ck.params.Wdec, ck.cfg.d_sae, ck.cfg.d_in, 0.9);
      const row = { activation: run.name, fvu: ev.fvu, l0: ev.l0, deadFraction: s.deadFraction, deadWindow: s.deadWindow, meanMaxCos: rec.meanMaxCos, recovered: rec.fractionRecovered, seconds: s.seconds, checkpoint: s.final };
      results.push(row);
      this.info(
        `${run.name.padEnd(15)} FVU ${ev.fvu.toFixed(4)}  L0 ${ev.l0.toFixed(2)}  dead ${(100 * s.deadFraction).toFixed(1).padStart(5)}% (last ${s.deadWindow} tokens)  ` +
          `mean max cos ${rec.meanMaxCos.toFixed(3)}  recovered ${(100 * rec.fractionRecovered).toFixed(1).padStart(5)}%  (${s.seconds.toFixed(1)}s)`,
      );
    }
    this.info(`demo done in ${((Date.now() - t0) / 1000).toFixed(1)}s; runs in ${flags.out}/, the LM runs' report in ${lm.report}`);
    if (flags.json) process.stdout.write(JSON.stringify({ lm: lm.results, report: lm.report, synth: synth.params, results }) + '\n');
    else process.stdout.write(flags.out + '\n');
  }
}
