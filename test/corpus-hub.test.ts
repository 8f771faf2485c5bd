/**
 * Hub datasets as corpora, against a loopback stand-in for the Hub that answers what
 * src/corpus/hub-dataset.ts asks:
 *
 *   GET /api/datasets/{id}/revision/{rev}            sha and cardData
 *   GET /api/datasets/{id}/tree/{rev}?recursive=true listing, three entries a page (Link: next)
 *   GET /datasets/{id}/resolve/{rev}/{path}          302 to /cdn/{key}, as LFS files do
 *   GET /cdn/{key}                                   bytes, honouring Range
 *
 * and logs every byte range served, so the tests can tell which parts of which file were read.
 */
import { describe, it, expect, beforeAll, afterAll, beforeEach } from 'vitest';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { createHash, randomBytes } from 'node:crypto';
import { parquetMetadata } from 'hyparquet';
import { parquetWriteBuffer } from 'hyparquet-writer';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { stringify as stringifyYaml } from 'yaml';
import { openCorpus, type Corpus, type CorpusPosition } from '../src/corpus/corpus.js';
import { UserError } from '../src/util/errors.js';

interface Revision {
  files: Record<string, Uint8Array>;
  card?: unknown;
}

interface Repo {
  revisions: Record<string, Revision>;
  token?: string;
}

interface Served {
  file: string;
  start: number;
  end: number; // inclusive
  status: number;
  authorization?: string;
}

const shaOf = (id: string, rev: string): string => createHash('sha1').update(`${id}@${rev}`).digest('hex');

class FakeDatasetHub {
  readonly served: Served[] = [];
  readonly apiCalls: { path: string; authorization?: string }[] = [];
  private server: http.Server | null = null;
  private readonly blobs = new Map<string, { file: string; data: Uint8Array }>();

  constructor(private readonly repos: Record<string, Repo>) {}

  get url(): string {
    return `http://127.0.0.1:${(this.server!.address() as AddressInfo).port}`;
  }

  async start(): Promise<void> {
    this.server = http.createServer((req, res) => this.handle(req, res));
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve));
  }

  async stop(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise<void>((resolve) => this.server?.close(() => resolve()) ?? resolve());
  }

  private find(id: string, rev: string): { sha: string; rev: Revision } | null {
    const repo = this.repos[id];
    if (!repo) return null;
    for (const [name, r] of Object.entries(repo.revisions)) if (name === rev || shaOf(id, name) === rev) return { sha: shaOf(id, name), rev: r };
    return null;
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const url = new URL(req.url ?? '/', 'http://x');
    const auth = req.headers.authorization;
    let m = /^\/cdn\/(\w+)$/.exec(url.pathname);
    if (m) return this.send(req, res, this.blobs.get(m[1])!);

    m = /^\/api\/datasets\/([^/]+\/[^/]+)\/(revision|tree)\/([^/]+)(\/.*)?$/.exec(url.pathname);
    if (m) {
      this.apiCalls.push({ path: url.pathname, authorization: auth });
      const [, id, what, rawRev, sub] = m;
      if (!this.authorised(id, auth)) return json(res, 401, { error: 'Access to this dataset is restricted' });
      const found = this.find(id, decodeURIComponent(rawRev));
      if (!this.repos[id]) return json(res, 404, { error: 'Repository not found' }, 'RepoNotFound');
      if (!found) return json(res, 404, { error: `Invalid rev id: ${decodeURIComponent(rawRev)}` }, 'RevisionNotFound');
      if (what === 'revision') {
        return json(res, 200, { _id: `x${id}`, id, sha: found.sha, private: false, gated: false, downloads: 0, likes: 0, lastModified: '2024-01-01T00:00:00.000Z', cardData: found.rev.card });
      }
      const prefix = sub ? `${sub.slice(1)}/` : '';
      const entries = Object.entries(found.rev.files)
        .filter(([p]) => p.startsWith(prefix))
        .map(([p, data]) => ({ type: 'file', path: p, size: data.length, oid: createHash('sha1').update(data).digest('hex') }));
      const cursor = Number(url.searchParams.get('cursor') ?? 0);
      const page = entries.slice(cursor, cursor + 3);
      if (cursor + 3 < entries.length) {
        const next = new URL(url.toString().replace('http://x', this.url));
        next.searchParams.set('cursor', String(cursor + 3));
        res.setHeader('Link', `<${next}>; rel="next"`);
      }
      return json(res, 200, page);
    }

    m = /^\/datasets\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(url.pathname);
    if (m) {
      const [, id, rev, file] = m;
      if (!this.authorised(id, auth)) return json(res, 401, { error: 'restricted' });
      const found = this.find(id, rev);
      const path = decodeURIComponent(file);
      const data = found?.rev.files[path];
      if (!data) return json(res, 404, { error: 'Entry not found' });
      const key = createHash('sha256').update(data).digest('hex');
      this.blobs.set(key, { file: path, data });
      this.served.push({ file: path, start: -1, end: -1, status: 302, authorization: auth });
      res.writeHead(302, { Location: `/cdn/${key}` });
      return void res.end();
    }
    json(res, 404, { error: 'not found' });
  }

  private authorised(id: string, auth: string | undefined): boolean {
    const token = this.repos[id]?.token;
    return !token || auth === `Bearer ${token}`;
  }

  private send(req: http.IncomingMessage, res: http.ServerResponse, blob: { file: string; data: Uint8Array }): void {
    const { file, data } = blob;
    const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
    if (!range) {
      this.served.push({ file, start: 0, end: data.length - 1, status: 200 });
      res.writeHead(200, { 'Content-Length': data.length });
      return void res.end(data);
    }
    const start = Number(range[1]);
    const end = Math.min(range[2] ? Number(range[2]) : data.length - 1, data.length - 1);
    this.served.push({ file, start, end, status: 206 });
    res.writeHead(206, { 'Content-Range': `bytes ${start}-${end}/${data.length}`, 'Content-Length': end - start + 1 });
    res.end(data.subarray(start, end + 1));
  }
}

function json(res: http.ServerResponse, status: number, body: unknown, errorCode?: string): void {
  if (errorCode) res.setHeader('X-Error-Code', errorCode);
  res.writeHead(status, { 'Content-Type': 'application/json' });
  res.end(JSON.stringify(body));
}

// ---------------------------------------------------------------------------------------------
// data: Parquet files with a large incompressible `pad` column before `text`, 4 row groups of 5

const ROWS_PER_GROUP = 5;
const GROUPS = 4;
const docText = (file: number, row: number): string => `document ${file}.${row}: some words about nothing in particular`;

function shard(file: number): Uint8Array {
  const n = ROWS_PER_GROUP * GROUPS;
  const rows = Array.from({ length: n }, (_, r) => r);
  return new Uint8Array(
    parquetWriteBuffer({
      columnData: [
        { name: 'pad', data: rows.map(() => randomBytes(6000).toString('base64')), type: 'STRING' },
        { name: 'text', data: rows.map((r) => docText(file, r)), type: 'STRING' },
      ],
      rowGroupSize: ROWS_PER_GROUP,
    }),
  );
}

/** [start, end) of each row group's column chunk for `column` */
function chunkRanges(data: Uint8Array, column: string): { start: number; end: number }[] {
  const meta = parquetMetadata(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength) as ArrayBuffer);
  return meta.row_groups.map((rg) => {
    const c = rg.columns.find((x) => x.meta_data!.path_in_schema[0] === column)!.meta_data!;
    const start = Number(c.dictionary_page_offset ?? c.data_page_offset);
    return { start, end: start + Number(c.total_compressed_size) };
  });
}

const sample0 = shard(0);
const sample1 = shard(1);
const other = shard(7);
const card = {
  configs: [
    { config_name: 'default', default: true, data_files: [{ split: 'train', path: 'data/train-*' }] },
    { config_name: 'sample-tiny', data_files: [{ split: 'train', path: 'sample/tiny/*' }, { split: 'test', path: 'sample/test/*' }] },
  ],
};

const hub = new FakeDatasetHub({
  'acme/web': {
    revisions: {
      main: {
        card,
        files: {
          'README.md': Buffer.from('---\nconfigs: ...\n---\n'),
          'data/train-00000-of-00001.parquet': other,
          'sample/tiny/000_00000.parquet': sample0,
          'sample/tiny/000_00001.parquet': sample1,
          'sample/tiny/notes.txt': Buffer.from('not data'),
        },
      },
    },
  },
  'acme/jsonl-only': {
    revisions: {
      main: { card: {}, files: { 'README.md': Buffer.from('# hi'), 'data/train.jsonl': Buffer.from('{"text":"x"}\n') } },
      'refs/convert/parquet': { files: { 'default/train/0000.parquet': sample0, 'default/test/0000.parquet': other } },
    },
  },
  'acme/private': {
    token: 'hf_secret',
    revisions: { main: { card, files: { 'sample/tiny/000_00000.parquet': sample0 } } },
  },
});

beforeAll(() => hub.start());
afterAll(() => hub.stop());
beforeEach(() => {
  hub.served.length = 0;
  hub.apiCalls.length = 0;
});

const sample = { id: 'acme/web', name: 'sample-tiny', split: 'train' };
const openSample = (): Promise<Corpus> => openCorpus({ hub: sample }, { endpoint: hub.url });

async function all(corpus: Corpus, from?: CorpusPosition): Promise<{ text: string; position: CorpusPosition }[]> {
  const out: { text: string; position: CorpusPosition }[] = [];
  for await (const d of corpus.documents(from)) out.push(d);
  return out;
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

const expectedTexts = [0, 1].flatMap((f) => Array.from({ length: ROWS_PER_GROUP * GROUPS }, (_, r) => docText(f, r)));
const ranges = (file: string) => hub.served.filter((s) => s.file === file && s.status !== 302);

describe('a Hub dataset corpus', () => {
  it('reads the files a card config names for the split, in path order', async () => {
    const docs = await all(await openSample());
    expect(docs.map((d) => d.text)).toEqual(expectedTexts);
    expect(docs[25].position).toEqual({ file: 1, row: 5 });
  });

  it('uses the default config when no name is given', async () => {
    const docs = await all(await openCorpus({ hub: { id: 'acme/web' } }, { endpoint: hub.url }));
    expect(docs[0].text).toBe(docText(7, 0));
  });

  it('describes the dataset by the commit it resolved, and pins that commit', async () => {
    const corpus = await openSample();
    const sha = shaOf('acme/web', 'main');
    expect(corpus.describe()).toBe(`hf:acme/web@${sha}/sample-tiny/train#text`);
    expect(corpus.pinned()).toEqual({ hub: { id: 'acme/web', name: 'sample-tiny', split: 'train', revision: sha }, textField: 'text' });
  });

  it('follows the listing across pages', async () => {
    await all(await openSample());
    expect(hub.apiCalls.filter((c) => c.path.includes('/tree/')).length).toBeGreaterThan(1);
  });

  it('requests only the footer and the text column chunks, never whole files', async () => {
    await all(await openSample());
    for (const [name, data] of [['sample/tiny/000_00000.parquet', sample0], ['sample/tiny/000_00001.parquet', sample1]] as const) {
      const served = ranges(name);
      expect(served.length).toBeGreaterThan(1);
      expect(served.every((s) => s.status === 206)).toBe(true);
      const text = chunkRanges(data, 'text');
      const [footer, ...rest] = served;
      expect(footer.end).toBe(data.length - 1);
      for (const s of rest) expect(text.some((c) => s.start >= c.start && s.end < c.end)).toBe(true);
      const bytes = served.reduce((n, s) => n + s.end - s.start + 1, 0);
      expect(bytes).toBeLessThan(data.length / 2);
    }
    expect(ranges('data/train-00000-of-00001.parquet')).toEqual([]);
  });

  it('resumes at the right row without touching earlier files or row groups', async () => {
    const corpus = await openSample();
    hub.served.length = 0;
    // after row 11 of the second file: row group 2 (rows 10-14) onwards
    const docs = await all(corpus, { file: 1, row: 11 });
    expect(docs[0].text).toBe(docText(1, 12));
    expect(docs.map((d) => d.text)).toEqual(expectedTexts.slice(20 + 12));
    expect(ranges('sample/tiny/000_00000.parquet')).toEqual([]);
    const text = chunkRanges(sample1, 'text');
    const [footer, ...rest] = ranges('sample/tiny/000_00001.parquet');
    expect(footer.end).toBe(sample1.length - 1);
    expect(rest.length).toBeGreaterThan(0);
    for (const s of rest) expect(s.start).toBeGreaterThanOrEqual(text[2].start);
  });

  it('from every position gives the same tail as an uninterrupted read', async () => {
    const corpus = await openSample();
    const full = await all(corpus);
    for (let i = 0; i < full.length; i += 3) {
      expect(await all(corpus, JSON.parse(JSON.stringify(full[i].position)) as CorpusPosition)).toEqual(full.slice(i + 1));
    }
  });

  it('reopened from its pinned spec reads the same documents', async () => {
    const corpus = await openSample();
    const again = await openCorpus(corpus.pinned(), { endpoint: hub.url });
    expect(again.describe()).toBe(corpus.describe());
    expect((await all(again)).map((d) => d.text)).toEqual(expectedTexts);
  });

  it('falls back to the refs/convert/parquet branch when the repo has no Parquet files', async () => {
    const corpus = await openCorpus({ hub: { id: 'acme/jsonl-only' } }, { endpoint: hub.url });
    const sha = shaOf('acme/jsonl-only', 'refs/convert/parquet');
    expect(corpus.describe()).toBe(`hf:acme/jsonl-only@${sha}/default/train#text`);
    expect((await all(corpus)).map((d) => d.text)).toEqual(expectedTexts.slice(0, 20));
    const again = await openCorpus(corpus.pinned(), { endpoint: hub.url });
    expect((await all(again)).map((d) => d.text)).toEqual(expectedTexts.slice(0, 20));
  });

  it('sends the token as a Bearer header on API calls and range requests', async () => {
    const corpus = await openCorpus({ hub: { id: 'acme/private', name: 'sample-tiny' } }, { endpoint: hub.url, token: 'hf_secret' });
    expect(await all(corpus)).toHaveLength(20);
    expect(hub.apiCalls.every((c) => c.authorization === 'Bearer hf_secret')).toBe(true);
    expect(hub.served.filter((s) => s.status === 302).every((s) => s.authorization === 'Bearer hf_secret')).toBe(true);
  });

  it('takes the endpoint from HF_ENDPOINT', async () => {
    const saved = process.env.HF_ENDPOINT;
    process.env.HF_ENDPOINT = hub.url;
    try {
      const corpus = await openCorpus({ hub: sample });
      expect((await all(corpus)).length).toBe(40);
    } finally {
      if (saved === undefined) delete process.env.HF_ENDPOINT;
      else process.env.HF_ENDPOINT = saved;
    }
  });
});

describe('a Hub dataset corpus, bad input', () => {
  it('a gated dataset without a token', async () => {
    const saved = process.env.HF_TOKEN;
    process.env.HF_TOKEN = 'hf_wrong';
    try {
      const err = await userErrorOf(openCorpus({ hub: { id: 'acme/private' } }, { endpoint: hub.url }));
      expect(err.message).toMatch(/gated or private \(HTTP 401\)/);
    } finally {
      if (saved === undefined) delete process.env.HF_TOKEN;
      else process.env.HF_TOKEN = saved;
    }
  });

  it('a dataset that does not exist', async () => {
    const err = await userErrorOf(openCorpus({ hub: { id: 'acme/nothing' } }, { endpoint: hub.url, token: 'hf_x' }));
    expect(err.message).toMatch(/dataset acme\/nothing not found/);
  });

  it('a revision that does not exist', async () => {
    const err = await userErrorOf(openCorpus({ hub: { ...sample, revision: 'v9' } }, { endpoint: hub.url }));
    expect(err.message).toMatch(/revision v9 not found/);
  });

  it('a config that does not exist, listing the configs', async () => {
    const err = await userErrorOf(openCorpus({ hub: { id: 'acme/web', name: 'nope' } }, { endpoint: hub.url }));
    expect(err.message).toBe('dataset acme/web has no config nope (configs: default, sample-tiny)');
  });

  it('a split that does not exist, listing the splits', async () => {
    const err = await userErrorOf(openCorpus({ hub: { ...sample, split: 'validation' } }, { endpoint: hub.url }));
    expect(err.message).toMatch(/has no split validation \(splits: train, test\)/);
  });

  it('a split whose pattern matches no Parquet file', async () => {
    const err = await userErrorOf(openCorpus({ hub: { ...sample, split: 'test', revision: 'main' } }, { endpoint: hub.url }));
    expect(err.message).toMatch(/found no Parquet files for acme\/web config sample-tiny split test/);
  });

  it('a text column that does not exist', async () => {
    const corpus = await openCorpus({ hub: sample, textField: 'content' }, { endpoint: hub.url });
    const err = await userErrorOf(all(corpus));
    expect(err.message).toMatch(/no column "content" \(columns: pad, text\)/);
  });

  it('an endpoint that cannot be reached', async () => {
    const closed = http.createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const port = (closed.address() as AddressInfo).port;
    await new Promise<void>((r) => closed.close(() => r()));
    const err = await userErrorOf(openCorpus({ hub: sample }, { endpoint: `http://127.0.0.1:${port}` }));
    expect(err.message).toMatch(/cannot reach the Hugging Face Hub/);
  });
});

describe('a Hub dataset corpus offline (HF_HUB_OFFLINE)', () => {
  const sha = shaOf('acme/web', 'main');
  let cache: string;

  /** What `huggingface-cli download --repo-type dataset acme/web` leaves: blobs, a snapshot of links to them, refs/main. */
  beforeAll(async () => {
    cache = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-hfcache-'));
    const repo = path.join(cache, 'datasets--acme--web');
    const files: Record<string, Uint8Array> = {
      'README.md': Buffer.from(`---\n${stringifyYaml(card)}---\n# acme/web\n`),
      'sample/tiny/000_00000.parquet': sample0,
      'sample/tiny/000_00001.parquet': sample1,
    };
    for (const [name, data] of Object.entries(files)) {
      const blob = path.join(repo, 'blobs', createHash('sha256').update(data).digest('hex'));
      await fs.mkdir(path.dirname(blob), { recursive: true });
      await fs.writeFile(blob, data);
      const link = path.join(repo, 'snapshots', sha, name);
      await fs.mkdir(path.dirname(link), { recursive: true });
      await fs.symlink(path.relative(path.dirname(link), blob), link);
    }
    await fs.mkdir(path.join(repo, 'refs'), { recursive: true });
    await fs.writeFile(path.join(repo, 'refs', 'main'), sha);
  });
  afterAll(async () => {
    delete process.env.HF_HUB_OFFLINE;
    await fs.rm(cache, { recursive: true, force: true });
  });

  it('reads a cached dataset without any request, as the same documents and commit as online', async () => {
    const corpus = await openCorpus({ hub: sample }, { endpoint: hub.url, offline: true, cacheDir: cache });
    const docs = await all(corpus);
    expect(docs.map((d) => d.text)).toEqual(expectedTexts);
    expect(corpus.describe()).toBe(`hf:acme/web@${sha}/sample-tiny/train#text`);
    expect(hub.apiCalls).toEqual([]);
    expect(hub.served).toEqual([]);
  });

  it('says that the dataset is not in the cache, naming it, and makes no request', async () => {
    const err = await userErrorOf(openCorpus({ hub: { id: 'acme/other' } }, { endpoint: hub.url, offline: true, cacheDir: cache }));
    expect(err.message).toMatch(/^offline mode \(HF_HUB_OFFLINE is set\): dataset acme\/other at revision main is not in the Hugging Face cache at /);
    expect(err.message).toContain(path.join(cache, 'datasets--acme--other'));
    expect(hub.apiCalls).toEqual([]);
    expect(hub.served).toEqual([]);
  });

  it('takes offline mode from HF_HUB_OFFLINE=1', async () => {
    process.env.HF_HUB_OFFLINE = '1';
    try {
      const err = await userErrorOf(openCorpus({ hub: { id: 'acme/other' } }, { endpoint: hub.url, cacheDir: cache }));
      expect(err.message).toMatch(/^offline mode/);
    } finally {
      delete process.env.HF_HUB_OFFLINE;
    }
    expect(hub.apiCalls).toEqual([]);
  });
});
