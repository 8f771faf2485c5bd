import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { ensureOutDir } from '../util/outdir.js';
import { DEMO_MARKER, ownsFolder } from '../store/outputs.js';
import { describeFsError, writeFileAtomic } from '../util/atomic.js';
import { Flags } from '@oclif/core';
import { SaeCommand } from '../util/command.js';
import { finetunePhase } from '../sae/config.js';
import { sharedFlags } from '../cli/flags.js';
import { UserError } from '../util/errors.js';
import { writeSynth, loadDictionary } from '../pipeline/synth.js';
import { train } from '../pipeline/train/train.js';
import { loadCheckpoint } from '../sae/checkpoint.js';
import { selectionForCheckpoint } from '../sae/inference.js';
import { openShards } from '../store/shard-set.js';
import { evaluateSae } from '../eval/evaluate.js';
import { featureRecovery } from '../eval/recovery.js';
import { kernelFactory, type KernelName } from '../kernels/index.js';
import { parsePrecision, type Precision } from '../kernels/bf16.js';
import { lmDemo, DEMO_MODEL_NAME } from '../pipeline/demo-lm.js';
import { isLockEntry, lockOutDir, type OutDirLock } from '../util/lock.js';
import { Progress } from '../util/progress.js';

/** The embedded default: offline, about a minute, exercises synth → train → eval for each selection. */
const RUNS: Array<{ name: string; config: Record<string, unknown> }> = [
  { name: 'topk', config: { activation: 'topk' } },
  { name: 'mutual', config: { activation: 'mutual' } },
  { name: 'feature', config: { activation: 'feature' } },
  { name: 'mutual→feature', config: { activation: 'mutual', steps: 1500, phases: [finetunePhase(500)] } },
];

/** The demo rewrites its working directory on every run: only ever one that is empty or already the demo's. */
async function claimDemoDir(out: string): Promise<OutDirLock> {
  await ensureOutDir(out);
  // held before looking inside, so that a second demo cannot claim the same folder meanwhile
  const lock = await lockOutDir(out, 'sae demo');
  try {
    const entries = (await fs.readdir(out).catch((e) => {
      throw describeFsError(e, `reading ${out}`);
    })).filter((n) => !isLockEntry(n));
    if (entries.length > 0 && !ownsFolder('demo', entries)) throw new UserError(`--out ${out} is not empty and not a demo directory; choose another --out`);
    // the mark that makes the folder the demo's, so that rerunning replaces only what an earlier demo wrote
    await writeFileAtomic(path.join(out, DEMO_MARKER), 'working directory of `sae demo`; rerunning the demo replaces its contents\n');
    return lock;
  } catch (e) {
    await lock.release();
    throw e;
  }
}

export default class Demo extends SaeCommand {
  static override description =
    `Offline demo of the whole pipeline: harvest a small trained GPT-2 (${DEMO_MODEL_NAME}) over the embedded Brown corpus, train TopK, Mutual Choice and Feature Choice SAEs, splice them back on held-out text (loss recovered), measure features per token and write a report; then synthetic activations with known features, and how well each SAE recovers them.`;

  static override flags = {
    out: Flags.string({ description: 'working directory for data and runs', default: 'sae-demo' }),
    steps: Flags.integer({ description: 'training steps per SAE', default: 2000 }),
    seed: Flags.integer({ description: 'random seed', default: 0 }),
    json: Flags.boolean({ description: 'print the results as JSON on stdout' }),
    kernels: sharedFlags.kernels,
    precision: sharedFlags.precision,
  };

  async run(): Promise<void> {
    const { flags } = await this.parse(Demo);
    if (flags.steps < 10) throw new UserError('--steps must be ≥ 10');
    const precision = parsePrecision(flags.precision);
    const kernels = kernelFactory(flags.kernels as KernelName, precision);
    const lock = await claimDemoDir(flags.out);
    try {
      await this.demo({ ...flags, precision }, kernels);
    } finally {
      await lock.release();
    }
  }

  private async demo(flags: { out: string; steps: number; seed: number; json: boolean; kernels: string; precision: Precision }, kernels: ReturnType<typeof kernelFactory>): Promise<void> {
    const data = path.join(flags.out, 'synth');
    const t0 = Date.now();
    const lm = await lmDemo({ out: flags.out, steps: Math.max(10, Math.round(flags.steps / 4)), seed: flags.seed, kernels: flags.kernels as KernelName, precision: flags.precision, info: (l) => this.info(l) });
    const synth = await writeSynth({ out: data, d: 48, fTrue: 96, kTrue: 3, rows: 65536, seed: flags.seed, overwrite: true });
    this.info(`synth: ${synth.rows} rows, d=48, 96 true features (Zipf firing, mean ${synth.meanActive.toFixed(2)} active, difficulty σ=0.5) → ${data}`);
    const dict = await loadDictionary(data);
    const set = await openShards(data);
    const results = [];
    for (const run of RUNS) {
      const progress = new Progress(run.name.padEnd(15));
      const scale = flags.steps / 2000;
      const config: Record<string, unknown> = { width: 192, k: 3, batchSize: 256, lr: 3e-3, steps: flags.steps, seed: flags.seed, logEvery: 100, checkpointEvery: 100_000, precision: flags.precision, ...run.config };
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
    this.info(`the feature browser of the Mutual Choice SAE (open it in a browser): ${lm.browser}`);
    if (flags.json) process.stdout.write(JSON.stringify({ lm: lm.results, report: lm.report, browser: lm.browser, synth: synth.params, results }) + '\n');
    else process.stdout.write(flags.out + '\n');
  }
}
