import { Flags } from '@oclif/core';
import { SaeCommand } from '../util/command.js';
import { UserError } from '../util/errors.js';
import { sharedFlags } from '../cli/flags.js';
import { loadCheckpoint } from '../sae/checkpoint.js';
import { findCheckpoint } from '../sae/train.js';
import { selectionForCheckpoint } from '../sae/inference.js';
import { openShards, checkCompatible } from '../store/reader.js';
import { evaluateSae } from '../eval/evaluate.js';
import { featureRecovery } from '../eval/recovery.js';
import { loadDictionary } from '../synth/synth.js';
import { kernelFactory, type KernelName } from '../kernels/index.js';

export default class Eval extends SaeCommand {
  static override description = 'Evaluate an SAE on activation shards: L0 and its histogram, MSE, FVU, dead %, and feature recovery against a synthetic dictionary (SPEC §9, §11). Prints JSON on stdout.';

  static override examples = ['<%= config.bin %> eval --checkpoint runs/mc/final --data synth/ --dictionary synth/'];

  static override flags = {
    checkpoint: Flags.string({ description: 'checkpoint folder or run directory', required: true }),
    data: Flags.string({ description: 'activation shards to evaluate on', required: true }),
    dictionary: Flags.string({ description: 'a `sae synth` output directory: also report recovery of its true features' }),
    'batch-size': Flags.integer({ description: 'tokens per batch for batch selections (default: the training batch size)' }),
    'max-rows': Flags.integer({ description: 'evaluate at most this many rows (the last batch may be partial; it is evaluated as a batch of its own size)' }),
    threshold: Flags.string({ description: 'cosine threshold for a recovered feature', default: '0.9' }),
    'allow-no-manifest': sharedFlags['allow-no-manifest'],
    kernels: sharedFlags.kernels,
  };

  async run(): Promise<void> {
    const { flags } = await this.parse(Eval);
    // the state holds the density ranking that Feature Choice capacities follow
    const ck = await loadCheckpoint(await findCheckpoint(flags.checkpoint), { withState: 'if-present' });
    const set = await openShards(flags.data, { allowNoManifest: flags['allow-no-manifest'] });
    checkCompatible(set.meta, { d: ck.cfg.d_in });
    const threshold = Number(flags.threshold);
    if (!(threshold > -1 && threshold <= 1)) throw new UserError(`--threshold must be a cosine in (-1, 1], got "${flags.threshold}"`);
    const batchSize = flags['batch-size'] ?? (ck.cfg.sae_train?.config?.batchSize as number | undefined) ?? 1536;
    if (batchSize < 1) throw new UserError('--batch-size must be ≥ 1');
    if (flags['max-rows'] !== undefined && flags['max-rows'] < 1) throw new UserError('--max-rows must be ≥ 1');
    const res = await evaluateSae(ck.params, set, selectionForCheckpoint(ck), {
      batchSize,
      maxRows: flags['max-rows'],
      kernels: kernelFactory(flags.kernels as KernelName),
    });
    const out: Record<string, unknown> = {
      checkpoint: ck.dir,
      data: flags.data,
      architecture: ck.cfg.architecture,
      d: ck.cfg.d_in,
      width: ck.cfg.d_sae,
      rows: res.rows,
      l0: res.l0,
      l0Histogram: res.l0Histogram,
      mse: res.mse,
      fvu: res.fvu,
      explainedVariance: 1 - res.fvu,
      batchSize,
      batches: res.batches,
      lastBatchRows: res.lastBatchRows,
      // not training's "dead" (no firing in its last deadWindow tokens): never fired on these rows
      neverFiredFraction: res.neverFiredFraction,
      neverFiredWindowTokens: res.rows,
    };
    let line =
      `${ck.cfg.architecture} F=${ck.cfg.d_sae}: ${res.rows} rows in ${res.batches} batches` +
      `${res.lastBatchRows < batchSize ? ` (last one ${res.lastBatchRows} rows)` : ''}, L0 ${res.l0.toFixed(2)}, FVU ${res.fvu.toFixed(4)}, ` +
      `never fired on these ${res.rows} tokens ${(100 * res.neverFiredFraction).toFixed(2)}%`;
    if (flags.dictionary) {
      const dict = await loadDictionary(flags.dictionary);
      if (dict.d !== ck.cfg.d_in) throw new UserError(`dictionary has d=${dict.d} but the SAE has d=${ck.cfg.d_in}`);
      const rec = featureRecovery(dict.G, dict.fTrue, ck.params.Wdec, ck.cfg.d_sae, dict.d, threshold);
      out.recovery = rec;
      line += `, recovery: mean max cos ${rec.meanMaxCos.toFixed(3)}, ${(100 * rec.fractionRecovered).toFixed(1)}% of true features ≥ ${threshold}`;
    }
    this.info(line);
    process.stdout.write(JSON.stringify(out) + '\n');
  }
}
