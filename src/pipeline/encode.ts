/**
 * `sae encode` (issue 20): rows from text through the host LM, from a shard folder, or from shards
 * announced on a pipe → an SAE's codes per token (../eval/encode.ts) → a sink
 * (../eval/encode-output.ts), as a stream: memory is one forward pass (or one shard row group),
 * one SAE batch and one output row group, whatever the corpus's length.
 */
import type { Readable } from 'node:stream';
import type { KernelFactory } from '../kernels/types.js';
import type { Sae } from '../sae/sae.js';
import { CodeStream, type EncodedBlock, type EncodeMode } from '../eval/encode.js';
import type { EncodeSink, TokenText } from '../eval/encode-output.js';
import { ActivationRows, type RowSource } from '../harvest/rows.js';
import type { HookedTransformer } from '../lm/model.js';
import type { LmTokenizer } from '../lm/tokenizer.js';
import { parseHook } from '../lm/hooks.js';
import { openShards, type ShardSet } from '../store/shard-set.js';
import { readChunks } from '../store/row-reader.js';
import type { ShardMeta } from '../store/shard-format.js';
import { SYNTHETIC_MODEL } from '../store/outputs.js';
import { metaDigest, readAnnouncements } from '../stream/pipe.js';
import { UserError } from '../util/errors.js';

/** Rows with where each came from. */
export interface RowBlock {
  n: number;
  /** n×d */
  acts: Float32Array;
  tokenIds: Int32Array;
  contextIds: Int32Array;
  positions: Int32Array;
}

/** What `sae encode` reads. */
export interface EncodeInput {
  /** rows already in the SAE's input space (shards are preprocessed at harvest), else the hook's raw activations */
  preprocessed: boolean;
  /** rows known up front (a shard folder), for progress */
  rows?: number;
  /** the one line for an input that held no token */
  empty: string;
  blocks(): AsyncGenerator<RowBlock>;
}

/** Documents from `--text` strings (each one a document), then a corpus's, if any. */
export function textDocuments(texts: readonly string[], corpus: RowSource<unknown> | null): RowSource<unknown> {
  return {
    describe: () => [texts.length ? `${texts.length} --text` : '', corpus?.describe() ?? ''].filter(Boolean).join(' + '),
    async *documents() {
      // blank texts are skipped, as a corpus skips blank documents
      for (let i = 0; i < texts.length; i++) if (texts[i].trim()) yield { text: texts[i], position: { text: i } };
      if (corpus) yield* corpus.documents(null);
    },
  };
}

export interface TextInputOptions {
  ctx: number;
  /** contexts per forward pass */
  batch: number;
  /** one document per context (padded) instead of documents joined with EOS */
  pad: boolean;
  skipBos: boolean;
  /** the model as messages name it */
  modelName: string;
}

/**
 * Text through the host LM to the SAE's hook: the harvest's own row stream (contexts with BOS
 * first, EOS after each document), its last partial context included, rows raw (the SAE's
 * preprocessing is applied when they are encoded).
 */
export function textInput(sae: Sae, model: HookedTransformer, tokenizer: LmTokenizer, source: RowSource<unknown>, opts: TextInputOptions): EncodeInput {
  const hook = sae.hook;
  if (!hook) throw new UserError(`${sae.dir}: its config does not say which hook it reads; pass --hook`);
  const site = parseHook(hook, model.cfg);
  if (site.kind === 'pattern') throw new UserError(`the SAE reads ${hook}, an attention pattern, not an activation`);
  if (sae.d !== model.cfg.dModel) throw new UserError(`the SAE has d_in ${sae.d} but ${hook} of ${opts.modelName} has width ${model.cfg.dModel}`);
  if (opts.ctx < 2) throw new UserError(`--ctx must be at least 2, got ${opts.ctx}`);
  if (opts.ctx > model.cfg.nPositions) throw new UserError(`--ctx ${opts.ctx} is longer than the model's ${model.cfg.nPositions} positions`);
  return {
    preprocessed: false,
    empty: `no tokens to encode: ${source.describe() || 'the text'} holds no text (empty or blank documents only)`,
    async *blocks() {
      const rows = new ActivationRows(model, tokenizer, source, { hooks: [hook], ctx: opts.ctx, mode: opts.pad ? 'pad' : 'concat', skipBos: opts.skipBos, batch: opts.batch, model: opts.modelName, partialLast: true });
      for (;;) {
        const b = await rows.next();
        if (!b) return;
        yield { n: b.n, acts: b.acts[hook], tokenIds: b.tokenIds, contextIds: b.contextIds, positions: b.positions };
      }
    },
  };
}

/**
 * Refuse shards the SAE means nothing on (another hook, width, model, preprocessing or dataset
 * scale), and a tokenizer that did not make their token ids.
 */
export function checkShards(sae: Sae, meta: ShardMeta, tokenizer: { tok: LmTokenizer; model: string } | null): void {
  sae.checkData(meta);
  if (!tokenizer) return;
  if (meta.model === SYNTHETIC_MODEL) throw new UserError(`the shards hold synthetic activations (sae synth), whose rows are no tokens for --model ${tokenizer.model} to name; drop --model`);
  if (meta.tokenizer && meta.tokenizer !== tokenizer.tok.digest) {
    throw new UserError(`the shards' token ids come from another tokenizer than ${tokenizer.model}'s (tokenizer.json sha256 ${meta.tokenizer.slice(0, 12)}…, not ${tokenizer.tok.digest.slice(0, 12)}…); name the model that harvested them`);
  }
}

/** A shard folder (or file), rows in stored order: one Parquet row group at a time. */
export function shardInput(set: ShardSet, label: string): EncodeInput {
  return {
    preprocessed: true,
    rows: set.rows,
    empty: `no tokens to encode in ${label}`,
    async *blocks() {
      yield* readChunks(set);
    },
  };
}

/**
 * Shards announced on a pipe (`sae harvest --ndjson | sae encode --shards -`), each read in stored
 * order as it arrives. The first shard is waited for here and checked against the SAE before any
 * output is written; every later one must carry its metadata. The announcements' end line is
 * checked as `sae train --data -` checks it: without one the upstream died, which is an error
 * (after the rows that did arrive were written) unless `follow` waits for its folder.
 */
export async function pipedInput(input: Readable, sae: Sae, tokenizer: { tok: LmTokenizer; model: string } | null, opts: { follow?: boolean } = {}): Promise<EncodeInput> {
  const announced = readAnnouncements(input, { follow: opts.follow });
  const first = await announced.next();
  if (first.done) throw new UserError('the upstream stage announced no shards');
  const firstSet = await openShards(first.value.shard);
  checkShards(sae, firstSet.meta, tokenizer);
  // every shard's own metadata, not only its announcement, must be the first's
  const digest = metaDigest(firstSet.meta);
  return {
    preprocessed: true,
    empty: 'no tokens to encode: the announced shards hold no rows',
    async *blocks() {
      yield* readChunks(firstSet);
      for await (const a of announced) {
        const set = await openShards(a.shard);
        if (metaDigest(set.meta) !== digest) throw new UserError(`${a.shard}: metadata differs from the first shard's; one shard set per pipe`);
        yield* readChunks(set);
      }
    },
  };
}

export interface EncodeStreamOptions {
  sae: Sae;
  input: EncodeInput;
  mode: EncodeMode;
  kernels?: KernelFactory;
  sink: EncodeSink;
  token: TokenText;
  /** stop after the block in flight; the sink's output is discarded */
  signal?: AbortSignal;
  /** rows encoded so far, after each block of input */
  onProgress?: (rows: number) => void;
}

export interface EncodeSummary {
  rows: number;
  /** active (token, feature) pairs written */
  nnz: number;
  /** 'end': every row encoded, the sink ready to publish; 'closed': the reader went away; 'interrupted': the signal fired */
  stopped: 'end' | 'closed' | 'interrupted';
}

/**
 * Encode the input into the sink. On 'end' the caller publishes the sink (sink.finish()); on an
 * error, an interruption or an input without a token the sink is aborted here.
 */
export async function encodeStream(opts: EncodeStreamOptions): Promise<EncodeSummary> {
  const { input, sink } = opts;
  const codes = new CodeStream(opts.sae, { mode: opts.mode, kernels: opts.kernels, preprocessed: input.preprocessed });
  let nnz = 0;
  let stopped: EncodeSummary['stopped'] = 'end';
  // each write reads its block before its first await (the block's views are reused)
  const writes: Promise<void>[] = [];
  const onBlock = (b: EncodedBlock) => {
    nnz += b.codes.nnz;
    writes.push(opts.sink.write(b, opts.token));
  };
  const drain = () => Promise.all(writes.splice(0));
  try {
    for await (const r of input.blocks()) {
      codes.push(r.acts, r.n, { tokenId: r.tokenIds, context: r.contextIds, position: r.positions }, onBlock);
      await drain();
      opts.onProgress?.(codes.rows);
      if (sink.closed) {
        stopped = 'closed';
        break;
      }
      if (opts.signal?.aborted) {
        stopped = 'interrupted';
        break;
      }
    }
    if (stopped === 'end') {
      codes.flush(onBlock);
      await drain();
      opts.onProgress?.(codes.rows);
      if (codes.rows === 0) throw new UserError(input.empty);
    }
  } catch (err) {
    await Promise.allSettled(writes);
    await sink.abort();
    throw err;
  }
  if (stopped === 'interrupted') await sink.abort();
  return { rows: codes.rows, nnz, stopped };
}
