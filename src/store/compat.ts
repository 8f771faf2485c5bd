import { sameModel } from '../lm/identity.js';
import { UserError } from '../util/errors.js';
import { sameScale, type Preprocessing } from './preprocess.js';
import type { ShardMeta } from './shard-format.js';

// Every model comparison goes through sameModel (src/lm/identity.ts), so one place decides what
// "the same model" means.

/** What a run needs of its activations; each field left out is not checked. */
export interface CompatExpect {
  d?: number;
  preprocessing?: Preprocessing;
  /** the SAE's dataset_scale factor: shards of that preprocessing must record the same (to SCALE_RTOL) */
  scale?: number;
  hook?: string;
  /** the model the activations must come from */
  model?: string;
}

/** Refuse data that does not fit the run, naming the first mismatch. */
export function checkCompatible(meta: ShardMeta, expect: CompatExpect): void {
  if (expect.d !== undefined && meta.d !== expect.d) throw new UserError(`shards have d=${meta.d} but the run expects d=${expect.d}`);
  if (expect.model !== undefined && !sameModel(meta.model, expect.model)) throw new UserError(`shards come from model ${meta.model} but the SAE was trained on ${expect.model}`);
  if (expect.preprocessing !== undefined && meta.preprocessing !== expect.preprocessing) {
    throw new UserError(`shards have preprocessing=${meta.preprocessing} but the run expects preprocessing=${expect.preprocessing}`);
  }
  if (expect.scale !== undefined && meta.preprocessing === 'dataset_scale' && (meta.scale === undefined || !sameScale(meta.scale, expect.scale))) {
    throw new UserError(`shards have dataset scale ${meta.scale} but the SAE was trained at dataset scale ${expect.scale}`);
  }
  if (expect.hook !== undefined && meta.hook !== expect.hook) throw new UserError(`shards have hook=${meta.hook} but the run expects hook=${expect.hook}`);
}
