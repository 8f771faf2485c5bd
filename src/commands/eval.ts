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
import { kernelFactory, lmKernelFactory, type KernelName } from '../kernels/index.js';
import { parsePrecision } from '../kernels/bf16.js';
import { checkFeaturesOut, writeFeatures } from '../eval/features.js';
import { evalSummary } from '../eval/summary.js';
import { loadModel } from '../lm/load.js';
import { checkModelSpec } from '../lm/hub.js';
import { loadTokenizer } from '../lm/tokenizer.js';
import { sameModel } from '../lm/identity.js';
import { openCorpus, type Corpus } from '../corpus/corpus.js';
import { SYNTHETIC_MODEL } from '../store/outputs.js';
import { spliceEval, type SpliceSae } from '../eval/splice.js';
import { checkSaebenchOut, coreOutput, sparsityVariancePass, weightMetrics, writeSaebench, SAEBENCH_COMMIT, SAEBENCH_VERSION } from '../eval/saebench.js';
import { Progress } from '../util/progress.js';

/** The flags --saebench reads. */
type SbFlags = {
  saebench?: string; model?: string; revision?: string; text?: string[]; 'text-field'?: string; ctx?: number; 'batch-prompts'?: number; 'max-tokens'?: number;
  'allow-other-model'?: boolean; force?: boolean; kernels: string; precision: string;
};

/** --dictionary names the synth folder; its dictionary.safetensors itself is accepted too. */
async function dictionaryDir(p: string): Promise<string> {
  const kind = await pathKind(p);
  if (kind === 'dir') return p;
  if (kind === 'file' && path.basename(p) === DICTIONARY_FILE) return path.dirname(p);
  if (kind === 'file') throw new UserError(`--dictionary ${p} is a file; pass the \`sae synth\` output folder (the one holding ${DICTIONARY_FILE})`);
  throw new UserError(`--dictionary ${p}: no such folder`);
}

/** SAEBench's core defaults: context_size, batch_size_prompts, and its tokens for the CE metrics */
const SB = { ctx: 128, batch: 16, maxTokens: 20480 };
const SB_ONLY = ['revision', 'text', 'text-field', 'ctx', 'batch-prompts', 'max-tokens', 'allow-other-model'] as const;

export default class Eval extends SaeCommand {
  static override description = 'Evaluate an SAE on activation shards: L0 and its histogram, MSE, FVU, never-fired and dying %, the sorted density curve and its Zipf fit, and feature recovery against a synthetic dictionary (SPEC §9, §11). Prints one JSON object (schema sae-eval/1) on stdout.';

  static override examples = [
    '<%= config.bin %> eval --checkpoint runs/mc/final --data synth/ --dictionary synth/',
    '<%= config.bin %> eval --checkpoint runs/mc/final --data shards/ --features-out features.parquet --json',
  ];

  static override flags = {
    checkpoint: Flags.string({ description: 'the SAE: a checkpoint folder or run directory, a SAELens / sparsify / dictionary_learning folder, or hf:OWNER/REPO[/SUBFOLDER][@REVISION]', required: true }),
    data: Flags.string({ description: 'activation shards to evaluate on', required: true }),
    dictionary: Flags.string({ description: 'a `sae synth` output directory (or its dictionary.safetensors): also report recovery of its true features' }),
    exported: Flags.string({ description: 'a JumpReLU export of this SAE (sae export): also evaluate it one token at a time and report batch-mode and threshold-mode L0 and FVU side by side (appendix B)' }),
    'batch-size': Flags.integer({ description: 'tokens per batch for batch selections (default: the training batch size)' }),
    'max-rows': Flags.integer({ description: 'evaluate at most this many rows (the last batch may be partial; it is evaluated as a batch of its own size)' }),
    threshold: Flags.string({ description: 'cosine threshold for a recovered feature', default: '0.9' }),
    'features-out': Flags.string({ description: 'also write per-feature statistics (rank, density, mean and max activation, decoder norm, dying, never fired) to this file: Parquet if it ends in .parquet, CSV if .csv' }),
    force: Flags.boolean({ description: 'let --features-out replace an existing file that is not an earlier feature table, and --saebench one that is not an earlier SAEBench core output' }),
    saebench: Flags.string({ description: `also run SAEBench's core eval (sae-bench ${SAEBENCH_VERSION}, commit ${SAEBENCH_COMMIT.slice(0, 7)}) on held-out text through --model and write its output, in SAEBench's schema, to this file` }),
    model: Flags.string({ description: 'the host LM for --saebench (as splice-eval --model): a Hugging Face model folder or Hub id' }),
    revision: Flags.string({ description: '--saebench: Hub revision of --model' }),
    text: Flags.string({ multiple: true, description: '--saebench: held-out text (files, folders or globs: .txt, .jsonl, .parquet); default: the held-out slice of the embedded Brown corpus' }),
    'text-field': Flags.string({ description: '--saebench: JSONL field / Parquet column holding the text (default text)' }),
    ctx: Flags.integer({ description: `--saebench: tokens per context, BOS first (SAEBench's context_size; default ${SB.ctx})` }),
    'batch-prompts': Flags.integer({ description: `--saebench: contexts per forward pass (SAEBench's batch_size_prompts; default ${SB.batch})` }),
    'max-tokens': Flags.integer({ description: `--saebench: tokens to count, special tokens aside (default ${SB.maxTokens}: SAEBench's 10 batches of 16 contexts of 128)` }),
    'allow-other-model': Flags.boolean({ description: '--saebench: run the SAE in a --model other than the one it was trained on' }),
    json: Flags.boolean({ description: 'print the result as one JSON object on stdout (schema sae-eval/1; this is also what eval prints without the flag)' }),
    'allow-no-manifest': sharedFlags['allow-no-manifest'],
    kernels: sharedFlags.kernels,
    precision: sharedFlags.precision,
    hook: sharedFlags.hook,
  };

  async run(): Promise<void> {
    const { flags } = await this.parse(Eval);
    if (flags.saebench && !flags.model) throw new UserError('--saebench needs --model: the host LM to run the held-out text through (as splice-eval --model)');
    const stray = SB_ONLY.find((f) => flags[f] !== undefined && flags[f] !== false);
    if (stray && !flags.saebench) throw new UserError(`--${stray} applies to --saebench`);
    const sae = await openSae(flags.checkpoint, { hook: flags.hook, model: flags.model });
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
    const corpus = flags.saebench ? await this.saebenchChecks(sae, flags) : null;
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
    if (corpus) line += '; ' + (await this.saebench(sae, corpus, flags));
    this.info(line);
    process.stdout.write(JSON.stringify(out) + '\n');
  }

  /** Everything --saebench needs that can be refused before any work; returns the held-out corpus. */
  private async saebenchChecks(sae: Sae, flags: SbFlags): Promise<Corpus> {
    await checkSaebenchOut(flags.saebench!, !!flags.force);
    if (sae.model === SYNTHETIC_MODEL) throw new UserError(`${sae.dir} was trained on synthetic activations (sae synth): it has no host model for --saebench`);
    for (const f of ['ctx', 'batch-prompts', 'max-tokens'] as const) if (flags[f] !== undefined && flags[f]! < (f === 'ctx' ? 2 : 1)) throw new UserError(`--${f} must be ≥ ${f === 'ctx' ? 2 : 1}`);
    // both passes read the text from its start: a pipe cannot be read twice
    if (flags.text?.includes('-')) throw new UserError('--text -: --saebench reads the text twice, which stdin cannot be; save it to a file');
    await checkModelSpec(flags.model!);
    if (!flags['allow-other-model'] && !sameModel(sae.model, flags.model!)) throw new UserError(`the SAE was trained on ${sae.model} but --model is ${flags.model}; add --allow-other-model to run it in another model`);
    return openCorpus(flags.text?.length ? { inputs: flags.text, textField: flags['text-field'] } : { brown: 'heldout' });
  }

  /**
   * SAEBench's core eval (src/eval/saebench.ts): splice-eval gives the CE and KL metrics, a second
   * pass over the same contexts the reconstruction, shrinkage and sparsity metrics, in raw units.
   */
  private async saebench(sae: Sae, corpus: Corpus, flags: SbFlags): Promise<string> {
    const file = flags.saebench!;
    const ctx = flags.ctx ?? SB.ctx, batch = flags['batch-prompts'] ?? SB.batch, maxTokens = flags['max-tokens'] ?? SB.maxTokens;
    const precision = parsePrecision(flags.precision);
    const progress = new Progress('saebench');
    const { model, dir } = await loadModel(flags.model!, { revision: flags.revision, kernels: lmKernelFactory(flags.kernels as KernelName, precision), onProgress: (m) => progress.line(m) });
    if (sae.d !== model.cfg.dModel) throw new UserError(`the SAE has d_in ${sae.d} but ${flags.model} has d_model ${model.cfg.dModel}`);
    const tokenizer = await loadTokenizer(dir);
    const kernels = kernelFactory(flags.kernels as KernelName, precision);
    const spliced = (): SpliceSae => ({ label: sae.threshold ? 'jumprelu' : 'batch', params: sae.params, selectionFor: sae.selection(), batchSize: sae.batchSize, preprocessing: sae.preprocessing, scale: sae.scale });
    const common = { model, tokenizer, corpus, hook: sae.hook, ctx, batch, maxTokens, kernels };
    const tick = (n: number) => progress.tick(Math.min(n, 2 * maxTokens), 2 * maxTokens);
    const splice = await spliceEval({ ...common, saes: [spliced()], onProgress: tick });
    const pass = await sparsityVariancePass({ ...common, sae: spliced(), onProgress: (n) => tick(maxTokens + n) });
    progress.done();
    // the two passes read the same contexts; anything else is a bug, not a user error
    if (pass.tokens !== splice.tokens || pass.contexts !== splice.contexts) throw new Error(`saebench: the second pass read ${pass.tokens} tokens in ${pass.contexts} contexts, splice-eval ${splice.tokens} in ${splice.contexts}`);
    const fp32 = lmKernelFactory(flags.kernels as KernelName, 'fp32');
    const weights = weightMetrics(sae.params, (...a) => fp32.linear(...a));
    const out = coreOutput({
      splice, pass, params: sae.params, cfg: { ...sae.cfg }, modelName: sae.model, dataset: corpus.describe(), ctx, batchPrompts: batch, weights,
      unstructured: {
        producer: `sae eval --saebench, following SAEBench ${SAEBENCH_COMMIT.slice(0, 7)} sae_bench/evals/core/main.py`,
        checkpoint: sae.dir, model: flags.model, hook: sae.hook, corpus: corpus.describe(),
        selection: sae.threshold ? 'per token (JumpReLU thresholds)' : `the training selection (${sae.cfg.architecture}) over batches of ${sae.batchSize} tokens`,
        positions: `the first ${ctx - 1} positions of each context of ${ctx} (the last is only a target), BOS/EOS positions excluded from every average and not reconstructed`,
        ablation: 'zero',
        space: 'raw hook activations: the SAE preprocessing applied on the way in and inverted on the way out',
        definitions: {
          explained_variance: "SAEBench 8042bb3 (SAELens < 6.45.1): 1 − mean_b E‖x−x̂‖² / (mean_b E‖x‖² − (mean_b mean_j E[x_j²])²), per LM batch b",
          explained_variance_legacy: 'mean over tokens of 1 − ‖x−x̂‖² / ‖x − mean of its batch‖² (the SAEBench paper’s)',
          explained_variance_conventional: '1 − Σ‖x−x̂‖² / Σ‖x−x̄‖² over all tokens (1 − FVU, SPEC §9; SAELens ≥ 6.45.1)',
          mse: "SAEBench's: mean over tokens of ‖x−x̂‖² / (tokens in its batch); mse_per_token: mean over tokens of ‖x−x̂‖²",
          sae_space: "l0 and FVU in the SAE's preprocessed space, as splice-eval reports them on these tokens",
        },
      },
    });
    // the file may have appeared meanwhile
    await checkSaebenchOut(file, !!flags.force);
    await writeSaebench(file, out);
    const m = out.eval_result_metrics;
    return `SAEBench core eval in ${file}: ce_loss_score ${m.model_performance_preservation.ce_loss_score.toFixed(4)}, kl_div_score ${m.model_behavior_preservation.kl_div_score.toFixed(4)}, explained_variance ${m.reconstruction_quality.explained_variance.toFixed(4)}, l0 ${m.sparsity.l0.toFixed(2)} over ${splice.tokens} tokens`;
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
