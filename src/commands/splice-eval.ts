import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { Args, Flags } from '@oclif/core';
import { writeFileAtomic } from '../util/atomic.js';
import { SaeCommand } from '../util/command.js';
import { UserError } from '../util/errors.js';
import { Progress } from '../util/progress.js';
import { sharedFlags } from '../cli/flags.js';
import { kernelFactory, lmKernelFactory, type KernelName } from '../kernels/index.js';
import { parsePrecision } from '../kernels/bf16.js';
import { loadModel } from '../lm/load.js';
import { checkModelSpec } from '../lm/hub.js';
import { SYNTHETIC_MODEL } from '../pipeline/synth.js';
import { loadTokenizer } from '../lm/tokenizer.js';
import { openCorpus, type CorpusSpec } from '../corpus/corpus.js';
import { openSae, type Sae } from '../sae/sae.js';
import { spliceEval, type SpliceSae } from '../eval/splice.js';
import { checkOutFile, SPLICE_SCHEMA } from '../store/outputs.js';
import { sameModel } from '../lm/identity.js';

/**
 * Load an SAE and label it by what it is, not by the flag that named it: a JumpReLU export (it has
 * thresholds) is 'jumprelu', a training checkpoint (batch-dependent or per-token selection) 'batch'.
 */
async function saeFrom(p: string, where: { hook?: string; model?: string }): Promise<{ sae: Sae; splice: SpliceSae; exported: boolean }> {
  const sae = await openSae(p, where);
  const exported = sae.threshold !== undefined;
  // dataset_scale: the hook's raw activations are scaled by the SAE's recorded factor and its
  // reconstruction divided by it (SPEC §3)
  const splice: SpliceSae = { label: exported ? 'jumprelu' : 'batch', params: sae.params, selectionFor: sae.selection(), batchSize: sae.batchSize, preprocessing: sae.preprocessing, scale: sae.scale };
  return { sae, splice, exported };
}

export default class SpliceEval extends SaeCommand {
  static override description =
    'Splice an SAE into its host LM on held-out text and measure loss recovered (SPEC §9): next-token cross-entropy clean, with the hook replaced by the reconstruction, and zero-ablated; KL divergence and KL score; special tokens handled as SAELens does';

  static override examples = [
    '<%= config.bin %> splice-eval --checkpoint runs/mc --model fixtures/hf-tiny/gpt2 --max-tokens 20000',
    '<%= config.bin %> splice-eval --checkpoint runs/mc --exported runs/mc-jumprelu --model gpt2 eval.jsonl --json',
  ];

  static override strict = false;

  static override args = {
    corpus: Args.string({ description: 'held-out text: files, folders or globs (.txt, .jsonl, .parquet), or -; default: the held-out slice of the embedded Brown corpus' }),
  };

  static override flags = {
    checkpoint: Flags.string({ description: 'the SAE: a checkpoint folder or run directory, a SAELens / sparsify / dictionary_learning folder, or hf:OWNER/REPO[/SUBFOLDER][@REVISION]', required: true }),
    exported: Flags.string({ description: 'also evaluate its exported JumpReLU SAE (the --out of sae export; a training checkpoint is refused) and report the gap' }),
    model: Flags.string({ description: 'host LM: a Hugging Face model folder or Hub id (the one the SAE was trained on)', required: true }),
    revision: Flags.string({ description: 'Hub revision of the model' }),
    'max-tokens': Flags.integer({ description: 'tokens to count', default: 20000 }),
    ctx: Flags.integer({ description: 'tokens per context, BOS first', default: 64 }),
    batch: Flags.integer({ description: 'contexts per forward pass', default: 8 }),
    'include-special': Flags.boolean({ description: 'count (and reconstruct) BOS/EOS positions too; by default they keep their activation and are left out of every average' }),
    'mean-ablation': Flags.boolean({ description: 'also report the loss with the hook mean-ablated' }),
    'text-field': Flags.string({ description: 'JSONL field / Parquet column holding the text (default text)' }),
    'allow-other-model': Flags.boolean({ description: 'splice the SAE into a --model other than the one it was trained on (a deliberate transfer experiment)' }),
    json: Flags.boolean({ description: 'print the result as JSON on stdout (without it: one line per SAE, "<label> <loss recovered>%")' }),
    out: Flags.string({ description: 'also write the JSON result to this file (e.g. RUN/splice.json, which sae report reads); an existing file that is not an earlier splice-eval result needs --force' }),
    force: Flags.boolean({ description: 'let --out replace an existing file that is not an earlier splice-eval result' }),
    quiet: Flags.boolean({ description: 'no progress on stderr' }),
    kernels: sharedFlags.kernels,
    precision: sharedFlags.precision,
    hook: sharedFlags.hook,
  };

  async run(): Promise<void> {
    const { argv, flags } = await this.parse(SpliceEval);
    if (flags['max-tokens'] < 1) throw new UserError('--max-tokens must be ≥ 1');
    if (flags.batch < 1) throw new UserError('--batch must be ≥ 1');
    if (flags.out) await checkOutFile(flags.out, '--out', 'splice-eval', flags.force);
    const inputs = argv as string[];
    const spec: CorpusSpec = inputs.length ? { inputs, textField: flags['text-field'] } : { brown: 'heldout' };
    const corpus = await openCorpus(spec);
    const main = await saeFrom(flags.checkpoint, { hook: flags.hook, model: flags.model });
    if (main.sae.model === SYNTHETIC_MODEL) {
      throw new UserError(`${main.sae.dir} was trained on synthetic activations (sae synth), which have no host model to splice it into; splice-eval needs an SAE trained on a model's activations`);
    }
    // a missing folder is named as such, not as another model
    await checkModelSpec(flags.model);
    // an SAE only means something in the model it was trained on; a transfer experiment says so
    if (!flags['allow-other-model'] && !sameModel(main.sae.model, flags.model)) {
      throw new UserError(`the SAE was trained on ${main.sae.model} but --model is ${flags.model}; add --allow-other-model to splice it into another model`);
    }
    const saes = [main.splice];
    if (flags.exported) {
      if (main.exported) throw new UserError(`--checkpoint ${flags.checkpoint} is already a JumpReLU export; pass the training checkpoint as --checkpoint and this as --exported`);
      const ex = await saeFrom(flags.exported, { hook: flags.hook, model: flags.model });
      if (!ex.exported) throw new UserError(`--exported ${flags.exported} is a training checkpoint, not a JumpReLU export (sae export); pass it as --checkpoint`);
      if (ex.sae.hook !== main.sae.hook || ex.sae.F !== main.sae.F || !sameModel(main.sae.model, ex.sae.model)) {
        throw new UserError(`--exported ${flags.exported} is not an export of this SAE (model ${ex.sae.model}, hook ${ex.sae.hook}, width ${ex.sae.F})`);
      }
      saes.push(ex.splice);
    }
    const progress = new Progress('splice-eval', !flags.quiet);
    // one precision for the LM and the SAE, whatever the SAE was trained at (its weights are fp32)
    const precision = parsePrecision(flags.precision);
    const { model, dir } = await loadModel(flags.model, { revision: flags.revision, kernels: lmKernelFactory(flags.kernels as KernelName, precision), onProgress: (m) => progress.line(m) });
    if (main.sae.d !== model.cfg.dModel) throw new UserError(`the SAE has d_in ${main.sae.d} but ${flags.model} has d_model ${model.cfg.dModel}`);
    const tokenizer = await loadTokenizer(dir);
    const r = await spliceEval({
      model,
      tokenizer,
      corpus,
      hook: main.sae.hook,
      saes,
      ctx: flags.ctx,
      batch: flags.batch,
      maxTokens: flags['max-tokens'],
      includeSpecial: flags['include-special'],
      meanAblation: flags['mean-ablation'],
      kernels: kernelFactory(flags.kernels as KernelName, precision),
      onProgress: (n) => progress.tick(Math.min(n, flags['max-tokens']), flags['max-tokens']),
    });
    progress.done();
    const out = {
      schema: SPLICE_SCHEMA,
      checkpoint: flags.checkpoint,
      model: flags.model,
      corpus: corpus.describe(),
      trainedPrecision: main.sae.trainedPrecision,
      ...r,
      // appendix B's gap: threshold mode (the export) minus batch mode
      gap:
        r.spliced.length > 1
          ? {
              lossRecovered: r.spliced[1].lossRecovered - r.spliced[0].lossRecovered,
              loss: r.spliced[1].loss - r.spliced[0].loss,
              ...(r.spliced[0].l0 !== undefined && r.spliced[1].l0 !== undefined ? { l0: r.spliced[1].l0 - r.spliced[0].l0, fvu: r.spliced[1].fvu! - r.spliced[0].fvu! } : {}),
            }
          : undefined,
    };
    if (flags.out) {
      // the file may have appeared during the evaluation
      await checkOutFile(flags.out, '--out', 'splice-eval', flags.force);
      await writeFileAtomic(flags.out, JSON.stringify(out, null, 2) + '\n');
    }
    for (const s of r.spliced) {
      this.info(
        `${s.label}: loss recovered ${s.lossRecovered.toFixed(2)}% (clean ${r.cleanLoss.toFixed(4)}, spliced ${s.loss.toFixed(4)}, zero ${r.zeroLoss.toFixed(4)}), ` +
          `KL ${s.kl.toFixed(4)}, KL score ${s.klScore.toFixed(4)}${s.l0 !== undefined ? `, L0 ${s.l0.toFixed(2)}, FVU ${s.fvu!.toFixed(4)}` : ''} over ${r.tokens} tokens (special tokens ${r.specialTokens}${r.precision !== 'fp32' ? `, precision ${r.precision}` : ''})`,
      );
    }
    // stdout carries the result: the JSON, or one line per SAE "<label> <loss recovered>%" (README)
    process.stdout.write(flags.json ? JSON.stringify(out) + '\n' : r.spliced.map((s) => `${s.label} ${s.lossRecovered.toFixed(2)}%\n`).join(''));
  }
}
