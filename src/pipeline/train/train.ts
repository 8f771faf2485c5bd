import type { Readable } from 'node:stream';
import type { RowSource } from '../../harvest/rows.js';
import { spliceEvaluator, type TrainingEvaluator } from '../../eval/periodic.js';
import { trainDataFor, type LiveData } from './data.js';
import { runTraining, type TrainJobOptions, type TrainSummary } from './job.js';

export type { LiveData } from './data.js';
export type { TrainSummary } from './job.js';

/** `sae train` as options: the data and the evaluation named rather than built. */
export interface TrainOptions extends TrainJobOptions {
  /** shard directory or file, or '-' for shards announced on `input` */
  data: string;
  /** accept a shard directory without manifest.json (hand-made) */
  allowNoManifest?: boolean;
  /** instead of shards: harvest from the host LM into the trainer's window in memory (no disk) */
  live?: LiveData;
  /** with live data: measure splice-eval (SPEC §9) every this many steps on held-out text, logged to metrics.jsonl */
  spliceEvery?: { steps: number; maxTokens: number; corpus: RowSource<unknown> };
  /** with data '-': where the shard announcements come from (default stdin) */
  input?: Readable;
  /** with data '-': when the upstream dies, wait for its folder instead of failing */
  follow?: boolean;
  /** batches decoded ahead in a worker thread (0 = decode in-thread); default 2 */
  prefetch?: number;
}

/**
 * Train an SAE (SPEC §8) on the data the options name, with the periodic splice-eval they ask
 * for: picks the data source and the evaluator, and hands both to the training job.
 */
export async function train(opts: TrainOptions): Promise<TrainSummary> {
  return runTraining(trainDataFor(opts), opts, liveSpliceEvaluator(opts));
}

/** Splice-eval into the LM a live run harvests from, when asked for (`kernels` also run the SAE there). */
function liveSpliceEvaluator({ live, spliceEvery, kernels }: TrainOptions): TrainingEvaluator | undefined {
  if (!live || !spliceEvery) return undefined;
  const site = { model: live.model, tokenizer: live.tokenizer, hook: live.rows.hooks[0], ctx: live.rows.ctx, batch: live.rows.batch };
  return spliceEvaluator(site, { every: spliceEvery.steps, maxTokens: spliceEvery.maxTokens, corpus: spliceEvery.corpus, kernels });
}
