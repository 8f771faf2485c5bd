import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PipeBatchSource, announceEnd, announceShard, collectAnnounced, firstShard, metaDigest, readAnnouncements } from '../src/stream/pipe.js';
import { openShards } from '../src/store/shard-set.js';
import { openBatchSource } from '../src/stream/prefetch.js';
import { writeSynth } from '../src/pipeline/synth.js';
import { UserError } from '../src/util/errors.js';

// The pipe protocol's downstream side, fed by hand: what it accepts and what it refuses.
let root: string;
let data: string;
let digest: string;
const D = 8;
const shard = (i: number) => path.join(data, `shard-0000${i}.parquet`);
const line = (i: number) => announceShard({ shard: shard(i), rows: 100, metadata: digest });

/** A stream that has received `text` and ended. */
function stdin(text: string): PassThrough {
  const s = new PassThrough();
  s.end(text);
  return s;
}

async function userErrorOf(p: Promise<unknown>): Promise<UserError> {
  const err = await p.then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(UserError);
  expect((err as Error).message).not.toContain('\n');
  return err as UserError;
}

beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-pipe-'));
  data = path.join(root, 'data');
  await writeSynth({ out: data, d: D, fTrue: 16, kTrue: 2, rows: 300, rowsPerShard: 100, seed: 1 });
  digest = metaDigest((await openShards(data)).meta);
});

afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

describe('the end line', () => {
  it('is accepted when its totals are what arrived', async () => {
    const { set } = await collectAnnounced(readAnnouncements(stdin(line(0) + line(1) + line(2) + announceEnd(3, 300))));
    expect(set.rows).toBe(300);
  });

  it('is refused, naming both counts, when it counts more than arrived (a collecting downstream: sae shuffle --data -)', async () => {
    const err = await userErrorOf(collectAnnounced(readAnnouncements(stdin(line(1) + line(2) + announceEnd(3, 300)))));
    expect(err.message).toBe(
      `the upstream announced 3 shards / 300 rows in its end line but 2 shards / 200 rows arrived; every shard is in ${data}: read that folder with --data instead of the pipe`,
    );
  });

  it('is refused when it counts more than arrived, at a streaming downstream (sae train --data -)', async () => {
    const it = readAnnouncements(stdin(line(0) + line(1) + announceEnd(3, 300)));
    const first = await firstShard(it);
    const src = new PipeBatchSource(it, first, 50, 100, 0, (all) => openBatchSource(all, { batchSize: 50, windowRows: 100, seed: 0, loop: true }, undefined, 0));
    const x = new Float32Array(50 * D);
    const err = await userErrorOf(
      (async () => {
        for (let i = 0; i < 10; i++) await src.next(x);
      })(),
    );
    expect(err.message).toMatch(/^the upstream announced 3 shards \/ 300 rows in its end line but 2 shards \/ 200 rows arrived/);
    await src.close();
  });

  it('is refused when its row total differs though the shard count matches', async () => {
    const err = await userErrorOf(collectAnnounced(readAnnouncements(stdin(line(0) + announceEnd(1, 150)))));
    expect(err.message).toMatch(/announced 1 shard \/ 150 rows in its end line but 1 shard \/ 100 rows arrived/);
  });

  it('is refused when it carries no totals', async () => {
    const err = await userErrorOf(collectAnnounced(readAnnouncements(stdin(line(0) + '{"end": true}\n'))));
    expect(err.message).toMatch(/^stdin line 2: malformed end line/);
  });
});

describe('announcements', () => {
  it('a shard announced twice is refused', async () => {
    const err = await userErrorOf(collectAnnounced(readAnnouncements(stdin(line(0) + line(1) + line(0) + announceEnd(3, 300)))));
    expect(err.message).toBe(`stdin line 3: ${shard(0)} was announced twice; one upstream per pipe`);
  });
});

describe('--follow', () => {
  it('says once on its log what it is waiting for, and why', async () => {
    // an upstream killed after its first shard: the folder has no manifest yet
    const dir = path.join(root, 'follow');
    await fs.mkdir(dir);
    for (const i of [0, 1]) await fs.copyFile(shard(i), path.join(dir, path.basename(shard(i))));
    const logged: string[] = [];
    const it = readAnnouncements(stdin(announceShard({ shard: path.join(dir, 'shard-00000.parquet'), rows: 100, metadata: digest })), { follow: true, pollMs: 5, log: (l) => logged.push(l) });
    const got: string[] = [];
    for (let k = 0; k < 2; k++) got.push(path.basename((await it.next()).value!.shard));
    // the rerun upstream finishes: its manifest appears
    const pending = it.next();
    await new Promise((r) => setTimeout(r, 30));
    await fs.copyFile(path.join(data, 'manifest.json'), path.join(dir, 'manifest.json'));
    expect((await pending).done).toBe(true);
    expect(got).toEqual(['shard-00000.parquet', 'shard-00001.parquet']);
    expect(logged).toEqual([
      `the upstream ended without its end line; waiting for ${dir} to be completed (its manifest.json to appear): rerun the upstream command to finish it; Ctrl-C to stop`,
    ]);
  });
});
