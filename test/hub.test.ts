import { describe, it, expect, beforeAll, afterAll, beforeEach, afterEach } from 'vitest';
import { promises as fs, readdirSync, readFileSync } from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { resolveModel } from '../src/lm/hub.js';
import { UserError } from '../src/util/errors.js';
import { FakeHub, gitBlobOid, sha256, type Tree } from './fake-hub.js';

const GPT2 = 'fixtures/hf-tiny/gpt2';
const NEOX = 'fixtures/hf-tiny/gpt-neox';
const bytes = (dir: string, f: string): Uint8Array => readFileSync(path.join(dir, f));
const folder = (dir: string): Tree => Object.fromEntries(readdirSync(dir).map((f) => [f, bytes(dir, f)]));
const text = (s: string): Uint8Array => Buffer.from(s);

const gpt2 = folder(GPT2);
const neoxModel = bytes(NEOX, 'model.safetensors');
const neoxBin = Buffer.concat([neoxModel, text('torch zip stand-in')]);
const stepConfig = text(JSON.stringify({ ...JSON.parse(String(bytes(NEOX, 'config.json'))), _revision: 'step143000' }));
const half = neoxModel.length >> 1;

const hub = new FakeHub(
  {
    'openai-community/gpt2': { revisions: { main: gpt2 } },
    'EleutherAI/pythia-tiny': {
      revisions: {
        main: {
          'config.json': bytes(NEOX, 'config.json'),
          'tokenizer.json': bytes(NEOX, 'tokenizer.json'),
          'tokenizer_config.json': bytes(NEOX, 'tokenizer_config.json'),
          'model.safetensors': neoxModel,
          'pytorch_model.bin': neoxBin,
          'README.md': bytes(NEOX, 'README.md'),
        },
        // Pythia's intermediate checkpoints ship only torch weights
        step143000: {
          'config.json': stepConfig,
          'tokenizer.json': bytes(NEOX, 'tokenizer.json'),
          'tokenizer_config.json': bytes(NEOX, 'tokenizer_config.json'),
          'special_tokens_map.json': text('{"eos_token":"<|endoftext|>"}'),
          'pytorch_model.bin': neoxBin,
        },
      },
    },
    'test/sharded': {
      revisions: {
        main: {
          'config.json': bytes(NEOX, 'config.json'),
          'tokenizer.json': bytes(NEOX, 'tokenizer.json'),
          'model.safetensors.index.json': text(
            JSON.stringify({
              metadata: { total_size: neoxModel.length },
              weight_map: { a: 'model-00001-of-00002.safetensors', b: 'model-00002-of-00002.safetensors', c: 'model-00001-of-00002.safetensors' },
            }),
          ),
          'model-00001-of-00002.safetensors': neoxModel.subarray(0, half),
          'model-00002-of-00002.safetensors': neoxModel.subarray(half),
          // left over from an older upload, in no index
          'model-00001-of-00003.safetensors': neoxModel.subarray(0, 1000),
          'pytorch_model.bin': neoxBin,
        },
      },
    },
    'test/gated': {
      token: 'hf_secret',
      revisions: { main: { 'config.json': bytes(GPT2, 'config.json'), 'model.safetensors': bytes(GPT2, 'model.safetensors') } },
    },
    'test/no-weights': { revisions: { main: { 'config.json': bytes(GPT2, 'config.json'), 'README.md': text('# nothing') } } },
  },
  { gpt2: 'openai-community/gpt2' },
);

const ENV_KEYS = ['HF_HOME', 'HF_ENDPOINT', 'HF_TOKEN', 'HF_TOKEN_PATH', 'HF_HUB_OFFLINE', 'HF_HUB_CACHE', 'HUGGINGFACE_HUB_CACHE', 'XDG_CACHE_HOME'];
const savedEnv = Object.fromEntries(ENV_KEYS.map((k) => [k, process.env[k]]));
let tmp: string;
let cache: string;
const storage = (repo: string) => path.join(cache, `models--${repo.replace('/', '--')}`);

beforeAll(async () => {
  await hub.start();
});
afterAll(async () => {
  await hub.stop();
});
beforeEach(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-hub-'));
  for (const k of ENV_KEYS) delete process.env[k];
  // everything through the environment, as a user sets it; $HF_HOME in a temp dir also keeps a
  // real ~/.cache/huggingface/token out of the tests
  process.env.HF_HOME = path.join(tmp, 'hf');
  process.env.HF_ENDPOINT = hub.url;
  cache = path.join(tmp, 'hf', 'hub');
  hub.requests.length = 0;
});
afterEach(async () => {
  for (const k of ENV_KEYS) {
    if (savedEnv[k] === undefined) delete process.env[k];
    else process.env[k] = savedEnv[k];
  }
  await fs.rm(tmp, { recursive: true, force: true });
});

async function expectUserError(p: Promise<unknown>, re: RegExp): Promise<void> {
  const err = await p.then(() => null, (e: unknown) => e);
  expect(err).toBeInstanceOf(UserError);
  expect((err as Error).message).toMatch(re);
  expect((err as Error).message).not.toContain('\n');
}

// toEqual walks large arrays element by element, which takes seconds for a checkpoint
const sameBytes = (a: Uint8Array, b: Uint8Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(b);
const exists = (p: string) => fs.lstat(p).then(() => true, () => false);
const sorted = async (dir: string) => (await fs.readdir(dir)).sort();

describe('resolveModel by Hub id', () => {
  it('downloads into the cache in the layout huggingface_hub writes: blobs by etag, snapshot symlinks, refs', async () => {
    const r = await resolveModel('openai-community/gpt2');
    const commit = hub.commitOf('openai-community/gpt2', 'main');
    const repoDir = storage('openai-community/gpt2');
    expect(r).toEqual({ dir: path.join(repoDir, 'snapshots', commit), source: 'hub', repo: 'openai-community/gpt2', revision: 'main', commit });
    expect(await fs.readFile(path.join(repoDir, 'refs', 'main'), 'utf8')).toBe(commit);
    // LFS files are named by their sha256, the others by their git blob id, as Python names them
    const expectedBlob = { 'model.safetensors': sha256(gpt2['model.safetensors']), 'config.json': gitBlobOid(gpt2['config.json']) };
    for (const [file, blob] of Object.entries(expectedBlob)) {
      const link = path.join(r.dir, file);
      expect((await fs.lstat(link)).isSymbolicLink()).toBe(true);
      expect(await fs.readlink(link)).toBe(path.join('..', '..', 'blobs', blob));
      expect(sameBytes(await fs.readFile(link), gpt2[file])).toBe(true);
    }
    expect((await sorted(path.join(repoDir, 'blobs'))).some((f) => f.endsWith('.incomplete'))).toBe(false);
  });

  it('records optional files the repo lacks in .no_exist, as Python does', async () => {
    const r = await resolveModel('openai-community/gpt2');
    expect(await sorted(path.join(storage('openai-community/gpt2'), '.no_exist', r.commit!))).toEqual(['generation_config.json', 'special_tokens_map.json']);
  });

  it('fetches only the files a model needs, not the rest of the repo', async () => {
    const r = await resolveModel('openai-community/gpt2');
    expect(await sorted(r.dir)).toEqual(['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']);
    for (const other of ['README.md', 'vocab.json', 'merges.txt', 'reference.safetensors', 'tokenizer_reference.jsonl']) {
      expect(hub.requests.filter((q) => q.path.includes(other))).toEqual([]);
    }
  });

  it('a second call makes no request', async () => {
    const first = await resolveModel('openai-community/gpt2');
    hub.requests.length = 0;
    const second = await resolveModel('openai-community/gpt2');
    expect(hub.requests).toEqual([]);
    expect(second).toEqual({ ...first, source: 'cache' });
  });

  it('with HF_HUB_OFFLINE=1 a cached model loads without a request', async () => {
    const first = await resolveModel('openai-community/gpt2');
    hub.requests.length = 0;
    process.env.HF_HUB_OFFLINE = '1';
    const second = await resolveModel('openai-community/gpt2');
    expect(hub.requests).toEqual([]);
    expect(second).toEqual({ ...first, source: 'cache' });
  });

  it('a commit sha as revision loads from the cache without a request', async () => {
    const first = await resolveModel('openai-community/gpt2');
    hub.requests.length = 0;
    const r = await resolveModel('openai-community/gpt2', { revision: first.commit });
    expect(hub.requests).toEqual([]);
    expect(r.dir).toBe(first.dir);
  });

  it('offline and not cached is a one-line error naming the id and revision, without a request', async () => {
    process.env.HF_HUB_OFFLINE = '1';
    await expectUserError(resolveModel('openai-community/gpt2', { revision: 'v2' }), /openai-community\/gpt2 at revision v2 is not in the Hugging Face cache/);
    expect(hub.requests).toEqual([]);
  });

  it('a snapshot missing a file is completed online, fetching only that file', async () => {
    const r = await resolveModel('openai-community/gpt2');
    await fs.rm(path.join(r.dir, 'tokenizer.json'));
    await fs.rm(path.join(storage('openai-community/gpt2'), 'blobs', gitBlobOid(gpt2['tokenizer.json'])));
    hub.requests.length = 0;
    await resolveModel('openai-community/gpt2');
    expect(sameBytes(await fs.readFile(path.join(r.dir, 'tokenizer.json')), gpt2['tokenizer.json'])).toBe(true);
    expect(hub.requests.filter((q) => q.path.includes('/resolve/')).map((q) => path.basename(q.path))).toEqual(['tokenizer.json', 'tokenizer.json']);
  });

  it('an unknown repo (404) is a one-line error', async () => {
    await expectUserError(resolveModel('nobody/nothing'), /model nobody\/nothing not found on http:\/\/127\.0\.0\.1:\d+ \(HTTP 404\)/);
  });

  it('an unknown revision is a one-line error naming it', async () => {
    await expectUserError(resolveModel('openai-community/gpt2', { revision: 'step9' }), /revision step9 not found in openai-community\/gpt2/);
  });

  it('a gated repo without a token is a one-line error pointing at HF_TOKEN', async () => {
    await expectUserError(resolveModel('test/gated'), /test\/gated is gated or private.*HF_TOKEN/);
  });

  it('HF_TOKEN is sent as a Bearer token on every request', async () => {
    process.env.HF_TOKEN = 'hf_secret';
    await resolveModel('test/gated');
    expect(hub.requests.length).toBeGreaterThan(0);
    expect(hub.requests.filter((q) => q.authorization !== 'Bearer hf_secret')).toEqual([]);
  });

  it('the token saved in $HF_HOME/token is used when HF_TOKEN is unset', async () => {
    await fs.mkdir(process.env.HF_HOME!, { recursive: true });
    await fs.writeFile(path.join(process.env.HF_HOME!, 'token'), 'hf_secret\n');
    const r = await resolveModel('test/gated');
    expect(r.source).toBe('hub');
  });

  it('a revision other than main downloads that commit and records its ref', async () => {
    const r = await resolveModel('EleutherAI/pythia-tiny', { revision: 'step143000' });
    const commit = hub.commitOf('EleutherAI/pythia-tiny', 'step143000');
    expect(commit).not.toBe(hub.commitOf('EleutherAI/pythia-tiny', 'main'));
    expect(r.commit).toBe(commit);
    expect(await fs.readFile(path.join(storage('EleutherAI/pythia-tiny'), 'refs', 'step143000'), 'utf8')).toBe(commit);
    expect(sameBytes(await fs.readFile(path.join(r.dir, 'config.json')), stepConfig)).toBe(true);
    // the only weights that revision has
    expect(await sorted(r.dir)).toEqual(['config.json', 'pytorch_model.bin', 'special_tokens_map.json', 'tokenizer.json', 'tokenizer_config.json']);
  });

  it('model.safetensors is chosen over pytorch_model.bin when the repo has both', async () => {
    const r = await resolveModel('EleutherAI/pythia-tiny');
    expect(await sorted(r.dir)).toEqual(['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']);
    expect(hub.downloadsOf('pytorch_model.bin')).toEqual([]);
  });

  it('a sharded checkpoint fetches its index and every shard it lists, nothing else', async () => {
    const r = await resolveModel('test/sharded');
    expect(await sorted(r.dir)).toEqual([
      'config.json',
      'model-00001-of-00002.safetensors',
      'model-00002-of-00002.safetensors',
      'model.safetensors.index.json',
      'tokenizer.json',
    ]);
    expect(hub.downloadsOf('model-00001-of-00003.safetensors')).toEqual([]);
    expect(hub.downloadsOf('pytorch_model.bin')).toEqual([]);
    // complete: a second call needs the Hub no more
    hub.requests.length = 0;
    expect((await resolveModel('test/sharded')).source).toBe('cache');
    expect(hub.requests).toEqual([]);
  });

  it('a snapshot missing a shard is not taken for a cached model', async () => {
    const r = await resolveModel('test/sharded');
    await fs.rm(path.join(r.dir, 'model-00002-of-00002.safetensors'));
    process.env.HF_HUB_OFFLINE = '1';
    await expectUserError(resolveModel('test/sharded'), /test\/sharded at revision main is not in the Hugging Face cache/);
  });

  it('a repo without supported weights is a one-line error', async () => {
    await expectUserError(resolveModel('test/no-weights'), /test\/no-weights .*no supported weights/);
  });

  it('a short id follows the Hub redirect and is cached under the id as given', async () => {
    const r = await resolveModel('gpt2');
    expect(r.dir).toBe(path.join(storage('gpt2'), 'snapshots', hub.commitOf('openai-community/gpt2', 'main')));
    expect(sameBytes(await fs.readFile(path.join(r.dir, 'model.safetensors')), gpt2['model.safetensors'])).toBe(true);
  });

  it('a download cut short leaves nothing in the snapshot, and the next call completes it', async () => {
    const blob = sha256(gpt2['model.safetensors']);
    hub.cutShort.add(blob);
    await expectUserError(resolveModel('openai-community/gpt2'), /downloading model\.safetensors of openai-community\/gpt2 .* failed/);
    const repoDir = storage('openai-community/gpt2');
    const commit = hub.commitOf('openai-community/gpt2', 'main');
    expect(await exists(path.join(repoDir, 'snapshots', commit, 'model.safetensors'))).toBe(false);
    expect(await exists(path.join(repoDir, 'blobs', blob))).toBe(false);
    expect(await exists(path.join(repoDir, 'refs', 'main'))).toBe(false);
    const r = await resolveModel('openai-community/gpt2');
    expect(sameBytes(await fs.readFile(path.join(r.dir, 'model.safetensors')), gpt2['model.safetensors'])).toBe(true);
  });

  it('an unreachable endpoint is a one-line error naming it', async () => {
    const closed = http.createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const port = (closed.address() as AddressInfo).port;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    process.env.HF_ENDPOINT = `http://127.0.0.1:${port}/`;
    await expectUserError(resolveModel('openai-community/gpt2'), new RegExp(`cannot reach the Hugging Face Hub at http://127\\.0\\.0\\.1:${port} `));
  });

  it('HF_HUB_CACHE places the cache, ahead of HF_HOME', async () => {
    process.env.HF_HUB_CACHE = path.join(tmp, 'elsewhere');
    const r = await resolveModel('openai-community/gpt2');
    expect(r.dir.startsWith(path.join(tmp, 'elsewhere', 'models--openai-community--gpt2', 'snapshots'))).toBe(true);
    expect(await exists(cache)).toBe(false);
  });
});

describe('resolveModel with a local folder', () => {
  it('an existing folder is returned as is, without a request', async () => {
    expect(await resolveModel(GPT2)).toEqual({ dir: path.resolve(GPT2), source: 'local' });
    expect(hub.requests).toEqual([]);
  });

  it('a folder without config.json is a one-line error', async () => {
    await expectUserError(resolveModel(tmp), /has no config\.json/);
  });

  it('a ./path that does not exist is an error, not a Hub id', async () => {
    await expectUserError(resolveModel('./no-such-model'), /model folder \.\/no-such-model does not exist/);
    expect(hub.requests).toEqual([]);
  });
});
