import { describe, it, expect, beforeAll, afterAll, beforeEach, afterEach } from 'vitest';
import { execFile } from 'node:child_process';
import { promises as fs, readdirSync, readFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { openSae } from '../src/sae/sae.js';
import { FORMATS, type ExportSource } from '../src/sae/formats/index.js';
import { saveCheckpoint, type SaeCfgJson } from '../src/sae/checkpoint.js';
import { parseHubSpec, resolveHubFolder } from '../src/lm/hub-folder.js';
import { allocParams } from '../src/kernels/params.js';
import type { SaeParams } from '../src/kernels/types.js';
import { UserError } from '../src/util/errors.js';
import { FakeHub, type Tree } from './fake-hub.js';

// Published SAEs by Hub id (issue 19 part 5): `hf:OWNER/REPO[/SUBFOLDER][@REVISION]` through the
// model cache and client of src/lm/hub.ts, against the loopback Hub.

const d = 8;
const F = 32;

function randomSae(seed: number): SaeParams {
  let s = seed >>> 0;
  const g = () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32 - 0.5;
  };
  const p = allocParams(d, F);
  for (let i = 0; i < F * d; i++) p.WencT[i] = g();
  for (let j = 0; j < F; j++) {
    let ss = 0;
    for (let i = 0; i < d; i++) ss += (p.Wdec[j * d + i] = g()) ** 2;
    for (let i = 0; i < d; i++) p.Wdec[j * d + i] /= Math.sqrt(ss);
    p.bEnc[j] = 0.1 * g();
  }
  for (let i = 0; i < d; i++) p.bDec[i] = g();
  return p;
}

const source = (params: SaeParams, hook: string, model: string): ExportSource => ({
  params,
  architecture: 'topk',
  k: 4,
  preprocessing: 'none',
  hook,
  model,
  density: new Float32Array(F).fill(0.125),
});

const folder = (dir: string, prefix = ''): Tree => {
  const out: Tree = {};
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (e.isDirectory()) Object.assign(out, folder(path.join(dir, e.name), `${prefix}${e.name}/`));
    else out[`${prefix}${e.name}`] = readFileSync(path.join(dir, e.name));
  }
  return out;
};

const ENV_KEYS = ['HF_HOME', 'HF_ENDPOINT', 'HF_TOKEN', 'HF_TOKEN_PATH', 'HF_HUB_OFFLINE', 'HF_HUB_CACHE', 'HUGGINGFACE_HUB_CACHE', 'XDG_CACHE_HOME'];
const savedEnv = Object.fromEntries(ENV_KEYS.map((k) => [k, process.env[k]]));
let fixtures: string;
let tmp: string;
let cache: string;
let hub: FakeHub;
const SL = 'test/saelens-release';
const SP = 'EleutherAI/sae-tiny';
const L1 = 'blocks.1.hook_resid_pre';
const storage = (repo: string) => path.join(cache, `models--${repo.replace('/', '--')}`);

beforeAll(async () => {
  fixtures = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-hub-sae-fixtures-'));
  // a SAELens release: one SAE per hook folder, a README at the top
  await FORMATS.saelens!.write!(source(randomSae(1), L1, 'tiny-gpt2'), path.join(fixtures, 'release', L1));
  await FORMATS.saelens!.write!(source(randomSae(2), 'blocks.2.hook_resid_pre', 'tiny-gpt2'), path.join(fixtures, 'release', 'blocks.2.hook_resid_pre'));
  await fs.mkdir(path.join(fixtures, 'release', 'docs'));
  await fs.writeFile(path.join(fixtures, 'release', 'docs', 'notes.md'), '# not an SAE\n');
  await fs.writeFile(path.join(fixtures, 'release', 'README.md'), '---\nlibrary_name: saelens\n---\n');
  // a sparsify run: layers.N folders under the run's config.json, which names the model
  await FORMATS.sparsify!.write!(source(randomSae(3), '', ''), path.join(fixtures, 'sparsify', 'layers.1'));
  await fs.writeFile(path.join(fixtures, 'sparsify', 'config.json'), JSON.stringify({ sae: { k: 4 }, hookpoints: ['layers.1'], model: 'EleutherAI/pythia-tiny' }));
  // ours, at the top of a repo
  const cfg: SaeCfgJson = {
    architecture: 'topk', d_in: d, d_sae: F, dtype: 'float32', hook_name: 'blocks.0.hook_resid_post', model_name: 'tiny-gpt2',
    normalize_activations: 'none', apply_b_dec_to_input: true, activation_fn_kwargs: { k: 4 }, format: 'sae-checkpoint/1',
  };
  await saveCheckpoint(path.join(fixtures, 'ours'), cfg, randomSae(4));

  hub = new FakeHub({
    [SL]: { revisions: { main: folder(path.join(fixtures, 'release')), v1: folder(path.join(fixtures, 'release', L1), `${L1}/`) } },
    [SP]: { revisions: { main: folder(path.join(fixtures, 'sparsify')) } },
    'test/ours': { revisions: { main: folder(path.join(fixtures, 'ours')) } },
  });
  await hub.start();
});
afterAll(async () => {
  await hub.stop();
  await fs.rm(fixtures, { recursive: true, force: true });
});
beforeEach(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-hub-sae-'));
  for (const k of ENV_KEYS) delete process.env[k];
  process.env.HF_HOME = path.join(tmp, 'hf');
  process.env.HF_ENDPOINT = hub.url;
  cache = path.join(tmp, 'cache');
  process.env.HF_HUB_CACHE = cache;
  hub.requests.length = 0;
});
afterEach(async () => {
  for (const k of ENV_KEYS) {
    if (savedEnv[k] === undefined) delete process.env[k];
    else process.env[k] = savedEnv[k];
  }
  await fs.rm(tmp, { recursive: true, force: true });
});

async function userError(p: Promise<unknown>): Promise<string> {
  const err = await p.then(() => null, (e: unknown) => e);
  expect(err).toBeInstanceOf(UserError);
  const msg = (err as Error).message;
  expect(msg).not.toContain('\n');
  return msg;
}

const same = (a: ArrayBufferView, b: ArrayBufferView) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
/** the repo paths downloaded so far (each file takes a probe and a GET) */
const fetched = () => [...new Set(hub.requests.filter((r) => r.path.includes('/resolve/')).map((r) => decodeURIComponent(r.path).replace(/^.*?\/resolve\/[^/]+\//, '')))].sort();
const exists = (p: string) => fs.lstat(p).then(() => true, () => false);

describe('hf: specs', () => {
  it('parse into repo, subfolder and revision', () => {
    expect(parseHubSpec('hf:a/b')).toEqual({ repo: 'a/b', subfolder: '', revision: 'main' });
    expect(parseHubSpec('hf:a/b/x/trainer_0@v2')).toEqual({ repo: 'a/b', subfolder: 'x/trainer_0', revision: 'v2' });
    expect(parseHubSpec('hf:a/b/layers.6/@refs/pr/1')).toEqual({ repo: 'a/b', subfolder: 'layers.6', revision: 'refs/pr/1' });
  });

  it('refuse what is no OWNER/REPO[/SUBFOLDER][@REVISION], in one line', () => {
    for (const bad of ['hf:gpt2', 'hf:a/b/../c', 'hf:a/b@', 'hf:a--b/c', 'hf:/a/b']) {
      expect(() => parseHubSpec(bad)).toThrow(UserError);
    }
  });
});

describe('openSae by Hub id', () => {
  it('downloads only the SAE files of the subfolder into the model cache; a second call makes no request', async () => {
    const sae = await openSae(`hf:${SL}/${L1}`);
    const commit = hub.commitOf(SL, 'main');
    expect(sae.format).toBe('saelens');
    expect(sae.dir).toBe(path.join(storage(SL), 'snapshots', commit, L1));
    expect(sae.hook).toBe(L1);
    expect(sae.model).toBe('tiny-gpt2');
    const local = await openSae(path.join(fixtures, 'release', L1));
    expect(same(sae.params.WencT, local.params.WencT) && same(sae.params.Wdec, local.params.Wdec) && same(sae.params.bDec, local.params.bDec)).toBe(true);

    expect(fetched()).toEqual([`${L1}/cfg.json`, `${L1}/sae_weights.safetensors`, `${L1}/sparsity.safetensors`]);
    // as huggingface_hub records them: the ref, and what the folder does not have
    expect((await fs.readFile(path.join(storage(SL), 'refs', 'main'), 'utf8')).trim()).toBe(commit);
    expect((await fs.readdir(path.join(storage(SL), '.no_exist', commit, L1))).sort()).toEqual(['ae.pt', 'config.json', 'sae.safetensors']);
    expect(await exists(path.join(storage(SL), '.no_exist', commit, 'config.json'))).toBe(true);
    expect(await exists(path.join(storage(SL), 'snapshots', commit, 'blocks.2.hook_resid_pre'))).toBe(false);

    hub.requests.length = 0;
    const again = await openSae(`hf:${SL}/${L1}@main`);
    expect(hub.requests).toEqual([]);
    expect(again.dir).toBe(sae.dir);
    // offline, the cache is enough
    process.env.HF_HUB_OFFLINE = '1';
    expect((await openSae(`hf:${SL}/${L1}`)).dir).toBe(sae.dir);
    expect(hub.requests).toEqual([]);
  });

  it('a sparsify folder comes with its run config.json, which names the model', async () => {
    const sae = await openSae(`hf:${SP}/layers.1`);
    expect(sae.format).toBe('sparsify');
    expect(sae.hook).toBe('blocks.1.hook_resid_post');
    expect(sae.model).toBe('EleutherAI/pythia-tiny');
    expect(fetched()).toEqual(['config.json', 'layers.1/cfg.json', 'layers.1/sae.safetensors']);
    hub.requests.length = 0;
    await openSae(`hf:${SP}/layers.1`);
    expect(hub.requests).toEqual([]);
  });

  it('an SAE of ours at the top of a repo, and a revision by commit sha (no ref)', async () => {
    const commit = hub.commitOf('test/ours', 'main');
    const sae = await openSae(`hf:test/ours@${commit}`);
    expect(sae.format).toBe('sae');
    expect(sae.hook).toBe('blocks.0.hook_resid_post');
    expect(sae.dir).toBe(path.join(storage('test/ours'), 'snapshots', commit));
    expect(await exists(path.join(storage('test/ours'), 'refs'))).toBe(false);
    hub.requests.length = 0;
    await openSae(`hf:test/ours@${commit}`);
    expect(hub.requests).toEqual([]);
  });

  it('another revision is another snapshot', async () => {
    const r = await resolveHubFolder(`hf:${SL}/${L1}@v1`);
    expect(r.commit).toBe(hub.commitOf(SL, 'v1'));
    expect(r.source).toBe('hub');
    expect((await resolveHubFolder(`hf:${SL}/${L1}@v1`)).source).toBe('cache');
  });
});

describe('what goes wrong, in one line', () => {
  it('offline with nothing cached names the cache path searched', async () => {
    process.env.HF_HUB_OFFLINE = '1';
    const msg = await userError(openSae(`hf:${SL}/${L1}`));
    expect(msg).toContain(`SAE ${SL}/${L1}@main is not in the Hugging Face cache`);
    expect(msg).toContain(path.join(storage(SL), 'snapshots'));
    expect(msg).toContain('HF_HUB_OFFLINE');
    expect(hub.requests).toEqual([]);
  });

  it('a repo that does not exist', async () => {
    expect(await userError(openSae('hf:nobody/nothing/layers.0'))).toMatch(/^SAE repo nobody\/nothing not found on http:\/\/127\.0\.0\.1:\d+ \(HTTP 404\), or it is private: set HF_TOKEN$/);
  });

  it('a subfolder that does not exist names the folders that hold SAEs', async () => {
    const msg = await userError(openSae(`hf:${SL}/blocks.9.hook_resid_pre`));
    expect(msg).toBe(`${SL} at revision main: it has no folder blocks.9.hook_resid_pre; SAE folders there: ${L1}, blocks.2.hook_resid_pre`);
    expect(fetched()).toEqual([]);
    expect(await exists(path.join(storage(SL), 'refs'))).toBe(false);
  });

  it('a folder without SAE files, and a top folder without one', async () => {
    expect(await userError(openSae(`hf:${SL}/docs`))).toMatch(/^test\/saelens-release at revision main: its folder docs holds no SAE \(a cfg\.json or config\.json with sae_weights\.safetensors, sae\.safetensors or ae\.pt\); SAE folders there: /);
    expect(await userError(openSae(`hf:${SL}`))).toMatch(/its top folder holds no SAE/);
  });

  it('a revision that does not exist', async () => {
    expect(await userError(openSae(`hf:${SL}/${L1}@v9`))).toMatch(/^revision v9 not found in test\/saelens-release on http:\/\/127\.0\.0\.1:\d+$/);
  });

  it('no network', async () => {
    process.env.HF_ENDPOINT = 'http://127.0.0.1:9';
    expect(await userError(openSae(`hf:${SL}/${L1}`))).toMatch(/^cannot reach the Hugging Face Hub at http:\/\/127\.0\.0\.1:9 /);
  });

  it('through the CLI: one line on stderr and a non-zero exit', async () => {
    // not spawnSync: the loopback Hub answers from this process
    const bin = path.resolve(__dirname, '..', 'bin', 'run.js');
    const r = await new Promise<{ status: number; stderr: string }>((resolve) => {
      execFile(process.execPath, [bin, 'eval', '--checkpoint', 'hf:nobody/nothing', '--data', tmp], { env: { ...process.env, FORCE_COLOR: '0' } }, (err, _stdout, stderr) =>
        resolve({ status: err ? Number((err as { code?: number }).code ?? 1) : 0, stderr }),
      );
    });
    expect(r.status).not.toBe(0);
    expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(/^sae: error: SAE repo nobody\/nothing not found on /)]);
  });
});
