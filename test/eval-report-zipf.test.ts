import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeSynth } from '../src/pipeline/synth.js';
import { train } from '../src/pipeline/train/train.js';
import { saveRunEval } from '../src/eval/summary.js';
import { loadRuns } from '../src/report/data.js';
import { openShards } from '../src/store/shard-set.js';

let root: string;
let data: string;
let run: string;

beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-eval-report-zipf-'));
  data = path.join(root, 'synth');
  run = path.join(root, 'mc');
  await writeSynth({ out: data, d: 16, fTrue: 32, kTrue: 3, rows: 4096, seed: 2 });
  await train({ data, out: run, config: { activation: 'mutual', width: 160, k: 3, batchSize: 128, steps: 40, logEvery: 10, checkpointEvery: 100_000, lr: 3e-3 } });
}, 60_000);

afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

describe('one Zipf fit (SPEC §9)', () => {
  it('`sae eval` and `sae report --data` give one trained SAE the same α and β, training statistics present', async () => {
    const printed = await saveRunEval(run, await openShards(data), { data, maxRows: 2048 });
    const fits = printed.zipfFit as { all: { alpha: number; beta: number }; ranks100to20000: { alpha: number; beta: number } };
    expect(await fs.stat(path.join(run, 'final', 'state.json'))).toBeTruthy();
    const [reported] = await loadRuns([run], { data, maxRows: 2048 });
    expect(reported.densitySource).toBe(`firing frequency on 2048 rows of ${data}`);
    expect(fits.all.alpha).toEqual(expect.any(Number));
    expect([reported.fit!.alpha, reported.fit!.beta]).toEqual([fits.all.alpha, fits.all.beta]);
    expect(fits.ranks100to20000.alpha).toEqual(expect.any(Number));
    expect([reported.fitMid!.alpha, reported.fitMid!.beta]).toEqual([fits.ranks100to20000.alpha, fits.ranks100to20000.beta]);
  });
});
