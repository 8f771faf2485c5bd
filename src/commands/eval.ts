import { Flags } from '@oclif/core';
import { SaeCommand } from '../util/command.js';
import { UserError } from '../util/errors.js';
import { sharedFlags } from '../cli/flags.js';
import { openSae, type Sae } from '../sae/sae.js';
import { openShards, type ShardSet } from '../store/shard-set.js';
import { evaluateSae } from '../eval/evaluate.js';
import { featureRecovery } from '../eval/recovery.js';
import { loadDictionary, DICTIONARY_FILE } from '../pipeline/synth.js';
import { pathKind } from '../util/outdir.js';
import * as path from 'node:path';
import { kernelFactory, type KernelName } from '../kernels/index.js';
import { parsePrecision } from '../kernels/bf16.js';
import { checkFeaturesOut, writeFeatures } from '../eval/features.js';
import { evalSummary } from '../eval/summary.js';

/** --dictionary names the synth folder; its dictionary.safetensors itself is accepted too. */
async function dictionaryDir(p: string): Promise<string> {
  const kind = await pathKind(p);
  if (kind === 'dir') return p;
  if (kind === 'file' && path.basename(p) === DICTIONARY_FILE) return path.dirname(p);
  if (kind === 'file') throw new UserError(`--dictionary ${p} is a file; pass the \`sae synth\` output folder (the one holding ${DICTIONARY_FILE})`);
  throw new UserError(`--dictionary ${p}: no such folder`);
}

export default class Eval extends SaeCommand {
  static override description = 'Evaluate an SAE on activation shards: L0 and its histogram, MSE, FVU, never-fired and dying %, the sorted density curve and its Zipf fit, and feature recovery against a synthetic dictionary (SPEC §9, §11). Prints one JSON object (schema sae-eval/1) on stdout.';

  static override examples = [
    '<%= config.bin %> eval --checkpoint runs/mc/final --data synth/ --dictionary synth/',
    '<%= config.bin %> eval --checkpoint runs/mc/final --data shards/ --features-out features.parquet --json',
  ];

  static override flags = {
    checkpoint: Flags.string({ description: 'checkpoint folder or run directory', required: true }),
    data: Flags.string({ description: 'activation shards to evaluate on', required: true }),
    dictionary: Flags.string({ description: 'a `sae synth` output directory (or its dictionary.safetensors): also report recovery of its true features' }),
    exported: Flags.string({ description: 'a JumpReLU export of this SAE (sae export): also evaluate it one token at a time and report batch-mode and threshold-mode L0 and FVU side by side (appendix B)' }),
    'batch-size': Flags.integer({ description: 'tokens per batch for batch selections (default: the training batch size)' }),
    'max-rows': Flags.integer({ description: 'evaluate at most this many rows (the last batch may be partial; it is evaluated as a batch of its own size)' }),
    threshold: Flags.string({ description: 'cosine threshold for a recovered feature', default: '0.9' }),
    'features-out': Flags.string({ description: 'also write per-feature statistics (rank, density, mean and max activation, decoder norm, dying, never fired) to this file: Parquet if it ends in .parquet, CSV if .csv' }),
    force: Flags.boolean({ description: 'let --features-out replace an existing file that is not an earlier feature table' }),
    json: Flags.boolean({ description: 'print the result as one JSON object on stdout (schema sae-eval/1; this is also what eval prints without the flag)' }),
    'allow-no-manifest': sharedFlags['allow-no-manifest'],
    kernels: sharedFlags.kernels,
    precision: sharedFlags.precision,
    hook: sharedFlags.hook,
  };

  async run(): Promise<void> {
    const { flags } = await this.parse(Eval);
    const sae = await openSae(flags.checkpoint, { hook: flags.hook });
    const set = await openShards(flags.data, { allowNoManifest: flags['allow-no-manifest'] });
    sae.checkData(set.meta);
    const threshold = Number(flags.threshold);
    if (!(threshold > -1 && threshold <= 1)) throw new UserError(`--threshold must be a cosine in (-1, 1], got "${flags.threshold}"`);
    const batchSize = flags['batch-size'] ?? sae.batchSize;
    if (batchSize < 1) throw new UserError('--batch-size must be ≥ 1');
    if (flags['max-rows'] !== undefined && flags['max-rows'] < 1) throw new UserError('--max-rows must be ≥ 1');
    if (flags['features-out']) await checkFeaturesOut(flags['features-out'], flags.force);
    // the dictionary is checked before the evaluation, not after it
    const dict = flags.dictionary ? await loadDictionary(await dictionaryDir(flags.dictionary)) : null;
    if (dict && dict.d !== sae.d) throw new UserError(`dictionary has d=${dict.d} but the SAE has d=${sae.d}`);
    const res = await evaluateSae(sae.params, set, sae.selection(), {
      batchSize,
      maxRows: flags['max-rows'],
      kernels: kernelFactory(flags.kernels as KernelName, parsePrecision(flags.precision)),
    });
    const { json: out, table } = evalSummary(sae, res, { data: flags.data, batchSize, featuresOut: flags['features-out'] });
    // appendix B's gap: the same rows through the export's thresholds, a token at a time
    const thresholdMode = flags.exported ? await this.thresholdMode(sae, flags.exported, set, { batchSize, maxRows: flags['max-rows'], kernels: flags.kernels, precision: flags.precision, hook: flags.hook }) : null;
    if (thresholdMode) out.thresholdMode = { ...thresholdMode, l0Gap: thresholdMode.l0 - res.l0, fvuGap: thresholdMode.fvu - res.fvu };
    const F = sae.F;
    let line =
      `${sae.cfg.architecture} F=${F}: ${res.rows} rows in ${res.batches} batch${res.batches === 1 ? "" : "es"}` +
      `${res.lastBatchRows < batchSize ? ` (last one ${res.lastBatchRows} rows)` : ''}, L0 ${res.l0.toFixed(2)}, FVU ${res.fvu.toFixed(4)}, ` +
      `never fired on these ${res.rows} tokens ${(100 * res.neverFiredFraction).toFixed(2)}%, dying ${(100 * table.dyingCount / F).toFixed(2)}%`;
    if (thresholdMode) line += `; threshold mode (${flags.exported}): L0 ${thresholdMode.l0.toFixed(2)}, FVU ${thresholdMode.fvu.toFixed(4)}`;
    if (dict) {
      const rec = featureRecovery(dict.G, dict.fTrue, sae.params.Wdec, F, dict.d, threshold);
      out.recovery = rec;
      line += `, recovery: mean max cos ${rec.meanMaxCos.toFixed(3)}, ${(100 * rec.fractionRecovered).toFixed(1)}% of true features ≥ ${threshold}`;
    }
    if (flags['features-out']) {
      // the file may have appeared while evaluating
      await checkFeaturesOut(flags['features-out'], flags.force);
      await writeFeatures(flags['features-out'], table);
      line += `; per-feature statistics in ${flags['features-out']}`;
    }
    this.info(line);
    process.stdout.write(JSON.stringify(out) + '\n');
  }

  /** L0 and FVU of a JumpReLU export of `sae` on the same rows (per-token thresholds need no batch). */
  private async thresholdMode(
    sae: Sae,
    exported: string,
    set: ShardSet,
    o: { batchSize: number; maxRows?: number; kernels: string; precision: string; hook?: string },
  ): Promise<{ checkpoint: string; l0: number; fvu: number; mse: number }> {
    const ex = await openSae(exported, { hook: o.hook });
    if (!ex.threshold) throw new UserError(`--exported ${exported} is not a JumpReLU export (sae export); pass it as --checkpoint`);
    if (ex.F !== sae.F || ex.d !== sae.d || ex.hook !== sae.hook) throw new UserError(`--exported ${exported} is not an export of this SAE (hook ${ex.hook}, width ${ex.F})`);
    const r = await evaluateSae(ex.params, set, ex.selection(), { batchSize: o.batchSize, maxRows: o.maxRows, kernels: kernelFactory(o.kernels as KernelName, parsePrecision(o.precision)) });
    return { checkpoint: ex.dir, l0: r.l0, fvu: r.fvu, mse: r.mse };
  }
}
