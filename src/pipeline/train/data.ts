import type { Readable } from 'node:stream';
import { UserError } from '../../util/errors.js';
import type { ShardMeta } from '../../store/shard-format.js';
import { openShards } from '../../store/shard-set.js';
import { shardSetDigest } from '../../store/digest.js';
import { DEFAULT_SCALE_ROWS, type Preprocessing } from '../../store/preprocess.js';
import type { HookedTransformer } from '../../lm/model.js';
import type { Precision } from '../../kernels/bf16.js';
import type { LmTokenizer } from '../../lm/tokenizer.js';
import type { RowOptions, RowSource } from '../../harvest/rows.js';
import { estimateScales } from '../../harvest/scale.js';
import type { SaeCfgJson } from '../../sae/checkpoint.js';
import type { DataPosition } from '../../stream/batch-stream.js';
import { openBatchSource, type BatchSource } from '../../stream/prefetch.js';
import { PipeBatchSource, firstShard, readAnnouncements } from '../../stream/pipe.js';
import { LiveBatchSource, type LivePosition } from '../../stream/live-source.js';

/**
 * Where a training run's batches come from (SPEC §8), chosen by the caller and handed to the job,
 * as SAELens' trainer takes its activation store: a shard folder, shards announced on a pipe, or
 * the host LM harvested in memory. Nothing is read until open(), which the job calls once it has
 * claimed the run folder (so that a second writer stops at once, before a pipe is waited on).
 */
export interface TrainDataSource {
  /** why a run on this data cannot be resumed exactly, if it cannot (refused before anything is opened) */
  readonly notResumable?: string;
  /**
   * from.scale: the dataset scale of the checkpoint the run continues or starts from, which data
   * harvested live on dataset_scale takes instead of estimating its own (shards record theirs).
   */
  open(from?: { scale?: number }): Promise<TrainData>;
}

/** Opened training data: what it is, what a checkpoint records of it, and its batch stream. */
export interface TrainData {
  /** d, model, hook and preprocessing of the activations */
  meta: ShardMeta;
  /** what the checkpoint records as the run's data (sae_train.shards) and errors name it by */
  label: string;
  /** contents digest recorded in the checkpoint: a saved stream position only means something on the same rows */
  digest?: string;
  /** rows known up front (Infinity for the LM; unknown for a pipe still being written) */
  rows?: number;
  /** rows the host LM computes as the run goes: the precision it computes at, which must be the run's */
  lmPrecision?: Precision;
  /** refuse to resume a checkpoint that was trained on other data than this */
  checkResume(recorded: SaeCfgJson['sae_train']): void;
  /** the batches, shuffled within windows of windowRows (≥ batchSize), from a checkpoint's position */
  batches(shape: { batchSize: number; windowRows: number; seed: number }, position?: DataPosition): BatchSource;
}

/** Training straight from the model: what to harvest, and from which corpus. */
export interface LiveData {
  /** the host LM, whose kernels' precision must be the run's (TrainConfig.precision) */
  model: HookedTransformer;
  tokenizer: LmTokenizer;
  corpus: RowSource<unknown>;
  rows: RowOptions;
  preprocessing: Preprocessing;
  /** dataset_scale: raw rows from the start of the corpus its factor is estimated over (default DEFAULT_SCALE_ROWS) */
  scaleRows?: number;
  /** recorded in the checkpoint; a resume must name the same model, hook and corpus */
  description: string;
  modelName: string;
}

/** Activation shards in a folder (or one file), read with an exactly resumable position. */
export function shardFolderData(dir: string, opts: { allowNoManifest?: boolean; prefetch?: number } = {}): TrainDataSource {
  return {
    async open() {
      const set = await openShards(dir, { allowNoManifest: opts.allowNoManifest });
      const digest = await shardSetDigest(set);
      return {
        meta: set.meta,
        label: dir,
        digest,
        rows: set.rows,
        checkResume(recorded) {
          const was = recorded?.shardsDigest;
          if (was && was !== digest)
            throw new UserError(`${dir} holds other activations than the checkpoint was trained on (${recorded?.shards}; contents ${digest} here, ${was} there): resuming would not continue the same stream; use --init-from to train on new data`);
        },
        batches: (shape, position) => openBatchSource(set, { ...shape, loop: true }, position, opts.prefetch ?? 2),
      };
    },
  };
}

/** Shards announced by an upstream stage on a pipe, trained on as they arrive (`--data -`). */
export function pipedData(input: Readable, opts: { follow?: boolean; prefetch?: number } = {}): TrainDataSource {
  return {
    notResumable: 'a run fed from a pipe cannot resume exactly (a pipe cannot be replayed); train on the upstream’s output folder instead, e.g. with --init-from',
    async open() {
      const announced = readAnnouncements(input, { follow: opts.follow });
      // the first shard's metadata is the run's (d, hook, preprocessing)
      const first = await firstShard(announced);
      return {
        meta: first.set.meta,
        label: '-',
        checkResume() {},
        // once the upstream has ended: epochs over every shard received, in a window no larger than them
        batches: ({ batchSize, windowRows, seed }) =>
          new PipeBatchSource(announced, first, batchSize, windowRows, seed, (all) =>
            openBatchSource(all, { batchSize, windowRows: Math.min(windowRows, all.rows), seed, loop: true }, undefined, opts.prefetch ?? 2),
          ),
      };
    },
  };
}

/** The host LM harvested into the trainer's window in memory, no disk. */
export function liveData(live: LiveData): TrainDataSource {
  return {
    async open(from) {
      // dataset_scale (SPEC §3): the checkpoint's factor, or one estimated over the corpus's first rows
      const scale =
        live.preprocessing !== 'dataset_scale'
          ? undefined
          : (from?.scale ?? (await estimateScales(live.model, live.tokenizer, live.corpus, live.rows, live.scaleRows ?? DEFAULT_SCALE_ROWS))[live.rows.hooks[0]]);
      const precision = live.model.kernels.precision ?? 'fp32';
      const meta: ShardMeta = {
        model: live.modelName,
        revision: '',
        hook: live.rows.hooks[0],
        d: live.model.cfg.dModel,
        ctx: live.rows.ctx,
        dtype: 'float32',
        preprocessing: live.preprocessing,
        ...(scale !== undefined ? { scale } : {}),
        tokenizer: live.tokenizer.digest,
        dataset: live.description,
        precision,
      };
      return {
        meta,
        label: live.description,
        rows: Infinity,
        lmPrecision: precision,
        checkResume(recorded) {
          if (recorded?.shards !== live.description) throw new UserError(`the checkpoint was trained on ${recorded?.shards}; this command harvests ${live.description}`);
        },
        batches: ({ batchSize, windowRows, seed }, position) =>
          new LiveBatchSource(live.model, live.tokenizer, live.corpus, live.rows, { batchSize, windowRows, seed, preprocessing: live.preprocessing, scale }, position as unknown as LivePosition<unknown> | undefined),
      };
    },
  };
}

/** The data the `sae train` options name: the LM with `live`, a pipe with data '-', else a shard folder. */
export function trainDataFor(opts: { data: string; live?: LiveData; input?: Readable; follow?: boolean; allowNoManifest?: boolean; prefetch?: number }): TrainDataSource {
  if (opts.live) return liveData(opts.live);
  if (opts.data === '-') return pipedData(opts.input ?? process.stdin, { follow: opts.follow, prefetch: opts.prefetch });
  return shardFolderData(opts.data, { allowNoManifest: opts.allowNoManifest, prefetch: opts.prefetch });
}
