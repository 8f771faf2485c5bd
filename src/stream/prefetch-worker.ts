import { parentPort, workerData } from 'node:worker_threads';
import { BatchStream, type BatchStreamOptions, type DataPosition } from './batch-stream.js';
import type { ShardSet } from '../store/shard-set.js';
import { UserError } from '../util/errors.js';

// Runs a BatchStream off the main thread: Parquet decoding then overlaps the training step.
// Protocol: the parent sends empty buffers; each comes back filled, with the stream position after
// that batch (or ok=false at the end, or an error).

const { set, opts, position } = workerData as { set: ShardSet; opts: BatchStreamOptions; position?: DataPosition };
const stream = new BatchStream(set, opts, position);
let chain: Promise<void> = Promise.resolve();

parentPort!.on('message', (buf: ArrayBuffer) => {
  // batches must be produced in order: chain the fills
  chain = chain.then(async () => {
    try {
      const ok = await stream.next(new Float32Array(buf));
      parentPort!.postMessage({ ok, buf, position: stream.position() }, [buf]);
    } catch (err) {
      parentPort!.postMessage({ ok: false, buf, error: (err as Error).message, user: err instanceof UserError }, [buf]);
    }
  });
});
