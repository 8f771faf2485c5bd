import * as os from 'node:os';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { Args, Flags } from '@oclif/core';
import { SaeCommand } from '../util/command.js';
import { UserError } from '../util/errors.js';
import { Progress } from '../util/progress.js';
import { sharedFlags } from '../cli/flags.js';
import { kernelFactory, lmKernelFactory, type KernelName } from '../kernels/index.js';
import { parsePrecision } from '../kernels/bf16.js';
import { loadModel } from '../lm/load.js';
import { checkModelSpec } from '../lm/hub.js';
import { sameModel } from '../lm/identity.js';
import { loadTokenizer } from '../lm/tokenizer.js';
import { openCorpus, type CorpusSpec } from '../corpus/corpus.js';
import { openSae } from '../sae/sae.js';
import { ENCODE_MODES, modeSelection, type EncodeMode } from '../eval/encode.js';
import { featurePassBytes } from '../eval/feature-pass.js';
import { SYNTHETIC_MODEL } from '../store/outputs.js';
import { checkFeaturesOut, features, type FeaturesSaeInput } from '../pipeline/features.js';

export default class Features extends SaeCommand {
  static override description =
    'Look inside SAEs: one pass of the host LM over a corpus collects, per feature, its top activating contexts, samples from its activation bands, its activation histogram, density and Zipf rank, and the output tokens it promotes and suppresses; per token, how many features it got (appendix D). Writes a folder with a JSON index, one page of data per feature, and a static feature browser (index.html, opens from file://); prints its path';

  static override examples = [
    '<%= config.bin %> features --checkpoint runs/mc --model fixtures/hf-tiny/gpt2-brown --out features-mc',
    '<%= config.bin %> features --checkpoint runs/mc --checkpoint runs/topk --model gpt2 --max-tokens 1000000 --out features',
    'xdg-open "$(<%= config.bin %> features --checkpoint runs/mc --model gpt2 --out f --open 1234)"',
  ];

  static override strict = false;

  static override args = {
    // ignoreStdin: oclif would otherwise read a piped stdin as the argument itself; '-' names stdin
    corpus: Args.string({ description: 'text: files, folders or globs (.txt, .jsonl, .parquet), or -; default: the held-out slice of the embedded Brown corpus', ignoreStdin: true }),
  };

  static override flags = {
    checkpoint: Flags.string({ description: 'an SAE (a run directory, checkpoint folder, SAELens / sparsify / dictionary_learning folder, or hf:OWNER/REPO); repeat to compare SAEs of one model and hook side by side (e.g. Mutual Choice and TopK)', required: true, multiple: true }),
    label: Flags.string({ description: 'a name per --checkpoint, in the same order (default: the run folder’s name)', multiple: true }),
    model: Flags.string({ description: 'host LM: a Hugging Face model folder or Hub id (the one the SAEs were trained on)', required: true }),
    revision: Flags.string({ description: 'Hub revision of the model' }),
    'allow-other-model': Flags.boolean({ description: 'run the SAEs on a --model other than the one they were trained on' }),
    out: Flags.string({ description: 'the folder to write (replaced only when it is an earlier sae features folder, or with --force)', required: true }),
    force: Flags.boolean({ description: 'let --out replace an existing folder that is not an earlier sae features output' }),
    mode: Flags.string({ description: 'batch: each SAE’s own selection at its training batch size; threshold: its exported JumpReLU thresholds, per token', default: 'batch', options: [...ENCODE_MODES] }),
    'max-tokens': Flags.integer({ description: 'tokens to encode', default: 100_000 }),
    ctx: Flags.integer({ description: 'tokens per context, BOS first', default: 64 }),
    batch: Flags.integer({ description: 'contexts per forward pass', default: 8 }),
    'skip-bos': Flags.boolean({ description: 'leave position 0 (BOS) out, as a harvest with --skip-bos did' }),
    'text-field': Flags.string({ description: 'JSONL field / Parquet column holding the text (default text)' }),
    top: Flags.integer({ description: 'top activating examples kept per feature', default: 12 }),
    samples: Flags.integer({ description: 'firings sampled uniformly per feature, shown in activation bands', default: 16 }),
    bands: Flags.integer({ description: 'activation bands the samples are cut into', default: 4 }),
    before: Flags.integer({ description: 'tokens shown before the activating token', default: 8 }),
    after: Flags.integer({ description: 'tokens shown after it', default: 3 }),
    texts: Flags.integer({ description: 'contexts kept whole for the per-token view', default: 8 }),
    logits: Flags.integer({ description: 'promoted and suppressed output tokens listed per feature', default: 10 }),
    seed: Flags.integer({ description: 'seed of the uniform sample of firings', default: 0 }),
    open: Flags.integer({ description: 'print the address of this feature’s page (of the first SAE) instead of the browser’s index' }),
    json: Flags.boolean({ description: 'print the folder’s manifest (features.json) as JSON on stdout instead of the path' }),
    quiet: Flags.boolean({ description: 'no progress on stderr' }),
    kernels: sharedFlags.kernels,
    precision: sharedFlags.precision,
    hook: sharedFlags.hook,
  };

  async run(): Promise<void> {
    const { argv, flags } = await this.parse(Features);
    for (const [name, min] of [['max-tokens', 1], ['ctx', 2], ['batch', 1], ['top', 1], ['samples', 0], ['bands', 1], ['before', 0], ['after', 0], ['texts', 0], ['logits', 1]] as const) {
      if (flags[name] < min) throw new UserError(`--${name} must be ≥ ${min}`);
    }
    const checkpoints = flags.checkpoint;
    if (flags.label && flags.label.length !== checkpoints.length) throw new UserError(`give one --label per --checkpoint (${checkpoints.length}), or none`);
    await checkFeaturesOut(flags.out, flags.force);
    const mode = flags.mode as EncodeMode;
    const saes: FeaturesSaeInput[] = [];
    for (let i = 0; i < checkpoints.length; i++) {
      const sae = await openSae(checkpoints[i], { hook: flags.hook, model: flags.model });
      if (sae.model === SYNTHETIC_MODEL) throw new UserError(`${sae.dir} was trained on synthetic activations (sae synth): there is no host model to read text with`);
      if (!flags['allow-other-model'] && !sameModel(sae.model, flags.model)) {
        throw new UserError(`${checkpoints[i]} was trained on ${sae.model} but --model is ${flags.model}; add --allow-other-model to run it on another model`);
      }
      if (!sae.hook) throw new UserError(`${sae.dir}: its config does not say which hook it reads; pass --hook`);
      modeSelection(sae, mode); // threshold mode without thresholds: refused before the pass
      const first = saes[0]?.sae;
      if (first && (first.hook !== sae.hook || first.d !== sae.d)) throw new UserError(`${checkpoints[i]} reads ${sae.hook} (d_in ${sae.d}) but ${checkpoints[0]} reads ${first.hook} (d_in ${first.d}): one pass serves SAEs of one hook`);
      saes.push({ label: labelOf(flags.label?.[i] ?? checkpoints[i], saes.map((s) => s.label)), sae, mode });
    }
    // the pass preallocates its example pool: say so before the OS does, in one line
    const bytes = saes.reduce((t, s) => t + featurePassBytes(s.sae.F, flags), 0);
    if (bytes > os.totalmem() / 2) {
      throw new UserError(`--top ${flags.top}, --samples ${flags.samples} and a window of ${flags.before + 1 + flags.after} tokens need ${(bytes / 2 ** 30).toFixed(1)} GiB for ${saes.map((s) => s.sae.F).join(' + ')} features, more than half of this machine's memory; lower them`);
    }
    if (flags.open !== undefined && (flags.open < 0 || flags.open >= saes[0].sae.F)) throw new UserError(`--open ${flags.open}: feature ids of ${checkpoints[0]} run from 0 to ${saes[0].sae.F - 1}`);
    const inputs = argv as string[];
    const spec: CorpusSpec = inputs.length ? { inputs, textField: flags['text-field'] } : { brown: 'heldout' };
    const corpus = await openCorpus(spec);
    await checkModelSpec(flags.model);
    const progress = new Progress('features', !flags.quiet);
    const precision = parsePrecision(flags.precision);
    const { model, dir } = await loadModel(flags.model, { revision: flags.revision, kernels: lmKernelFactory(flags.kernels as KernelName, precision), onProgress: (m) => progress.line(m) });
    if (saes[0].sae.d !== model.cfg.dModel) throw new UserError(`the SAE has d_in ${saes[0].sae.d} but ${flags.model} has d_model ${model.cfg.dModel}`);
    const tokenizer = await loadTokenizer(dir);
    const r = await features({
      out: flags.out, force: flags.force, model, modelName: flags.model, tokenizer, corpus, saes,
      kernels: kernelFactory(flags.kernels as KernelName, precision),
      maxTokens: flags['max-tokens'], ctx: flags.ctx, batch: flags.batch, skipBos: flags['skip-bos'],
      top: flags.top, samples: flags.samples, bands: flags.bands, before: flags.before, after: flags.after, texts: flags.texts, logits: flags.logits, seed: flags.seed,
      onProgress: (n) => progress.tick(n, flags['max-tokens']),
      info: (l) => progress.line(l),
    });
    progress.done();
    const s = r.manifest.saes.map((x) => `${x.label} L0 ${x.l0.toFixed(2)}`).join(', ');
    this.info(`features: ${r.manifest.tokens} tokens, ${s}; the browser: ${r.index}`);
    const url = flags.open !== undefined ? `${pathToFileURL(path.resolve(r.index)).href}#feature=${saes[0].label}/${flags.open}` : r.index;
    process.stdout.write(flags.json ? JSON.stringify(r.manifest) + '\n' : url + '\n');
  }
}

/** A folder-safe label, unique among those taken: the run folder's name by default. */
export function labelOf(given: string, taken: string[]): string {
  const where = path.resolve(given.replace(/^hf:/, '').replace(/@.*$/, ''));
  // a run's checkpoint folder is named after the run
  const name = ['final', 'checkpoint'].includes(path.basename(where)) ? path.basename(path.dirname(where)) : path.basename(where);
  const base = name.replace(/[^A-Za-z0-9._-]+/g, '-').replace(/^[.-]+/, '') || 'sae';
  let label = base;
  for (let i = 2; taken.includes(label); i++) label = `${base}-${i}`;
  return label;
}
