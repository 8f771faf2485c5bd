import { Args, Flags } from '@oclif/core';
import { SaeCommand } from '../util/command.js';
import { UserError } from '../util/errors.js';
import { Progress, fmtTokens } from '../util/progress.js';
import { sharedFlags } from '../cli/flags.js';
import { kernelFactory, lmKernelFactory, type KernelName } from '../kernels/index.js';
import { parsePrecision } from '../kernels/bf16.js';
import { loadModel } from '../lm/load.js';
import { checkModelSpec, resolveModel } from '../lm/hub.js';
import { loadTokenizer, type LmTokenizer } from '../lm/tokenizer.js';
import { sameModel } from '../lm/identity.js';
import { openCorpus } from '../corpus/corpus.js';
import { openSae, type Sae } from '../sae/sae.js';
import { openShards } from '../store/shard-set.js';
import { checkOutFile } from '../store/outputs.js';
import { ENCODE_MODES, modeSelection, type EncodeMode } from '../eval/encode.js';
import { DEFAULT_ROW_GROUP_ROWS, ENCODE_FORMATS, FileNdjsonSink, ParquetSink, StreamNdjsonSink, type EncodeSink, type TokenText } from '../eval/encode-output.js';
import { checkShards, encodeStream, pipedInput, shardInput, textDocuments, textInput, type EncodeInput } from '../pipeline/encode.js';

const DEFAULTS = { ctx: 64, batch: 8 };
/** flags that shape how text becomes contexts: they mean nothing for shards */
const TEXT_ONLY = ['ctx', 'batch', 'pad', 'skip-bos', 'text-field'] as const;
/** flags of --shards */
const SHARDS_ONLY = ['follow', 'allow-no-manifest'] as const;

type Flags = Record<(typeof TEXT_ONLY)[number] | (typeof SHARDS_ONLY)[number], unknown>;

/** The token text of an id, each id decoded once. */
function tokenText(tok: LmTokenizer | null): TokenText {
  if (!tok) return () => null;
  const cache = new Map<number, string>();
  return (id) => {
    let t = cache.get(id);
    if (t === undefined) cache.set(id, (t = tok.decode([id])));
    return t;
  };
}

export default class Encode extends SaeCommand {
  static override description =
    'Encode tokens with an SAE: text through the host LM (--model; the hook is the SAE\'s), or activation shards (--shards DIR, or - for the announcements of sae harvest --ndjson), to the active features of every token, as NDJSON lines {context, position, token, token_id, features: [[id, value], …]} (largest value first) or Parquet with the same columns. Streams: memory stays flat whatever the corpus size';

  static override examples = [
    '<%= config.bin %> encode --checkpoint runs/mc --model fixtures/hf-tiny/gpt2-brown --text "The cat sat on the mat."',
    '<%= config.bin %> encode --checkpoint runs/mc-jumprelu --mode threshold --model gpt2 docs/*.jsonl --text-field body --out codes.parquet',
    '<%= config.bin %> encode --checkpoint runs/mc --shards acts/ --model gpt2 --out codes.ndjson',
    '<%= config.bin %> harvest --model gpt2 --hook blocks.6.hook_resid_pre --out acts/ --ndjson | <%= config.bin %> encode --checkpoint runs/mc --shards - > codes.ndjson',
    '<%= config.bin %> encode --checkpoint runs/mc --model gpt2 --text "Hello world" | jq -c .features',
  ];

  static override strict = false;

  static override args = {
    // ignoreStdin: without it oclif takes whatever stdin holds as this argument when none is
    // given, eating the announcements of --shards -
    corpus: Args.string({ description: 'text to encode through --model: files, folders or globs (.txt, .jsonl, .parquet), or - for text / JSONL on stdin', ignoreStdin: true }),
  };

  static override flags = {
    checkpoint: Flags.string({ description: 'the SAE: a checkpoint folder or run directory, a SAELens / sparsify / dictionary_learning folder, or hf:OWNER/REPO[/SUBFOLDER][@REVISION]', required: true }),
    mode: Flags.string({
      description: "batch: the SAE's own selection (TopK, Mutual or Feature Choice) over batches of its training batch size, so a token's codes depend on the tokens batched with it; threshold: its exported JumpReLU thresholds (sae export), one token at a time, what a single-token user gets",
      options: [...ENCODE_MODES],
      default: 'batch',
    }),
    text: Flags.string({ description: 'a text to encode through --model (one document; repeat the flag for more)', multiple: true }),
    model: Flags.string({ description: "host LM: a Hugging Face model folder or Hub id, the SAE's (needed for text; with --shards it names the tokens)" }),
    revision: Flags.string({ description: 'Hub revision of --model' }),
    'allow-other-model': Flags.boolean({ description: 'run text through a --model other than the one the SAE was trained on (a deliberate transfer experiment)' }),
    ctx: Flags.integer({ description: `text: tokens per context, BOS first (default ${DEFAULTS.ctx})` }),
    batch: Flags.integer({ description: `text: contexts per forward pass (default ${DEFAULTS.batch})` }),
    pad: Flags.boolean({ description: 'text: one document per context, padded (padding is not encoded), instead of documents joined with EOS as sae harvest packs them' }),
    'skip-bos': Flags.boolean({ description: 'text: leave position 0 (BOS) out' }),
    'text-field': Flags.string({ description: 'text: JSONL field / Parquet column holding the text (default text)' }),
    shards: Flags.string({ description: 'encode activation shards instead of text: a shard folder (or file), read in stored order, or - for the shards sae harvest --ndjson / sae shuffle --ndjson announce on stdin' }),
    follow: Flags.boolean({ description: 'with --shards -: if the upstream stage dies, wait for its folder to be completed instead of failing' }),
    'allow-no-manifest': Flags.boolean({ description: 'read a --shards folder of .parquet files that has no manifest.json (a hand-made set); without it such a folder counts as an unfinished write and is refused' }),
    out: Flags.string({ description: 'write to this file instead of stdout (complete or absent: written under a temporary name, renamed when done); an existing file that is not an earlier encode output needs --force' }),
    format: Flags.string({ description: 'ndjson | parquet (default: parquet when --out ends in .parquet, else ndjson); Parquet needs --out', options: [...ENCODE_FORMATS] }),
    'row-group-rows': Flags.integer({ description: `Parquet: tokens per row group, the rows held in memory before they are written (default ${DEFAULT_ROW_GROUP_ROWS})` }),
    force: Flags.boolean({ description: 'let --out replace an existing file that is not an earlier encode output' }),
    quiet: Flags.boolean({ description: 'no progress on stderr' }),
    kernels: sharedFlags.kernels,
    precision: sharedFlags.precision,
    hook: sharedFlags.hook,
  };

  async run(): Promise<void> {
    const { argv, flags } = await this.parse(Encode);
    const inputs = argv as string[];
    const texts = flags.text ?? [];
    const isText = inputs.length > 0 || texts.length > 0;
    if (isText && flags.shards) throw new UserError('give text (corpus arguments or --text) or --shards, not both');
    if (!isText && !flags.shards) throw new UserError('nothing to encode: give text (files, folders, globs, - for stdin, or --text STRING) with --model, or --shards DIR (- for the announcements of sae harvest --ndjson)');
    const stray = (isText ? SHARDS_ONLY : TEXT_ONLY).find((f) => (flags as Flags)[f] !== undefined && (flags as Flags)[f] !== false);
    if (stray) throw new UserError(`--${stray} applies to ${isText ? '--shards' : 'text'}`);
    const ctx = flags.ctx ?? DEFAULTS.ctx;
    const batch = flags.batch ?? DEFAULTS.batch;
    if (ctx < 2) throw new UserError(`--ctx must be at least 2, got ${ctx}`);
    if (batch < 1) throw new UserError('--batch must be ≥ 1');
    if (isText && !flags.model) throw new UserError('encoding text needs --model: the host LM the SAE was trained on (e.g. --model gpt2)');
    const format = flags.format ?? (flags.out?.toLowerCase().endsWith('.parquet') ? 'parquet' : 'ndjson');
    if (format === 'parquet' && !flags.out) throw new UserError('--format parquet writes a file: add --out FILE.parquet');
    const rowGroupRows = flags['row-group-rows'] ?? DEFAULT_ROW_GROUP_ROWS;
    if (rowGroupRows < 1) throw new UserError('--row-group-rows must be ≥ 1');
    if (flags['row-group-rows'] !== undefined && format !== 'parquet') throw new UserError('--row-group-rows applies to Parquet output');
    if (flags.out) await checkOutFile(flags.out, '--out', 'encode', flags.force);

    const mode = flags.mode as EncodeMode;
    const sae = await openSae(flags.checkpoint, { hook: flags.hook, model: flags.model });
    // threshold mode on a checkpoint without an export fails before any model loads
    modeSelection(sae, mode);
    if (flags.model) {
      // a missing folder is named as such, not as another model
      await checkModelSpec(flags.model);
      if (!flags['allow-other-model'] && !sameModel(sae.model, flags.model)) {
        throw new UserError(`the SAE was trained on ${sae.model} but --model is ${flags.model}; add --allow-other-model to encode with another model`);
      }
    }
    const progress = new Progress('encode', !flags.quiet);
    const precision = parsePrecision(flags.precision);
    let tokenizer: LmTokenizer | null = null;
    let input: EncodeInput;
    if (isText) {
      // the corpus first: a bad one fails before any model loads
      const corpus = inputs.length ? await openCorpus({ inputs, textField: flags['text-field'] }) : null;
      const { model, dir } = await loadModel(flags.model!, { revision: flags.revision, kernels: lmKernelFactory(flags.kernels as KernelName, precision), onProgress: (m) => progress.line(m) });
      tokenizer = await loadTokenizer(dir);
      input = textInput(sae, model, tokenizer, textDocuments(texts, corpus), { ctx, batch, pad: flags.pad, skipBos: flags['skip-bos'], modelName: flags.model! });
    } else {
      if (flags.model) tokenizer = await loadTokenizer((await resolveModel(flags.model, { revision: flags.revision, onProgress: (m) => progress.line(m) })).dir);
      const named = tokenizer ? { tok: tokenizer, model: flags.model! } : null;
      if (flags.shards === '-') input = await pipedInput(process.stdin, sae, named, { follow: flags.follow });
      else {
        const set = await openShards(flags.shards!, { allowNoManifest: flags['allow-no-manifest'] });
        checkShards(sae, set.meta, named);
        input = shardInput(set, flags.shards!);
      }
    }
    await this.encode(sae, input, { ...flags, mode, format, rowGroupRows, tokenizer }, progress);
  }

  private async encode(
    sae: Sae,
    input: EncodeInput,
    o: { mode: EncodeMode; format: string; rowGroupRows: number; tokenizer: LmTokenizer | null; out?: string; force: boolean; checkpoint: string; kernels: string; precision: string },
    progress: Progress,
  ): Promise<void> {
    const provenance = { 'sae.encode.checkpoint': o.checkpoint, 'sae.encode.mode': o.mode, 'sae.encode.hook': sae.hook, 'sae.encode.model': sae.model, 'sae.encode.batch_size': String(sae.batchSize) };
    const sink: EncodeSink = !o.out ? new StreamNdjsonSink(process.stdout) : o.format === 'parquet' ? new ParquetSink(o.out, o.rowGroupRows, provenance) : new FileNdjsonSink(o.out);
    const controller = new AbortController();
    const onSigint = () => {
      if (controller.signal.aborted) process.exit(130);
      progress.line('interrupt: stopping after the batch in flight');
      controller.abort();
    };
    process.on('SIGINT', onSigint);
    const t0 = Date.now();
    try {
      const s = await encodeStream({
        sae,
        input,
        mode: o.mode,
        kernels: kernelFactory(o.kernels as KernelName, parsePrecision(o.precision)),
        sink,
        token: tokenText(o.tokenizer),
        signal: controller.signal,
        onProgress: (rows) => {
          if (input.rows) progress.tick(rows, input.rows);
          else progress.status(`${fmtTokens(rows)} tokens`);
          if (rows > 0) progress.report(() => `${fmtTokens(rows)} tokens, ${(rows / Math.max((Date.now() - t0) / 1000, 1e-3)).toFixed(0)} tok/s`);
        },
      });
      progress.done();
      if (s.stopped === 'interrupted') {
        progress.line(`interrupted after ${s.rows} tokens${o.out ? `; ${o.out} was not written` : ''}`);
        this.exit(130);
      }
      if (s.stopped === 'end' && o.out) {
        // the file may have appeared while encoding
        try {
          await checkOutFile(o.out, '--out', 'encode', o.force);
        } catch (err) {
          await sink.abort();
          throw err;
        }
        await sink.finish();
      }
      // a reader that went away (| head) took what it wanted: nothing more to say
      if (s.stopped === 'closed') return;
      const how = o.mode === 'batch' ? `batch mode, batches of ${sae.batchSize}` : 'threshold mode';
      progress.line(`encoded ${s.rows} tokens (${how}), L0 ${(s.nnz / Math.max(s.rows, 1)).toFixed(2)}, in ${((Date.now() - t0) / 1000).toFixed(1)}s${o.out ? ` into ${o.out}` : ''}`);
    } finally {
      process.off('SIGINT', onSigint);
    }
  }
}
