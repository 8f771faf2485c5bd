/**
 * A loopback stand-in for the Hugging Face Hub, answering the requests @huggingface/hub makes
 * when src/lm/hub.ts downloads a model:
 *
 *   GET  /api/models/{repo}/revision/{rev}?expand=…   model info: sha, siblings (modelInfo)
 *   POST /api/models/{repo}/paths-info/{rev}           oid, size, lfs per path (pathsInfo)
 *   GET  /{repo}/resolve/{rev}/{path}                  the file; LFS files redirect to /cdn/{sha256}
 *   GET  /cdn/{sha256}                                 LFS contents
 *
 * with Range requests (the library probes with bytes=0-0), ETag / X-Linked-Etag / X-Linked-Size /
 * X-Repo-Commit headers, the Hub's X-Error-Code on errors, short ids (`gpt2`) answered with a
 * redirect to the full id, and repos that want a Bearer token. Every request is logged.
 *
 * And what @huggingface/hub's createRepo, createBranch and commit / uploadFiles send, as `sae
 * push` uses them (each needs `Authorization: Bearer hf_…`, or exactly `writeToken` when set):
 *
 *   GET  /api/models/{repo}                             200 when the repo exists (repoExists)
 *   POST /api/repos/create                              {name, organization, type}; 409 if it exists
 *   POST /api/models/{repo}/branch/{branch}             a branch from main; 409 if it exists
 *   POST /api/models/{repo}/preupload/{rev}             uploadMode lfs for weights, regular otherwise
 *   POST /{repo}.git/info/lfs/objects/batch             basic transfer: PUT /lfs-upload/{sha256}
 *   POST /api/models/{repo}/commit/{rev}                ndjson header / file / lfsFile / deletedFile
 *
 * A commit becomes the branch's new head (downloads see it) and is recorded in `pushed`.
 */
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { createHash } from 'node:crypto';

export type Tree = Record<string, Uint8Array>;

export interface FakeRepo {
  /** branch or tag name → tree; each tree gets its own commit sha */
  revisions: Record<string, Tree>;
  /** when set, every request must carry `Authorization: Bearer {token}` */
  token?: string;
}

export interface PushedCommit {
  repo: string;
  branch: string;
  title: string;
  sha: string;
  /** the files this commit added or replaced, with their contents */
  files: Tree;
  /** the whole tree after it */
  tree: Tree;
}

export interface LoggedRequest {
  method: string;
  path: string;
  authorization?: string;
}

interface Commit {
  sha: string;
  tree: Tree;
}

const LFS = /\.(safetensors|bin|pt)$/;

export function gitBlobOid(data: Uint8Array): string {
  return createHash('sha1').update(`blob ${data.length}\0`).update(data).digest('hex');
}

export function sha256(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

export class FakeHub {
  readonly requests: LoggedRequest[] = [];
  /** etags (sha256 of LFS files) whose next download sends half the body, then drops the connection */
  readonly cutShort = new Set<string>();
  /** commits made through the commit API, in order */
  readonly pushed: PushedCommit[] = [];
  /** repos made through the create API */
  readonly created: { repo: string; visibility?: string }[] = [];
  /** when set, writes must carry exactly this token (else any hf_ token will do) */
  writeToken: string | null = null;
  private server: http.Server | null = null;
  private readonly commits = new Map<string, Map<string, Commit>>();
  private readonly blobs = new Map<string, Uint8Array>();

  constructor(
    private readonly repos: Record<string, FakeRepo>,
    /** short id → full id, as the Hub redirects `gpt2` to `openai-community/gpt2` */
    private readonly aliases: Record<string, string> = {},
  ) {
    for (const [id, repo] of Object.entries(repos)) this.addRepo(id, repo);
  }

  get url(): string {
    const addr = this.server?.address() as AddressInfo;
    return `http://127.0.0.1:${addr.port}`;
  }

  commitOf(repo: string, rev: string): string {
    return this.commits.get(repo)!.get(rev)!.sha;
  }

  async start(): Promise<void> {
    this.server = http.createServer((req, res) => {
      this.handle(req, res).catch((err: unknown) => {
        res.statusCode = 500;
        res.end(String(err));
      });
    });
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve));
  }

  async stop(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise<void>((resolve) => this.server?.close(() => resolve()) ?? resolve());
  }

  /** resolve requests for `file` made so far */
  downloadsOf(file: string): LoggedRequest[] {
    return this.requests.filter((r) => r.path.includes('/resolve/') && r.path.endsWith(`/${file}`));
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://x');
    const p = decodeURIComponent(url.pathname);
    this.requests.push({ method: req.method ?? 'GET', path: url.pathname, authorization: req.headers.authorization });
    const raw = await readBody(req);
    const body = raw.toString('utf8');

    if (p.startsWith('/cdn/')) return this.sendFile(req, res, this.blobs.get(p.slice(5)), p.slice(5));
    if (await this.handleWrite(req, res, p, raw)) return;

    let m = /^\/api\/models\/(.+)\/(revision|paths-info)\/(.+)$/.exec(p);
    if (m) {
      const [, id, what, rev] = m;
      if (this.aliases[id]) return redirect(res, url.pathname.replace(`/api/models/${id}/`, `/api/models/${this.aliases[id]}/`) + url.search);
      const commit = this.lookup(req, res, id, rev);
      if (!commit) return;
      if (what === 'revision') {
        return json(res, 200, {
          _id: `id-${id}`,
          id,
          sha: commit.sha,
          private: false,
          gated: false,
          downloads: 0,
          likes: 0,
          lastModified: '2024-01-01T00:00:00.000Z',
          siblings: Object.keys(commit.tree).map((rfilename) => ({ rfilename })),
        });
      }
      const { paths } = JSON.parse(body || '{}') as { paths?: string[] };
      return json(
        res,
        200,
        (paths ?? []).filter((f) => f in commit.tree).map((f) => {
          const data = commit.tree[f];
          return {
            type: 'file',
            path: f,
            size: data.length,
            oid: gitBlobOid(data),
            ...(LFS.test(f) && { lfs: { oid: sha256(data), size: data.length, pointerSize: 134 } }),
            lastCommit: { id: commit.sha, title: 'upload', date: '2024-01-01T00:00:00.000Z' },
          };
        }),
      );
    }

    m = /^\/(.+?)\/resolve\/([^/]+)\/(.+)$/.exec(p);
    if (m) {
      const [, id, rev, file] = m;
      if (this.aliases[id]) return redirect(res, url.pathname.replace(`/${id}/`, `/${this.aliases[id]}/`));
      const commit = this.lookup(req, res, id, rev);
      if (!commit) return;
      const data = commit.tree[file];
      res.setHeader('X-Repo-Commit', commit.sha);
      if (!data) return error(res, 404, 'EntryNotFound', `${file} does not exist on "${rev}"`);
      if (LFS.test(file)) {
        res.setHeader('X-Linked-Etag', `"${sha256(data)}"`);
        res.setHeader('X-Linked-Size', String(data.length));
        res.setHeader('ETag', `"${gitBlobOid(data)}"`);
        return redirect(res, `/cdn/${sha256(data)}`, 302);
      }
      return this.sendFile(req, res, data, gitBlobOid(data));
    }
    error(res, 404, null, 'not found');
  }

  /** The write API; false when the request is not one of its. */
  private async handleWrite(req: http.IncomingMessage, res: http.ServerResponse, p: string, body: Buffer): Promise<boolean> {
    const method = req.method ?? 'GET';
    const upload = /^\/lfs-upload\/([0-9a-f]{64})$/.exec(p);
    const create = method === 'POST' && p === '/api/repos/create';
    const exists = method === 'GET' ? /^\/api\/models\/([^/]+\/[^/]+)$/.exec(p) : null;
    const api = method === 'POST' ? /^\/api\/models\/([^/]+\/[^/]+)\/(preupload|commit|branch)\/(.+)$/.exec(p) : null;
    const batch = method === 'POST' ? /^\/([^/]+\/[^/]+)\.git\/info\/lfs\/objects\/batch$/.exec(p) : null;
    if (!upload && !create && !exists && !api && !batch) return false;
    if (exists) {
      const repo = this.repos[exists[1]];
      if (!repo || (repo.token && req.headers.authorization !== `Bearer ${repo.token}`)) error(res, 404, 'RepoNotFound', 'Repository not found');
      else json(res, 200, { id: exists[1], likes: 0 });
      return true;
    }
    if (upload) {
      // the href handed out by the batch call; the body must hash to its name
      if (sha256(body) !== upload[1]) error(res, 400, null, 'content does not match its oid');
      else {
        this.blobs.set(upload[1], new Uint8Array(body));
        res.writeHead(200);
        res.end();
      }
      return true;
    }
    const auth = req.headers.authorization ?? '';
    if (!/^Bearer hf_\S+$/.test(auth) || (this.writeToken && auth !== `Bearer ${this.writeToken}`)) {
      error(res, 401, null, 'Invalid credentials in Authorization header');
      return true;
    }
    const text = body.toString('utf8');
    if (create) {
      const { name, organization, type, visibility } = JSON.parse(text) as { name: string; organization: string; type?: string; visibility?: string };
      const id = `${organization}/${name}`;
      if (type && type !== 'model') error(res, 400, null, `only model repos here, not ${type}`);
      else if (this.repos[id]) error(res, 409, null, 'You already created this model repo');
      else {
        this.addRepo(id, { revisions: { main: { '.gitattributes': Buffer.from('*.safetensors filter=lfs diff=lfs merge=lfs -text\n') } } });
        this.created.push({ repo: id, visibility });
        json(res, 200, { url: `${this.url}/${id}`, id });
      }
      return true;
    }
    const id = (api ?? batch)![1];
    const byRev = this.commits.get(id);
    if (!byRev) {
      error(res, 404, 'RepoNotFound', 'Repository not found');
      return true;
    }
    if (batch) {
      const { objects } = JSON.parse(text) as { objects: { oid: string; size: number }[] };
      json(res, 200, {
        transfer: 'basic',
        objects: objects.map((o) => ({ oid: o.oid, size: o.size, ...(this.blobs.has(o.oid) ? {} : { actions: { upload: { href: `${this.url}/lfs-upload/${o.oid}` } } }) })),
      });
      return true;
    }
    const [, , what, rev] = api!;
    if (what === 'branch') {
      if (byRev.has(rev)) error(res, 409, null, 'Reference already exists');
      else {
        byRev.set(rev, byRev.get('main')!);
        json(res, 200, {});
      }
      return true;
    }
    const head = byRev.get(rev);
    if (!head) {
      error(res, 404, 'RevisionNotFound', `Invalid rev id: ${rev}`);
      return true;
    }
    if (what === 'preupload') {
      const { files } = JSON.parse(text) as { files: { path: string; size: number }[] };
      json(res, 200, { files: files.map((f) => ({ path: f.path, uploadMode: LFS.test(f.path) || f.size > 10_000_000 ? 'lfs' : 'regular' })) });
      return true;
    }
    // the commit: one JSON object a line, the header first
    const lines = text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { key: string; value: Record<string, unknown> });
    if (lines[0]?.key !== 'header') {
      error(res, 400, null, 'the first line must be the header');
      return true;
    }
    const tree: Tree = { ...head.tree };
    const files: Tree = {};
    for (const { key, value } of lines.slice(1)) {
      const file = String(value.path);
      let bad: string | null = null;
      if (key === 'file') {
        if (value.encoding !== 'base64') bad = `unsupported encoding ${String(value.encoding)}`;
        else files[file] = tree[file] = new Uint8Array(Buffer.from(String(value.content), 'base64'));
      } else if (key === 'lfsFile') {
        const data = this.blobs.get(String(value.oid));
        if (!data) bad = `LFS object ${String(value.oid)} of ${file} was never uploaded`;
        else files[file] = tree[file] = data;
      } else if (key === 'deletedFile') delete tree[file];
      else bad = `unknown operation ${key}`;
      if (bad) {
        error(res, 422, null, bad);
        return true;
      }
    }
    const sha = createHash('sha1').update(`${id}@${rev}#${this.pushed.length}`).digest('hex');
    const commit = { sha, tree };
    byRev.set(rev, commit);
    byRev.set(sha, commit);
    this.pushed.push({ repo: id, branch: rev, title: String(lines[0].value.summary), sha, files, tree });
    json(res, 200, { commitOid: sha, commitUrl: `${this.url}/${id}/commit/${sha}`, hookOutput: '' });
    return true;
  }

  private addRepo(id: string, repo: FakeRepo): void {
    this.repos[id] = repo;
    const byRev = new Map<string, Commit>();
    for (const [rev, tree] of Object.entries(repo.revisions)) {
      const sha = createHash('sha1').update(`${id}@${rev}`).digest('hex');
      const commit = { sha, tree };
      byRev.set(rev, commit);
      byRev.set(sha, commit);
      for (const data of Object.values(tree)) this.blobs.set(sha256(data), data);
    }
    this.commits.set(id, byRev);
  }

  private lookup(req: http.IncomingMessage, res: http.ServerResponse, id: string, rev: string): Commit | null {
    const repo = this.repos[id];
    if (!repo) {
      error(res, 404, 'RepoNotFound', 'Repository not found');
      return null;
    }
    if (repo.token && req.headers.authorization !== `Bearer ${repo.token}`) {
      error(res, 401, 'GatedRepo', 'Access to this model is restricted');
      return null;
    }
    const commit = this.commits.get(id)!.get(rev);
    if (!commit) error(res, 404, 'RevisionNotFound', `Invalid rev id: ${rev}`);
    return commit ?? null;
  }

  private sendFile(req: http.IncomingMessage, res: http.ServerResponse, data: Uint8Array | undefined, etag: string): void {
    if (!data) return error(res, 404, null, 'no such blob');
    res.setHeader('ETag', `"${etag}"`);
    res.setHeader('Accept-Ranges', 'bytes');
    res.setHeader('Content-Type', 'application/octet-stream');
    const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
    if (range) {
      const start = Number(range[1]);
      const end = Math.min(range[2] ? Number(range[2]) : data.length - 1, data.length - 1);
      res.writeHead(206, { 'Content-Range': `bytes ${start}-${end}/${data.length}`, 'Content-Length': end - start + 1 });
      return void res.end(data.subarray(start, end + 1));
    }
    res.writeHead(200, { 'Content-Length': data.length });
    if (this.cutShort.delete(etag)) {
      res.write(data.subarray(0, data.length >> 1));
      // flushed, then the connection dies mid-body
      setTimeout(() => res.socket?.destroy(), 20);
      return;
    }
    res.end(data);
  }
}

function readBody(req: http.IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function json(res: http.ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'Content-Type': 'application/json' });
  res.end(JSON.stringify(body));
}

function error(res: http.ServerResponse, status: number, code: string | null, message: string): void {
  if (code) res.setHeader('X-Error-Code', code);
  json(res, status, { error: message });
}

function redirect(res: http.ServerResponse, location: string, status = 307): void {
  res.writeHead(status, { Location: location });
  res.end();
}
