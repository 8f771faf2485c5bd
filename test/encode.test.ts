import { spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DuckDBInstance } from '@duckdb/node-api';
import { writeSynth } from '../src/pipeline/synth.js';
import { train } from '../src/pipeline/train/train.js';
import { openSae, type Sae } from '../src/sae/sae.js';
import { Trainer } from '../src/sae/trainer.js';
import { allocParams, tensors } from '../src/kernels/params.js';
import { openShards } from '../src/store/shard-set.js';
import { readRows, type RowChunk } from '../src/store/row-reader.js';
import { CodeStream, type EncodedBlock, type EncodeMode } from '../src/eval/encode.js';
import { float32Text } from '../src/eval/encode-output.js';
import { loadModel } from '../src/lm/load.js';
import { loadTokenizer } from '../src/lm/tokenizer.js';
import { lmKernelFactory } from '../src/kernels/index.js';

// `sae encode` (issue 20): the active features of every token, from text through the host LM or
// from activation shards, in batch mode (the SAE's own selection at its training batch size) or
// threshold mode (the exported JumpReLU thresholds, per token), as NDJSON or Parquet.

const bin = path.resolve(__dirname, '..', 'bin', 'run.js');
const MODEL = path.resolve(__dirname, '..', 'fixtures', 'hf-tiny', 'gpt2-brown');
const OTHER_MODEL = path.resolve(__dirname, '..', 'fixtures', 'hf-tiny', 'gpt2');
const HOOK = 'blocks.2.hook_resid_pre';
let dir: string;

type Cli = { status: number | null; stdout: string; stderr: string };
function sae(args: string[], input?: string): Cli {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', cwd: dir, input, env: { ...process.env, FORCE_COLOR: '0' }, maxBuffer: 1 << 28 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}
function shell(script: string): Cli {
  const r = spawnSync('bash', ['-c', `set -o pipefail; ${script}`], { encoding: 'utf8', cwd: dir, env: { ...process.env, FORCE_COLOR: '0', SAE: `${process.execPath} ${bin}` }, maxBuffer: 1 << 28 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}
function ok(r: Cli): string {
  expect(r.status, r.stderr).toBe(0);
  return r.stdout;
}
function oneLineError(r: Cli, pattern: RegExp): void {
  expect(r.status).not.toBe(0);
  expect(r.stderr.trim().split('\n')).toHaveLength(1);
  expect(r.stderr).toMatch(/^sae: error: /);
  expect(r.stderr).toMatch(pattern);
}

interface Rec {
  context: number;
  position: number;
  token: string | null;
  token_id: number;
  features: [number, number][];
}
const records = (ndjson: string): Rec[] =>
  ndjson
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Rec);

/** One row's codes as [id, value] in the output's order: value descending, ties by lower id. */
function rowFeatures(codes: EncodedBlock['codes'], b: number): [number, number][] {
  const out: [number, number][] = [];
  for (let e = codes.rowPtr[b]; e < codes.rowPtr[b + 1]; e++) out.push([codes.index[e], codes.value[e]]);
  return out.sort((u, v) => v[1] - u[1] || u[0] - v[0]);
}

/** CodeStream over rows, one block list of [id, value] per row. */
function codeStream(s: Sae, mode: EncodeMode, rows: Float32Array, n: number, preprocessed = true): [number, number][][] {
  const cs = new CodeStream(s, { mode, preprocessed });
  const out: [number, number][][] = [];
  const origin = { tokenId: new Int32Array(n), context: new Int32Array(n), position: new Int32Array(n) };
  const take = (b: EncodedBlock) => {
    for (let r = 0; r < b.n; r++) out.push(rowFeatures(b.codes, r));
  };
  cs.push(rows, n, origin, take);
  cs.flush(take);
  return out;
}

/** NDJSON features, values widened back to the float32 they print. */
const asF32 = (f: [number, number][]) => f.map(([id, v]) => [id, Math.fround(v)]);

let synth: string;
const synthRuns: Record<'mutual' | 'feature', string> = { mutual: '', feature: '' };

beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-encode-'));
  // synthetic activations and two SAEs whose codes depend on the batch
  synth = path.join(dir, 'synth');
  await writeSynth({ out: synth, d: 16, fTrue: 32, kTrue: 3, rows: 4096, seed: 1 });
  for (const activation of ['mutual', 'feature'] as const) {
    synthRuns[activation] = path.join(dir, `synth-${activation}`);
    await train({ data: synth, out: synthRuns[activation], config: { activation, width: 64, k: 3, batchSize: 128, steps: 40, logEvery: 10, checkpointEvery: 100_000, lr: 3e-3 } });
  }
  // the fixture LM: a small harvest, a Mutual Choice SAE on it, and its JumpReLU export
  ok(sae(['harvest', '--model', MODEL, '--hook', HOOK, '--out', 'acts', '--max-tokens', '4096', '--quiet']));
  ok(sae(['train', '--data', 'acts', '--out', 'run', '--activation', 'mutual', '--k', '8', '--width', '128', '--batch-size', '256', '--steps', '50', '--quiet']));
  ok(sae(['export', '--checkpoint', 'run', '--data', 'acts', '--out', 'jumprelu', '--batches', '8']));
}, 60_000);

afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

/** The trainer's own selection on one batch: a trainer holding the checkpoint's weights and ranking takes a step on it. */
function trainerCodes(s: Sae, x: Float32Array): [number, number][][] {
  const cfg = s.trainConfig!;
  const params = allocParams(s.d, s.F);
  tensors(s.params).forEach((t, i) => tensors(params)[i].set(t));
  const trainer = new Trainer({ cfg, d: s.d, F: s.F, deadWindow: 1000, params });
  if (s.state) trainer.restore(s.state.snapshot, { optimizer: false });
  trainer.trainStep(x);
  // the codes of the step, computed (and selected) before its update of the weights
  const codes = trainer.ws!.enc.codes;
  return Array.from({ length: cfg.batchSize }, (_, b) => rowFeatures(codes, b));
}

describe('batch mode', () => {
  for (const activation of ['mutual', 'feature'] as const) {
    it(`gives the codes the trainer selects on the same batch (${activation === 'mutual' ? 'Mutual' : 'Feature'} Choice)`, async () => {
      const s = await openSae(synthRuns[activation]);
      const B = s.batchSize;
      expect(B).toBe(128);
      const set = await openShards(synth);
      const { acts } = await readRows(set, 0, B, 2 * B);
      const want = trainerCodes(s, acts);
      const got = codeStream(s, 'batch', acts, B);
      expect(got).toEqual(want);
      // a batch selection: about k·B entries over the batch (exactly k·B for Mutual Choice), not k per token
      const nnz = got.reduce((a, f) => a + f.length, 0);
      if (activation === 'mutual') expect(nnz).toBe(3 * B);
      else expect(Math.abs(nnz - 3 * B)).toBeLessThan(B);
      expect(new Set(got.map((f) => f.length)).size).toBeGreaterThan(1);
    });
  }

  it("depends on the tokens batched with a token (Mutual Choice)", async () => {
    const s = await openSae(synthRuns.mutual);
    const set = await openShards(synth);
    const { acts } = await readRows(set, 0, 0, 2 * s.batchSize);
    const alone = codeStream(s, 'batch', acts.subarray(0, s.batchSize * s.d), s.batchSize);
    // the same first B rows, now batched with the other B rows' halves in between
    const d = s.d;
    const B = s.batchSize;
    const mixed = new Float32Array(B * d);
    for (let r = 0; r < B; r++) mixed.set(acts.subarray((r % 2 ? B + r : r) * d, ((r % 2 ? B + r : r) + 1) * d), r * d);
    const other = codeStream(s, 'batch', mixed, B);
    const differ = alone.filter((f, r) => r % 2 === 0 && JSON.stringify(f) !== JSON.stringify(other[r])).length;
    expect(differ).toBeGreaterThan(0);
  });
});

describe('threshold mode', () => {
  it('gives z′ > θ of the exported JumpReLU SAE, computed here from W_enc, b_enc, b_dec and θ', async () => {
    const recs = records(ok(sae(['encode', '--checkpoint', 'jumprelu', '--mode', 'threshold', '--shards', 'acts', '--kernels', 'reference', '--quiet'])));
    const ex = await openSae(path.join(dir, 'jumprelu'));
    const set = await openShards(path.join(dir, 'acts'));
    const chunk: RowChunk = await readRows(set, 0, 0, set.rows);
    expect(recs).toHaveLength(set.rows);
    const { d, F } = ex;
    const { WencT, bEnc, bDec } = ex.params;
    const theta = ex.threshold!;
    const xc = new Float32Array(d);
    let active = 0;
    for (let r = 0; r < set.rows; r++) {
      for (let i = 0; i < d; i++) xc[i] = chunk.acts[r * d + i] - bDec[i];
      const want: [number, number][] = [];
      for (let j = 0; j < F; j++) {
        let s = 0;
        for (let i = 0; i < d; i++) s += xc[i] * WencT[j * d + i];
        const z = Math.fround(s + bEnc[j]);
        if (z > Math.max(theta[j], 0)) want.push([j, z]);
      }
      want.sort((u, v) => v[1] - u[1] || u[0] - v[0]);
      expect(asF32(recs[r].features)).toEqual(want);
      expect([recs[r].context, recs[r].position, recs[r].token_id]).toEqual([chunk.contextIds[r], chunk.positions[r], chunk.tokenIds[r]]);
      active += want.length;
    }
    // calibrated to the batch selection's L0 (k = 8): near it
    expect(active / set.rows).toBeGreaterThan(4);
    expect(active / set.rows).toBeLessThan(16);
  });

  it('gives a token the same codes whatever tokens are batched with it', async () => {
    const ex = await openSae(path.join(dir, 'jumprelu'));
    const set = await openShards(path.join(dir, 'acts'));
    const n = 3 * ex.batchSize;
    const { acts } = await readRows(set, 0, 0, n);
    const d = ex.d;
    const forward = codeStream(ex, 'threshold', acts, n);
    // the rows in reverse: every batch holds other neighbours
    const reversed = new Float32Array(n * d);
    for (let r = 0; r < n; r++) reversed.set(acts.subarray(r * d, (r + 1) * d), (n - 1 - r) * d);
    const backward = codeStream(ex, 'threshold', reversed, n).reverse();
    expect(backward).toEqual(forward);
    // and one token alone
    expect(codeStream(ex, 'threshold', acts.subarray(5 * d, 6 * d), 1)[0]).toEqual(forward[5]);
  });
});

describe('text through the host LM', () => {
  it('--text gives one line per token: the tokenizer’s ids and text, positions 0.. in order, codes as CodeStream gives on those rows', async () => {
    const text = 'The jury said it did find that many of the voters were not interested.';
    const recs = records(ok(sae(['encode', '--checkpoint', 'run', '--model', MODEL, '--text', text, '--kernels', 'reference', '--quiet'])));
    const { model, dir: mdir } = await loadModel(MODEL, { kernels: lmKernelFactory('reference') });
    const tok = await loadTokenizer(mdir);
    const ids = [tok.bosId, ...tok.encode(text), tok.eosId];
    expect(recs.map((r) => r.token_id)).toEqual(ids);
    expect(recs.map((r) => r.token)).toEqual(ids.map((id) => tok.decode([id])));
    expect(recs.map((r) => r.position)).toEqual(ids.map((_, i) => i));
    expect(recs.every((r) => r.context === 0)).toBe(true);
    // the same context as the harvest packs it: ctx 64, EOS after the padding's first place
    const ctx = 64;
    const input = new Int32Array(ctx).fill(tok.eosId);
    input.set(ids);
    const run = model.run(input, 1, ctx, { capture: [HOOK] });
    const s = await openSae(path.join(dir, 'run'));
    const raw = run.captured[HOOK].slice(0, ids.length * s.d);
    expect(recs.map((r) => asF32(r.features))).toEqual(codeStream(s, 'batch', raw, ids.length, false));
  });

  it('--pad puts each --text in a context of its own', () => {
    const recs = records(ok(sae(['encode', '--checkpoint', 'run', '--model', MODEL, '--text', 'One dog.', '--text', 'Two cats ran home.', '--pad', '--quiet'])));
    expect([...new Set(recs.map((r) => r.context))]).toEqual([0, 1]);
    for (const c of [0, 1]) {
      const ctx = recs.filter((r) => r.context === c);
      // BOS, the document, its EOS; the padding after it is not encoded
      expect(ctx.map((r) => r.position)).toEqual(ctx.map((_, i) => i));
      expect(ctx[0].token).toBe('<|endoftext|>');
      expect(ctx.at(-1)!.token).toBe('<|endoftext|>');
      expect(ctx.slice(1, -1).map((r) => r.token).join('')).toBe(c === 0 ? 'One dog.' : 'Two cats ran home.');
    }
  });
});

describe('outputs', () => {
  it('NDJSON and Parquet hold the same records (the Parquet read by DuckDB)', async () => {
    ok(sae(['encode', '--checkpoint', 'run', '--shards', 'acts', '--model', MODEL, '--out', 'codes.ndjson', '--quiet']));
    ok(sae(['encode', '--checkpoint', 'run', '--shards', 'acts', '--model', MODEL, '--out', 'codes.parquet', '--quiet']));
    const want = records(await fs.readFile(path.join(dir, 'codes.ndjson'), 'utf8'));
    expect(want).toHaveLength(4096);
    const file = path.join(dir, 'codes.parquet');
    const db = await (await DuckDBInstance.create(':memory:')).connect();
    const cols = (await db.runAndReadAll(`DESCRIBE SELECT * FROM read_parquet('${file}')`)).getRows().map((r) => [r[0], r[1]]);
    expect(cols).toEqual([
      ['context', 'INTEGER'],
      ['position', 'INTEGER'],
      ['token', 'VARCHAR'],
      ['token_id', 'INTEGER'],
      ['features', 'STRUCT(id INTEGER, "value" FLOAT)[]'],
    ]);
    const got = (await db.runAndReadAll(`SELECT * FROM read_parquet('${file}')`)).getRowObjectsJson() as unknown as { context: number; position: number; token: string | null; token_id: number; features: { id: number; value: number }[] }[];
    expect(got).toHaveLength(want.length);
    for (let r = 0; r < want.length; r++) {
      const g = got[r];
      expect({ ...g, features: g.features.map((f) => [f.id, f.value]) }).toEqual({ ...want[r], features: asF32(want[r].features) });
    }
    expect(want.some((r) => r.token !== null && r.token.length > 0)).toBe(true);
  });

  it('prints each value as the shortest decimal that reads back to its float32', () => {
    const digits = (t: string) => t.replace(/e.*$/, '').replace(/[^0-9]/g, '').replace(/^0+/, '').length;
    for (const v of [0.1, 1 / 3, 123.456, 1e-7, 3.4e38, 0.30000001192092896, 2.5, 7]) {
      const f = Math.fround(v);
      const t = float32Text(f);
      expect(Math.fround(Number(t))).toBe(f);
      // no shorter decimal reads back to it
      for (let p = 1; p < digits(t); p++) expect(Math.fround(Number(f.toPrecision(p)))).not.toBe(f);
    }
    expect(float32Text(Math.fround(0.1))).toBe('0.1');
  });

  it('writes Parquet a row group at a time: several groups for an input larger than one', async () => {
    ok(sae(['encode', '--checkpoint', 'run', '--shards', 'acts', '--out', 'groups.parquet', '--row-group-rows', '1000', '--quiet']));
    const db = await (await DuckDBInstance.create(':memory:')).connect();
    const rows = (await db.runAndReadAll(`SELECT DISTINCT row_group_id, row_group_num_rows FROM parquet_metadata('${path.join(dir, 'groups.parquet')}') ORDER BY 1`)).getRows();
    expect(rows.map((r) => Number(r[1]))).toEqual([1000, 1000, 1000, 1000, 96]);
  });

  it('a closed stdout (| head) ends quietly with exit 0', () => {
    const r = shell('$SAE encode --checkpoint run --shards acts --quiet | head -n 2');
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toBe('');
    expect(r.stdout.trim().split('\n')).toHaveLength(2);
  });

  it('--out replaces its own earlier output but another file only with --force', async () => {
    await fs.writeFile(path.join(dir, 'mine.txt'), 'notes\n');
    oneLineError(sae(['encode', '--checkpoint', 'run', '--shards', 'acts', '--out', 'mine.txt', '--quiet']), /--out mine\.txt exists and is not an earlier output.*--force/);
    expect(await fs.readFile(path.join(dir, 'mine.txt'), 'utf8')).toBe('notes\n');
    ok(sae(['encode', '--checkpoint', 'run', '--shards', 'acts', '--out', 'mine.txt', '--force', '--quiet']));
    ok(sae(['encode', '--checkpoint', 'run', '--shards', 'acts', '--out', 'mine.txt', '--quiet']));
    ok(sae(['encode', '--checkpoint', 'run', '--shards', 'acts', '--out', 'groups.parquet', '--quiet']));
    // no temporary file is left behind
    expect((await fs.readdir(dir)).filter((n) => n.includes('.tmp-'))).toEqual([]);
  });
});

describe('shards on a pipe', () => {
  it('--shards - encodes the shards sae harvest --ndjson announces, as from their folder', () => {
    const piped = ok(shell(`$SAE harvest --model ${MODEL} --hook ${HOOK} --out piped --max-tokens 1200 --shard-rows 500 --ndjson --quiet | $SAE encode --checkpoint run --shards - --quiet`));
    const folder = ok(sae(['encode', '--checkpoint', 'run', '--shards', 'piped', '--quiet']));
    expect(records(piped)).toHaveLength(1200);
    expect(piped).toBe(folder);
  });

  it('--shards - refuses a pipe that ends without the upstream’s end line, after the rows that arrived', async () => {
    const set = await openShards(path.join(dir, 'acts'));
    const line = JSON.stringify({ shard: set.files[0].path, rows: set.files[0].rows, metadata: 'x' });
    const r = sae(['encode', '--checkpoint', 'run', '--shards', '-', '--quiet'], line + '\n');
    oneLineError(r, /ended without finishing/);
    // its 4096 rows are 16 whole batches of 256: every one was encoded and written
    expect(records(r.stdout)).toHaveLength(set.files[0].rows);
  });
});

describe('bad input, one line each', () => {
  it('refuses a --model that is not the SAE’s', () => {
    oneLineError(sae(['encode', '--checkpoint', 'run', '--model', OTHER_MODEL, '--text', 'hello']), /trained on .* but --model is .*--allow-other-model/);
  });

  it('refuses a corpus without a token', async () => {
    await fs.writeFile(path.join(dir, 'empty.txt'), '');
    oneLineError(sae(['encode', '--checkpoint', 'run', '--model', MODEL, 'empty.txt', '--quiet']), /no (tokens|documents|text)/i);
  });

  it('refuses --mode threshold on a checkpoint without an export', () => {
    oneLineError(sae(['encode', '--checkpoint', 'run', '--mode', 'threshold', '--shards', 'acts']), /no JumpReLU thresholds.*sae export/);
  });

  it('refuses a command with no input', () => {
    oneLineError(sae(['encode', '--checkpoint', 'run', '--model', MODEL]), /nothing to encode/);
  });

  it('refuses text and --shards together', () => {
    oneLineError(sae(['encode', '--checkpoint', 'run', '--model', MODEL, '--text', 'hi', '--shards', 'acts']), /not both/);
  });

  it('refuses shards of another hook', () => {
    ok(sae(['harvest', '--model', MODEL, '--hook', 'blocks.1.hook_resid_pre', '--out', 'acts-l1', '--max-tokens', '300', '--quiet']));
    oneLineError(sae(['encode', '--checkpoint', 'run', '--shards', 'acts-l1']), /hook=blocks\.1\.hook_resid_pre .*blocks\.2\.hook_resid_pre/);
  });

  it('refuses shards of another width', () => {
    oneLineError(sae(['encode', '--checkpoint', 'run', '--shards', synth]), /d=16 .*d=192/);
  });

  it('refuses shards of another preprocessing', () => {
    ok(sae(['harvest', '--model', MODEL, '--hook', HOOK, '--out', 'acts-raw', '--max-tokens', '300', '--preprocessing', 'none', '--quiet']));
    oneLineError(sae(['encode', '--checkpoint', 'run', '--shards', 'acts-raw']), /preprocessing=none .*center_unit_norm/);
  });

  it('refuses --ctx below 2', () => {
    oneLineError(sae(['encode', '--checkpoint', 'run', '--model', MODEL, '--text', 'hi', '--ctx', '1']), /--ctx must be at least 2/);
  });

  it('refuses Parquet without --out', () => {
    oneLineError(sae(['encode', '--checkpoint', 'run', '--shards', 'acts', '--format', 'parquet']), /--out/);
  });
});
