import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { writeSynth } from '../src/pipeline/synth.js';
import { readSafetensors } from '../src/util/safetensors.js';
import { FakeHub } from './fake-hub.js';

// `sae push RUN OWNER/REPO` (issue 19 part 6) against the loopback Hub, which records what was
// committed; then pulled back by `--checkpoint hf:OWNER/REPO/…` (part 5).

const bin = path.resolve(__dirname, '..', 'bin', 'run.js');
const hub = new FakeHub({});
let root: string;
let env: NodeJS.ProcessEnv;

/** `sae …` in root, asynchronously: the loopback Hub answers from this process. */
function sae(args: string[], extra: NodeJS.ProcessEnv = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [bin, ...args], { cwd: root, env: { ...env, ...extra } }, (err, stdout, stderr) => {
      resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}
async function ok(args: string[], extra: NodeJS.ProcessEnv = {}): Promise<string> {
  const r = await sae(args, extra);
  expect(r.code, r.stderr).toBe(0);
  return r.stdout;
}
async function oneLineError(args: string[], pattern: RegExp, extra: NodeJS.ProcessEnv = {}): Promise<void> {
  const r = await sae(args, extra);
  expect(r.code).not.toBe(0);
  // progress lines may come first; the error is one line, the last
  const lines = r.stderr.trim().split('\n');
  expect(lines.filter((l) => l.startsWith('sae: error:'))).toEqual([expect.stringMatching(pattern)]);
  expect(lines.at(-1)).toMatch(pattern);
}
const text = (b: Uint8Array) => Buffer.from(b).toString('utf8');
const train = (out: string, activation: string) => ['train', '--data', 'data', '--out', out, '--activation', activation, '--width', '64', '--k', '4', '--batch-size', '128', '--steps', '30', '--dead-window', '512', '--prefetch', '0'];

beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-push-'));
  await hub.start();
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('HF_') && !k.startsWith('HUGGINGFACE')));
  // $HF_HOME in the temp dir keeps a real ~/.cache/huggingface/token out of the tests
  env = { ...clean, NO_COLOR: '1', HF_HOME: path.join(root, 'hf'), HF_HUB_CACHE: path.join(root, 'cache'), HF_ENDPOINT: hub.url };
  await writeSynth({ out: path.join(root, 'data'), d: 32, fTrue: 64, kTrue: 3, rows: 2048, seed: 1 });
  await ok(train('topk', 'topk'));
  await ok(train('mc', 'mutual'));
  await fs.writeFile(path.join(root, 'eval.json'), await ok(['eval', '--checkpoint', 'topk', '--data', 'data']));
}, 120_000);

afterAll(async () => {
  await hub.stop();
  await fs.rm(root, { recursive: true, force: true });
});

beforeEach(() => {
  hub.requests.length = 0;
  hub.writeToken = 'hf_test';
});

describe('sae push', () => {
  it('without a token: one line, a non-zero exit, no request', async () => {
    const r = await sae(['push', 'topk', 'owner/repo']);
    expect(r.code).not.toBe(0);
    expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(/^sae: error: sae push needs a Hugging Face token with write access: set HF_TOKEN/)]);
    expect(hub.requests).toEqual([]);
  });

  it('with a token the Hub refuses: one line', async () => {
    await oneLineError(['push', 'topk', 'owner/repo'], /^sae: error: the Hub at http:\/\/127\.0\.0\.1:\d+ refused HF_TOKEN \(HTTP 401\)/, { HF_TOKEN: 'hf_wrong' });
    expect(hub.pushed).toEqual([]);
  });

  it('creates the repo and commits the SAELens export, our checkpoint, the eval JSON and a model card', async () => {
    const stdout = await ok(['push', 'topk', 'owner/repo', '--eval', 'eval.json'], { HF_TOKEN: 'hf_test' });
    expect(hub.created).toEqual([{ repo: 'owner/repo', visibility: undefined }]);
    expect(hub.pushed).toHaveLength(1);
    const c = hub.pushed[0];
    expect(stdout.trim()).toBe(`${hub.url}/owner/repo/commit/${c.sha}`);
    expect(c.branch).toBe('main');
    expect(Object.keys(c.files).sort()).toEqual([
      'README.md',
      'eval.json',
      'sae/cfg.json',
      'sae/sae.safetensors',
      'sae/state.json',
      'sae/state.safetensors',
      'synthetic/cfg.json',
      'synthetic/sae_weights.safetensors',
      'synthetic/sparsity.safetensors',
    ]);
    // the weights went through LFS, the rest inline
    expect(hub.requests.some((r) => r.path === '/owner/repo.git/info/lfs/objects/batch')).toBe(true);
    expect(hub.requests.filter((r) => r.path.startsWith('/lfs-upload/'))).toHaveLength(4);

    const cfg = JSON.parse(text(c.files['synthetic/cfg.json']));
    expect(cfg).toMatchObject({ architecture: 'topk', k: 4, d_in: 32, d_sae: 64, normalize_activations: 'layer_norm', metadata: { hook_name: 'synthetic', model_name: 'synthetic' } });
    const dir = path.join(root, 'pulled');
    await fs.mkdir(dir);
    await fs.writeFile(path.join(dir, 'w.safetensors'), c.files['synthetic/sae_weights.safetensors']);
    expect(Object.keys((await readSafetensors(path.join(dir, 'w.safetensors'))).tensors).sort()).toEqual(['W_dec', 'W_enc', 'b_dec', 'b_enc']);
    expect(Buffer.from(c.files['sae/sae.safetensors']).equals(await fs.readFile(path.join(root, 'topk', 'final', 'sae.safetensors')))).toBe(true);
    expect(Buffer.from(c.files['eval.json']).equals(await fs.readFile(path.join(root, 'eval.json')))).toBe(true);

    const card = text(c.files['README.md']);
    const ev = JSON.parse(await fs.readFile(path.join(root, 'eval.json'), 'utf8'));
    expect(card.startsWith('---\nlibrary_name: saelens\ntags:\n- sparse-autoencoder\n')).toBe(true);
    expect(card).toContain('| hook | `synthetic` |');
    expect(card).toContain('| width (d_sae) | 64 |');
    expect(card).toContain('| architecture | TopK, k = 4 (SAELens `topk`) |');
    expect(card).toContain(`| L0 | ${ev.l0.toFixed(2)} (eval.json, ${ev.rows} tokens) |`);
    expect(card).toContain(`| FVU | ${ev.fvu.toFixed(4)} `);
    expect(card).toContain('SAE.from_pretrained("owner/repo", "synthetic")');
    expect(card).toContain('"activation": "topk"');
  });

  it('pulled back by hf:OWNER/REPO/FOLDER, eval gives the run\'s numbers', async () => {
    const local = JSON.parse(await ok(['eval', '--checkpoint', 'topk', '--data', 'data']));
    const ours = JSON.parse(await ok(['eval', '--checkpoint', 'hf:owner/repo/sae', '--data', 'data']));
    const saelens = JSON.parse(await ok(['eval', '--checkpoint', 'hf:owner/repo/synthetic', '--data', 'data']));
    expect(ours.l0).toBe(local.l0);
    expect(ours.fvu).toBe(local.fvu);
    // layer_norm's eps: the SAELens form reconstructs ours to within 1e-5 relative
    expect(saelens.l0).toBeCloseTo(local.l0, 6);
    expect(Math.abs(saelens.fvu - local.fvu) / local.fvu).toBeLessThan(1e-3);
    // the second time from the cache, without a request
    hub.requests.length = 0;
    await ok(['eval', '--checkpoint', 'hf:owner/repo/synthetic', '--data', 'data']);
    expect(hub.requests).toEqual([]);
  });

  it('--private and --revision: a private repo, a new branch', async () => {
    const stdout = await ok(['push', 'topk', 'owner/private', '--private', '--revision', 'dev'], { HF_TOKEN: 'hf_test' });
    expect(hub.created.at(-1)).toEqual({ repo: 'owner/private', visibility: 'private' });
    expect(hub.pushed.at(-1)!.branch).toBe('dev');
    expect(stdout.trim()).toBe(`${hub.url}/owner/private/commit/${hub.pushed.at(-1)!.sha}`);
    // the card says loss recovered was not measured
    expect(text(hub.pushed.at(-1)!.files['README.md'])).toContain('| loss recovered | — (not measured: pass --splice) |');
  });

  it('a batch selection needs its JumpReLU export: refused in one line without it, pushed as SAELens jumprelu with it', async () => {
    await oneLineError(['push', 'mc', 'owner/mc'], /^sae: error: mc selects per batch \(mutual\): .*run `sae export --checkpoint mc --data SHARDS --out DIR` first and pass --exported DIR$/, { HF_TOKEN: 'hf_test' });
    expect(hub.requests).toEqual([]);
    await ok(['export', '--checkpoint', 'mc', '--data', 'data', '--out', 'mc-jumprelu']);
    await ok(['push', 'mc', 'owner/mc', '--exported', 'mc-jumprelu'], { HF_TOKEN: 'hf_test' });
    const c = hub.pushed.at(-1)!;
    expect(JSON.parse(text(c.files['synthetic/cfg.json']))).toMatchObject({ architecture: 'jumprelu' });
    const dir = path.join(root, 'pulled-mc');
    await fs.mkdir(dir);
    await fs.writeFile(path.join(dir, 'w.safetensors'), c.files['synthetic/sae_weights.safetensors']);
    expect(Object.keys((await readSafetensors(path.join(dir, 'w.safetensors'))).tensors).sort()).toEqual(['W_dec', 'W_enc', 'b_dec', 'b_enc', 'threshold']);
    expect(text(c.files['README.md'])).toContain('Mutual Choice, k = 4, exported as JumpReLU');
  });

  it('--dry-run writes the folder it would upload and prints its path, with no token and no request', async () => {
    const folder = (await ok(['push', 'topk', 'owner/repo', '--dry-run'])).trim();
    try {
      expect((await fs.readdir(folder)).sort()).toEqual(['README.md', 'sae', 'synthetic']);
      expect((await fs.readdir(path.join(folder, 'synthetic'))).sort()).toEqual(['cfg.json', 'sae_weights.safetensors', 'sparsity.safetensors']);
      expect(hub.requests).toEqual([]);
    } finally {
      await fs.rm(folder, { recursive: true, force: true });
    }
  });

  it('bad input: one line each', async () => {
    await oneLineError(['push', 'topk', 'not-a-repo'], /is not a Hub repo id OWNER\/REPO/, { HF_TOKEN: 'hf_test' });
    await oneLineError(['push', 'topk', 'owner/repo', '--eval', 'data'], /--eval data/, { HF_TOKEN: 'hf_test' });
    await oneLineError(['push', 'topk', 'owner/repo', '--splice', 'eval.json'], /--splice eval\.json is not a sae-splice\/1 result/, { HF_TOKEN: 'hf_test' });
    await oneLineError(['push', 'topk', 'owner/repo', '--exported', 'mc-jumprelu'], /--exported mc-jumprelu is not an export of .*topk.*: its decoder differs$/, { HF_TOKEN: 'hf_test' });
    expect(hub.requests).toEqual([]);
  });
});
