/**
 * A Hugging Face Hub dataset as a corpus, streamed: its Parquet files are listed at one commit and
 * read with HTTP range requests (footer, then the text column one row group at a time), never
 * downloaded whole.
 *
 * Which files make up config `name`, split `split` (default `train`), at `revision` (default
 * `main`, resolved to a commit sha that describe() records so a resumed run reads the same bytes):
 *
 *  1. card: the dataset card's `configs:` (what `datasets.load_dataset` follows). The config is
 *     `name`, else the one marked `default: true`, else one called `default`, else the only one.
 *     Its `data_files` for the split (a `{split, path}` list, or a bare pattern or list meaning
 *     `train`) are glob patterns over the repo; the Parquet files they match, sorted by path.
 *     FineWeb's `sample-10BT` is `sample/10BT/*` this way.
 *  2. layout, when the card has no configs: Parquet files (under `{name}/` or `data/{name}/` when
 *     a name is given) with a folder named `{split}` or `partial-{split}`, or a file name whose
 *     `-`/`_`/`.`-separated words include `{split}` (`data/train-00000-of-00002.parquet`).
 *  3. parquet branch, when neither finds Parquet files and no revision was asked for: the Hub's
 *     own conversion on `refs/convert/parquet`, `{config}/{split}/NNNN.parquet` (or
 *     `partial-{split}` for big datasets), config `default` unless named.
 *
 * Endpoints (all under HF_ENDPOINT, default https://huggingface.co, with `Authorization: Bearer
 * $HF_TOKEN` when a token is set):
 *   GET /api/datasets/{id}/revision/{rev}?expand=sha&expand=cardData   commit and card
 *   GET /api/datasets/{id}/tree/{commit}?recursive=true                 file listing (Link paging)
 *   GET /datasets/{id}/resolve/{commit}/{path}  with Range: bytes=a-b   file bytes (may redirect)
 */
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { asyncBufferFromFile, asyncBufferFromUrl } from 'hyparquet';
import { datasetInfo, HubApiError, listFiles } from '@huggingface/hub';
import { UserError } from '../util/errors.js';
import { compareCodeUnits, globToRegExp } from './glob.js';
import { oneLine, ParquetUnit } from './parquet.js';
import type { Unit } from './source.js';
import { resolveCachedDataset } from './hub-dataset-cache.js';
import { hubOffline } from '../lm/hub.js';

export interface HubDatasetSpec {
  /** `owner/name` */
  id: string;
  /** config, e.g. `sample-10BT` */
  name?: string;
  split?: string;
  /** branch, tag or commit; default `main` */
  revision?: string;
}

export interface HubOptions {
  /** default from HF_ENDPOINT, then https://huggingface.co */
  endpoint?: string;
  /** default from HF_TOKEN, then HF_TOKEN_PATH / $HF_HOME/token */
  token?: string;
  fetch?: typeof fetch;
  /** no request at all, only the Hugging Face cache; default from HF_HUB_OFFLINE */
  offline?: boolean;
  /** the hub cache folder; default from HF_HUB_CACHE / HF_HOME as Python resolves it */
  cacheDir?: string;
}

export interface HubFile {
  path: string;
  size: number;
}

export interface ResolvedHubDataset {
  id: string;
  config: string;
  split: string;
  /** the commit the files were listed at and are read from */
  commit: string;
  rule: 'card' | 'layout' | 'parquet-branch';
  files: HubFile[];
  /** offline: the cached snapshot the files are read from */
  localDir?: string;
}

const DEFAULT_ENDPOINT = 'https://huggingface.co';
const PARQUET_BRANCH = 'refs/convert/parquet';
const DATASET_ID = /^[A-Za-z0-9][\w.-]*(\/[A-Za-z0-9][\w.-]*)?$/;
/** A Parquet footer is usually tens of KiB; hyparquet's default 512 KiB would be wasted bytes. */
const FOOTER_FETCH = 64 * 1024;

interface Client {
  endpoint: string;
  token?: string;
  fetch: typeof fetch;
  /** the Hub's X-Error-Code of the last failed request; @huggingface/hub keeps only the status */
  errorCode: string | null;
}

export async function resolveHubDataset(spec: HubDatasetSpec, opts: HubOptions = {}): Promise<ResolvedHubDataset> {
  if (!DATASET_ID.test(spec.id) || spec.id.includes('..')) throw new UserError(`"${spec.id}" is not a Hub dataset id like HuggingFaceFW/fineweb`);
  // offline, as huggingface_hub: no request at all, only what the cache holds
  if (opts.offline ?? hubOffline()) return resolveCachedDataset(spec, opts.cacheDir);
  const client = await makeClient(opts);
  const split = spec.split ?? 'train';
  const revision = spec.revision ?? 'main';
  const info = await call(client, spec.id, revision, () =>
    datasetInfo<'sha' | 'cardData'>({ name: spec.id, revision, additionalFields: ['sha', 'cardData'], hubUrl: client.endpoint, accessToken: client.token, fetch: client.fetch }),
  );
  const commit = info.sha;
  const listing = await list(client, spec.id, commit);
  const chosen = chooseFiles(spec, info.cardData, listing);
  if (chosen) return { id: spec.id, split, commit, ...chosen };
  if (spec.revision === undefined) {
    const converted = await fromParquetBranch(client, spec.id, spec.name ?? 'default', split);
    if (converted) return converted;
  }
  throw noParquet(spec, revision);
}

/** Which Parquet files of a listing make up the config and split: the card's configs, else the layout. */
export function chooseFiles(spec: HubDatasetSpec, cardData: unknown, listing: HubFile[]): Pick<ResolvedHubDataset, 'config' | 'rule' | 'files'> | null {
  const split = spec.split ?? 'train';
  const configs = cardConfigs(cardData);
  if (configs.length) {
    const config = chooseConfig(configs, spec.name, spec.id);
    const patterns = splitPatterns(config, split, spec.id);
    const regexps = patterns.map((p) => globToRegExp(p.replace(/^\.?\//, '')));
    const files = listing.filter((f) => f.path.endsWith('.parquet') && regexps.some((r) => r.test(f.path)));
    return files.length ? { config: config.config_name, rule: 'card', files } : null;
  }
  const files = listing.filter((f) => f.path.endsWith('.parquet') && inConfig(f.path, spec.name) && inSplit(f.path, split));
  return files.length ? { config: spec.name ?? 'default', rule: 'layout', files } : null;
}

export function noParquet(spec: HubDatasetSpec, revision: string): UserError {
  const where = `${spec.id}${spec.name ? ` config ${spec.name}` : ''} split ${spec.split ?? 'train'}`;
  return new UserError(`found no Parquet files for ${where} at ${revision}; only Parquet datasets can be streamed (check the config name and the split)`);
}

/** The units of a resolved dataset: one per Parquet file, read over range requests. */
export async function hubUnits(ds: ResolvedHubDataset, column: string, opts: HubOptions = {}): Promise<Unit[]> {
  const local = ds.localDir;
  if (local !== undefined) return ds.files.map((f) => new ParquetUnit(`hf:${ds.id}/${f.path}`, () => asyncBufferFromFile(path.join(local, f.path)), column));
  const client = await makeClient(opts);
  const headers: Record<string, string> = client.token ? { Authorization: `Bearer ${client.token}` } : {};
  return ds.files.map((f) => {
    const url = `${client.endpoint}/datasets/${ds.id}/resolve/${ds.commit}/${f.path.split('/').map(encodeURIComponent).join('/')}`;
    // the listing gave the size, so no HEAD request; hyparquet asks only for byte ranges
    const open = async () => asyncBufferFromUrl({ url, byteLength: f.size, requestInit: { headers }, fetch: client.fetch });
    return new ParquetUnit(`hf:${ds.id}/${f.path}`, open, column, FOOTER_FETCH);
  });
}

async function fromParquetBranch(client: Client, id: string, config: string, split: string): Promise<ResolvedHubDataset | null> {
  let info;
  try {
    info = await call(client, id, PARQUET_BRANCH, () =>
      datasetInfo<'sha'>({ name: id, revision: PARQUET_BRANCH, additionalFields: ['sha'], hubUrl: client.endpoint, accessToken: client.token, fetch: client.fetch }),
    );
  } catch (err) {
    if (err instanceof UserError && /revision .* not found/.test(err.message)) return null;
    throw err;
  }
  const listing = await list(client, id, info.sha);
  for (const dir of [`${config}/${split}/`, `${config}/partial-${split}/`]) {
    const files = listing.filter((f) => f.path.startsWith(dir) && f.path.endsWith('.parquet'));
    if (files.length) return { id, config, split, commit: info.sha, rule: 'parquet-branch', files };
  }
  return null;
}

async function list(client: Client, id: string, commit: string): Promise<HubFile[]> {
  return call(client, id, commit, async () => {
    const out: HubFile[] = [];
    for await (const e of listFiles({ repo: { type: 'dataset', name: id }, revision: commit, recursive: true, hubUrl: client.endpoint, accessToken: client.token, fetch: client.fetch })) {
      if (e.type === 'file') out.push({ path: e.path, size: e.lfs?.size ?? e.size });
    }
    return out.sort((a, b) => compareCodeUnits(a.path, b.path));
  });
}

// ---------------------------------------------------------------------------------------------
// the card's configs

interface CardConfig {
  config_name: string;
  default?: boolean;
  data_files?: unknown;
}

function cardConfigs(cardData: unknown): CardConfig[] {
  const configs = (cardData as { configs?: unknown } | undefined)?.configs;
  if (!Array.isArray(configs)) return [];
  return configs.filter((c): c is CardConfig => c !== null && typeof c === 'object' && typeof (c as CardConfig).config_name === 'string');
}

function chooseConfig(configs: CardConfig[], name: string | undefined, id: string): CardConfig {
  const names = configs.map((c) => c.config_name).join(', ');
  if (name !== undefined) {
    const c = configs.find((x) => x.config_name === name);
    if (!c) throw new UserError(`dataset ${id} has no config ${name} (configs: ${names})`);
    return c;
  }
  const c = configs.find((x) => x.default === true) ?? configs.find((x) => x.config_name === 'default') ?? (configs.length === 1 ? configs[0] : undefined);
  if (!c) throw new UserError(`dataset ${id} has several configs and no default; name one (configs: ${names})`);
  return c;
}

function splitPatterns(config: CardConfig, split: string, id: string): string[] {
  const df = config.data_files;
  const strings = (v: unknown): string[] => (typeof v === 'string' ? [v] : Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : []);
  if (typeof df === 'string' || (Array.isArray(df) && df.every((x) => typeof x === 'string'))) {
    if (split !== 'train') throw new UserError(`dataset ${id} config ${config.config_name} has only the split train`);
    return strings(df);
  }
  const entries = Array.isArray(df) ? (df as { split?: unknown; path?: unknown }[]) : [];
  const entry = entries.find((e) => e && e.split === split);
  if (!entry) {
    const splits = entries.map((e) => e && e.split).filter((s) => typeof s === 'string');
    throw new UserError(`dataset ${id} config ${config.config_name} has no split ${split} (splits: ${splits.join(', ') || 'none listed'})`);
  }
  return strings(entry.path);
}

// ---------------------------------------------------------------------------------------------
// the conventional layout

function inConfig(file: string, name: string | undefined): boolean {
  return name === undefined || file.startsWith(`${name}/`) || file.startsWith(`data/${name}/`);
}

function inSplit(file: string, split: string): boolean {
  const parts = file.split('/');
  const base = parts.pop()!.replace(/\.parquet$/, '');
  return parts.some((d) => d === split || d === `partial-${split}`) || base.split(/[-_.]/).includes(split);
}

// ---------------------------------------------------------------------------------------------
// client, token and errors

async function makeClient(opts: HubOptions): Promise<Client> {
  const endpoint = (opts.endpoint ?? process.env.HF_ENDPOINT ?? DEFAULT_ENDPOINT).replace(/\/+$/, '');
  const token = opts.token ?? (await tokenFromEnv());
  if (token !== undefined && !token.startsWith('hf_')) {
    // @huggingface/hub refuses other tokens with a TypeError; say so in the CLI's terms
    throw new UserError('HF_TOKEN must be a Hugging Face access token starting with hf_');
  }
  const base = opts.fetch ?? globalThis.fetch;
  const client: Client = { endpoint, token, errorCode: null, fetch: base };
  client.fetch = async (input, init) => {
    const res = await base(input, init);
    if (!res.ok) client.errorCode = res.headers.get('x-error-code');
    return res;
  };
  return client;
}

/** HF_TOKEN, else the file `huggingface-cli login` writes (as src/lm/hub.ts reads it). */
async function tokenFromEnv(): Promise<string | undefined> {
  const env = process.env.HF_TOKEN?.trim();
  if (env) return env;
  const home = process.env.HF_HOME ?? path.join(process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'), 'huggingface');
  const text = await fs.readFile(process.env.HF_TOKEN_PATH ?? path.join(home, 'token'), 'utf8').catch(() => '');
  return text.trim() || undefined;
}

/** Run a Hub API call, turning what can go wrong into one line that says what to do. */
async function call<T>(client: Client, id: string, revision: string, fn: () => Promise<T>): Promise<T> {
  client.errorCode = null;
  try {
    return await fn();
  } catch (err) {
    if (err instanceof UserError) throw err;
    if (err instanceof HubApiError) {
      const status = err.statusCode;
      if (status === 401 || status === 403) {
        throw new UserError(`dataset ${id} is gated or private (HTTP ${status}); accept its terms on the Hub and set HF_TOKEN to a token with access`);
      }
      if (status === 404) {
        const revisionMissing = client.errorCode === 'RevisionNotFound' || (client.errorCode === null && /invalid rev id|revision not found/i.test(err.message));
        if (revisionMissing) throw new UserError(`revision ${revision} not found in dataset ${id} on ${client.endpoint}`);
        throw new UserError(`dataset ${id} not found on ${client.endpoint} (HTTP 404)${client.token ? '' : ', or it is private: set HF_TOKEN'}`);
      }
      throw new UserError(`the Hub at ${client.endpoint} answered HTTP ${status} for dataset ${id}: ${oneLine(err.message)}`);
    }
    const cause = (err as { cause?: { code?: string; message?: string } })?.cause;
    if (err instanceof TypeError && cause) {
      throw new UserError(`cannot reach the Hugging Face Hub at ${client.endpoint} (${cause.code ?? cause.message}); check the network or HF_ENDPOINT`);
    }
    throw err;
  }
}
