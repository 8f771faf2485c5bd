/**
 * Models (and, through ./hub-folder.ts, SAE folders) by Hugging Face Hub id, stored in the cache
 * layout that Python's huggingface_hub uses so that both share one cache:
 *
 *   $HF_HUB_CACHE (or $HF_HOME/hub, or ~/.cache/huggingface/hub)
 *     models--{org}--{name}/
 *       blobs/{etag}                    file contents (sha256 for LFS files, git sha1 otherwise)
 *       snapshots/{commit}/{file}       relative symlinks into blobs/
 *       refs/{revision}                 the commit a branch or tag named
 *       .no_exist/{commit}/{file}       files known to be absent at that commit
 *
 * The per-file download (blob naming, `.incomplete` then rename, the symlink) is
 * @huggingface/hub's `downloadFileToCacheDir`. This module adds what it lacks: the choice of files
 * a model needs, refs and `.no_exist`, a cache hit that makes no request at all, offline mode,
 * the token and endpoint from the environment, and one-line errors (`HubClient`, shared with the
 * SAE downloads and `sae push`).
 */
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  downloadFileToCacheDir,
  getHFHubCachePath,
  getRepoFolderName,
  HubApiError,
  modelInfo,
  REGEX_COMMIT_HASH,
} from '@huggingface/hub';
import { UserError } from '../util/errors.js';
import { writeFileAtomic } from '../util/atomic.js';

export interface HubOptions {
  /** branch, tag or commit sha; default `main` */
  revision?: string;
  /** hub cache folder; default from HF_HUB_CACHE / HF_HOME as Python resolves it */
  cacheDir?: string;
  /** no request at all; default from HF_HUB_OFFLINE */
  offline?: boolean;
  /** default from HF_TOKEN, then HF_TOKEN_PATH / $HF_HOME/token */
  token?: string;
  /** default from HF_ENDPOINT, then https://huggingface.co */
  endpoint?: string;
  fetch?: typeof fetch;
  onProgress?: (msg: string) => void;
}

export type ResolveModelOptions = HubOptions;

export interface ResolvedModel {
  /** folder holding config.json, tokenizer files and weights */
  dir: string;
  source: 'local' | 'cache' | 'hub';
  repo?: string;
  revision?: string;
  commit?: string;
}

export const DEFAULT_ENDPOINT = 'https://huggingface.co';

/** Fetched when the repo has them; a model loads without the ones it does not ship. */
const OPTIONAL_FILES = ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'generation_config.json'];
const SAFETENSORS = 'model.safetensors';
const SAFETENSORS_INDEX = 'model.safetensors.index.json';
const PYTORCH_BIN = 'pytorch_model.bin';

const REPO_ID = /^[A-Za-z0-9][\w.-]*(\/[A-Za-z0-9][\w.-]*)?$/;

export async function resolveModel(spec: string, opts: ResolveModelOptions = {}): Promise<ResolvedModel> {
  if (isLocalSpec(spec) || (await isDir(spec))) return resolveLocal(spec);
  checkRepoId(spec);
  const repo = spec;
  const revision = opts.revision ?? 'main';
  checkRevision(revision);
  const { cacheDir, storage, offline } = hubCache(repo, opts);

  // A complete snapshot is used as is, without asking the Hub whether a branch has moved: runs
  // stay reproducible and work on a plane. Pass a commit sha (or clear the ref) to move on.
  const cached = await cachedSnapshot(storage, revision, !offline);
  if (cached) return { dir: cached.dir, source: 'cache', repo, revision, commit: cached.commit };
  if (offline) {
    throw new UserError(`model ${repo} at revision ${revision} is not in the Hugging Face cache (${cacheDir}) and HF_HUB_OFFLINE is set; download it once with network access`);
  }
  const hub = await HubClient.open(repo, revision, opts, 'model');
  return downloadModel(hub, storage, cacheDir, opts.onProgress);
}

/**
 * What resolveModel would refuse without any request: a missing or incomplete model folder, a name
 * that is no Hub id. Commands check it before comparing models, so the error names the real cause.
 */
export async function checkModelSpec(spec: string): Promise<void> {
  if (isLocalSpec(spec) || (await isDir(spec))) await resolveLocal(spec);
  else checkRepoId(spec);
}

function checkRepoId(spec: string): void {
  if (!isRepoId(spec)) {
    throw new UserError(`model "${spec}" is neither an existing folder nor a Hub model id like gpt2 or EleutherAI/pythia-70m-deduped`);
  }
}

/** A Hub repo id: `name` or `owner/name`, in the characters the Hub allows. */
export function isRepoId(spec: string): boolean {
  return REPO_ID.test(spec) && !spec.includes('--') && !spec.includes('..');
}

/** The cache folder, the repo's folder in it, and whether HF_HUB_OFFLINE (or opts.offline) forbids requests. */
export function hubCache(repo: string, opts: HubOptions): { cacheDir: string; storage: string; offline: boolean } {
  const cacheDir = opts.cacheDir ?? getHFHubCachePath();
  const storage = path.join(cacheDir, getRepoFolderName({ type: 'model', name: repo }));
  return { cacheDir, storage, offline: opts.offline ?? envFlag(process.env.HF_HUB_OFFLINE) };
}

// ---------------------------------------------------------------------------------------------
// local folders

function isLocalSpec(spec: string): boolean {
  return spec.startsWith('.') || path.isAbsolute(spec);
}

async function resolveLocal(spec: string): Promise<ResolvedModel> {
  const dir = path.resolve(spec);
  if (!(await isDir(dir))) throw new UserError(`model folder ${spec} does not exist`);
  if (!(await isFile(path.join(dir, 'config.json')))) throw new UserError(`model folder ${spec} has no config.json`);
  return { dir, source: 'local' };
}

// ---------------------------------------------------------------------------------------------
// the cache

/**
 * The snapshot `revision` names, if it holds a loadable model. `strict` also wants every optional
 * file either present or recorded in .no_exist, so that a snapshot another tool filled only in
 * part gets completed; offline, what is there is all there can be.
 */
async function cachedSnapshot(storage: string, revision: string, strict: boolean): Promise<{ dir: string; commit: string } | null> {
  const commit = await snapshotCommit(storage, revision);
  if (!commit) return null;
  const dir = path.join(storage, 'snapshots', commit);
  if (!(await isFile(path.join(dir, 'config.json')))) return null;
  if (!(await cachedWeights(dir))) return null;
  if (strict) {
    for (const f of OPTIONAL_FILES) if (!(await cachedOrAbsent(storage, commit, f))) return null;
  }
  return { dir, commit };
}

/** The commit a revision names in the cache: itself when it is a sha, else its ref. */
export async function snapshotCommit(storage: string, revision: string): Promise<string | null> {
  if (REGEX_COMMIT_HASH.test(revision)) return revision;
  const text = await fs.readFile(path.join(storage, 'refs', revision), 'utf8').catch(() => null);
  const commit = text?.trim();
  return commit && REGEX_COMMIT_HASH.test(commit) ? commit : null;
}

/** The file (a repo path) is in the snapshot, or recorded in .no_exist as absent at that commit. */
export async function cachedOrAbsent(storage: string, commit: string, file: string): Promise<boolean> {
  return (await isFile(path.join(storage, 'snapshots', commit, file))) || (await isFile(path.join(storage, '.no_exist', commit, file)));
}

/**
 * Complete a download as Python records one: the files the repo does not have in .no_exist (so
 * that neither asks the Hub for them again), then the ref, last, so that a ref only ever names a
 * complete snapshot.
 */
export async function recordSnapshot(storage: string, commit: string, revision: string, absent: readonly string[]): Promise<void> {
  for (const f of absent) {
    const p = path.join(storage, '.no_exist', commit, f);
    await fs.mkdir(path.dirname(p), { recursive: true });
    await fs.writeFile(p, '');
  }
  if (revision !== commit) {
    const ref = path.join(storage, 'refs', revision);
    await fs.mkdir(path.dirname(ref), { recursive: true });
    await writeFileAtomic(ref, commit);
  }
}

async function cachedWeights(dir: string): Promise<boolean> {
  if (await isFile(path.join(dir, SAFETENSORS))) return true;
  const shards = await readShardList(path.join(dir, SAFETENSORS_INDEX)).catch(() => null);
  if (shards) {
    for (const s of shards) if (!(await isFile(path.join(dir, s)))) return false;
    return true;
  }
  return isFile(path.join(dir, PYTORCH_BIN));
}

/** The distinct shard files a safetensors index maps tensors to. */
async function readShardList(indexPath: string): Promise<string[]> {
  const index = JSON.parse(await fs.readFile(indexPath, 'utf8')) as { weight_map?: Record<string, string> };
  if (!index.weight_map || typeof index.weight_map !== 'object') throw new UserError(`${indexPath}: no weight_map`);
  const shards = [...new Set(Object.values(index.weight_map))];
  for (const s of shards) {
    if (typeof s !== 'string' || s.split(/[\\/]/).includes('..') || path.isAbsolute(s)) throw new UserError(`${indexPath}: bad shard name ${JSON.stringify(s)}`);
  }
  return shards;
}

// ---------------------------------------------------------------------------------------------
// the Hub

/** The weights to fetch, given the repo's listing: safetensors when there are any. */
function chooseWeights(files: ReadonlySet<string>): { kind: 'single' | 'index'; file: string } | null {
  if (files.has(SAFETENSORS)) return { kind: 'single', file: SAFETENSORS };
  if (files.has(SAFETENSORS_INDEX)) return { kind: 'index', file: SAFETENSORS_INDEX };
  if (files.has(PYTORCH_BIN)) return { kind: 'single', file: PYTORCH_BIN };
  return null;
}

async function downloadModel(hub: HubClient, storage: string, cacheDir: string, onProgress?: (msg: string) => void): Promise<ResolvedModel> {
  const { repo, revision } = hub;
  const { commit, files } = await hub.listing();
  if (!files.has('config.json')) throw new UserError(`${repo} at revision ${revision} has no config.json; it is not a transformers model`);
  const weights = chooseWeights(files);
  if (!weights) {
    throw new UserError(`${repo} at revision ${revision} has no ${SAFETENSORS}, ${SAFETENSORS_INDEX} or ${PYTORCH_BIN}; no supported weights to load`);
  }
  // small files first and weights last: a snapshot holding weights was not cut short before
  // its tokenizer
  const wanted = ['config.json', ...OPTIONAL_FILES.filter((f) => files.has(f)), weights.file];
  await hub.fetchFiles(wanted, commit, cacheDir, onProgress);
  const dir = path.join(storage, 'snapshots', commit);
  if (weights.kind === 'index') {
    const shards = await readShardList(path.join(dir, SAFETENSORS_INDEX));
    const missing = shards.filter((s) => !files.has(s));
    if (missing.length) throw new UserError(`${repo}: ${SAFETENSORS_INDEX} names ${missing[0]}, which the repo does not have`);
    await hub.fetchFiles(shards, commit, cacheDir, onProgress, wanted.length);
  }
  await recordSnapshot(storage, commit, revision, OPTIONAL_FILES.filter((f) => !files.has(f)));
  return { dir, source: 'hub', repo, revision, commit };
}

/** What a caller may say about a failed Hub request before the generic explanations. */
export type ExplainHubError = (status: number, code: string | null) => UserError | null;

/**
 * One repo on one Hub: its listing, its files into the cache, and any request @huggingface/hub
 * makes for it (`call`), each failure turned into one line that says what to do.
 */
export class HubClient {
  /** what the last failed request said, since @huggingface/hub keeps only the status and body */
  private errorCode: string | null = null;
  private networkFailure: string | null = null;
  /** the fetch to hand @huggingface/hub, recording what failed */
  readonly fetch: typeof fetch;

  constructor(
    readonly endpoint: string,
    readonly repo: string,
    readonly revision: string,
    baseFetch: typeof fetch,
    readonly token: string | undefined,
    /** how messages name the repo: 'model', 'SAE repo', 'repo' */
    readonly what = 'model',
  ) {
    this.fetch = async (input, init) => {
      let res: Response;
      try {
        res = await baseFetch(input, init);
      } catch (err) {
        this.networkFailure = describeNetworkError(err);
        throw err;
      }
      if (!res.ok) this.errorCode = res.headers.get('x-error-code');
      return res;
    };
  }

  /** A client with the endpoint and token of opts, else of the environment (HF_ENDPOINT, HF_TOKEN). */
  static async open(repo: string, revision: string, opts: HubOptions, what = 'model'): Promise<HubClient> {
    const endpoint = (opts.endpoint ?? process.env.HF_ENDPOINT ?? DEFAULT_ENDPOINT).replace(/\/+$/, '');
    const token = opts.token ?? (await tokenFromEnv());
    checkToken(token);
    return new HubClient(endpoint, repo, revision, opts.fetch ?? globalThis.fetch, token, what);
  }

  /** The commit the revision names and every file path in the repo at that commit. */
  async listing(): Promise<{ commit: string; files: Set<string> }> {
    const { repo, revision } = this;
    const info = await this.call(() =>
      modelInfo({ name: repo, revision, additionalFields: ['sha', 'filePaths'], hubUrl: this.endpoint, fetch: this.fetch, accessToken: this.token }),
    );
    const commit = info.sha;
    if (typeof commit !== 'string' || !REGEX_COMMIT_HASH.test(commit)) {
      throw new UserError(`the Hub at ${this.endpoint} gave no commit for ${repo} at revision ${revision}`);
    }
    return { commit, files: new Set(info.filePaths ?? []) };
  }

  /** Download files (repo paths) at a commit into the cache, one after the other; `before` counts earlier ones for the progress lines. */
  async fetchFiles(files: readonly string[], commit: string, cacheDir: string, onProgress?: (msg: string) => void, before = 0): Promise<void> {
    const n = before + files.length;
    let i = before;
    for (const file of files) {
      onProgress?.(`${this.repo}@${this.revision}: ${file} (${++i}/${n})`);
      await this.call(() => quietly(() =>
        downloadFileToCacheDir({ repo: this.repo, path: file, revision: commit, cacheDir, hubUrl: this.endpoint, fetch: this.fetch, accessToken: this.token }),
      ), file);
    }
  }

  /** Run a Hub call, turning what can go wrong into one line that says what to do. */
  async call<T>(fn: () => Promise<T>, file?: string, explain?: ExplainHubError): Promise<T> {
    this.errorCode = null;
    this.networkFailure = null;
    try {
      return await fn();
    } catch (err) {
      throw this.explain(err, file, explain);
    }
  }

  private explain(err: unknown, file?: string, own?: ExplainHubError): unknown {
    if (err instanceof UserError) return err;
    const { repo, revision, endpoint, what } = this;
    if (this.networkFailure) {
      return new UserError(`cannot reach the Hugging Face Hub at ${endpoint} (${this.networkFailure}); check the network or HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use what is cached`);
    }
    if (err instanceof HubApiError) {
      const code = this.errorCode;
      const status = err.statusCode;
      const mine = own?.(status, code);
      if (mine) return mine;
      if (code === 'RevisionNotFound') return new UserError(`revision ${revision} not found in ${repo} on ${endpoint}`);
      if (code === 'GatedRepo' || status === 403) {
        return new UserError(`${repo} is gated or private and this token may not read it (HTTP ${status}); accept its terms on the Hub and set HF_TOKEN to a token with access`);
      }
      if (code === 'RepoNotFound' || status === 401 || (status === 404 && !file)) {
        const auth = this.token ? '' : ', or it is private: set HF_TOKEN';
        return new UserError(`${what} ${repo} not found on ${endpoint} (HTTP ${status})${auth}`);
      }
      if (code === 'EntryNotFound' || status === 404) return new UserError(`${file} not found in ${repo} at revision ${revision} on ${endpoint}`);
      return new UserError(`the Hub at ${endpoint} answered HTTP ${status} for ${repo}${file ? ` ${file}` : ''}: ${oneLine(err.message)}`);
    }
    if (file) {
      // a body cut short: the blob stays `.incomplete` and the next run fetches it again
      const msg = err instanceof Error ? err.message : String(err);
      return new UserError(`downloading ${file} of ${repo} from ${endpoint} failed (${oneLine(msg)}); run again to retry`);
    }
    return err;
  }
}

/**
 * `downloadFileToCacheDir` announces each file with console.debug, which Node prints on stdout,
 * where the CLI's own output goes; progress goes through onProgress instead.
 */
async function quietly<T>(fn: () => Promise<T>): Promise<T> {
  const debug = console.debug;
  console.debug = () => undefined;
  try {
    return await fn();
  } finally {
    console.debug = debug;
  }
}

function describeNetworkError(err: unknown): string {
  const cause = (err as { cause?: { code?: string; message?: string } })?.cause;
  return cause?.code ?? cause?.message ?? (err instanceof Error ? err.message : String(err));
}

// ---------------------------------------------------------------------------------------------
// environment

/** HF_HUB_OFFLINE, for models and datasets alike */
export function hubOffline(): boolean {
  return envFlag(process.env.HF_HUB_OFFLINE);
}

/** As huggingface_hub reads boolean variables. */
function envFlag(value: string | undefined): boolean {
  return ['1', 'ON', 'YES', 'TRUE'].includes((value ?? '').trim().toUpperCase());
}

function hfHome(): string {
  return process.env.HF_HOME ?? path.join(process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'), 'huggingface');
}

/** HF_TOKEN, else the file `huggingface-cli login` writes. */
export async function tokenFromEnv(): Promise<string | undefined> {
  const env = process.env.HF_TOKEN?.trim();
  if (env) return env;
  const file = process.env.HF_TOKEN_PATH ?? path.join(hfHome(), 'token');
  const text = await fs.readFile(file, 'utf8').catch(() => '');
  return text.trim() || undefined;
}

/** @huggingface/hub refuses other tokens with a TypeError; say so in the CLI's terms. */
export function checkToken(token: string | undefined): void {
  if (token !== undefined && !token.startsWith('hf_')) throw new UserError('HF_TOKEN must be a Hugging Face access token starting with hf_');
}

export function checkRevision(revision: string): void {
  // a revision becomes a path under refs/; keep it there
  if (!revision || revision.split('/').some((p) => p === '' || p === '.' || p === '..') || revision.includes('\\')) {
    throw new UserError(`revision "${revision}" is not a valid branch, tag or commit`);
  }
}

export function oneLine(s: string): string {
  return s.replace(/\s+/g, ' ').trim();
}

export async function isFile(p: string): Promise<boolean> {
  return (await fs.stat(p).catch(() => null))?.isFile() ?? false;
}

async function isDir(p: string): Promise<boolean> {
  return (await fs.stat(p).catch(() => null))?.isDirectory() ?? false;
}
