/**
 * SAEs published on the Hugging Face Hub, by `hf:OWNER/REPO[/SUBFOLDER][@REVISION]` (issue 19
 * part 5): one SAE folder of a model repo, fetched into the same cache as models (./hub.ts) and
 * returned as the snapshot's subfolder, which `openSae` then reads like any local folder.
 *
 * Published SAEs keep one SAE per folder: SAELens' releases `blocks.8.hook_resid_pre/` (cfg.json,
 * sae_weights.safetensors, sparsity.safetensors), sparsify's `layers.N/` (cfg.json,
 * sae.safetensors) under a run's config.json, dictionary_learning's `…/trainer_N/` (config.json,
 * ae.pt). Only those files of the folder are fetched, plus the config.json of every folder above
 * it (sparsify and dictionary_learning read the run's config one level up), never a whole
 * release. As for models, a complete snapshot folder is used without any request, HF_HUB_OFFLINE
 * reads the cache only, and every failure is one line.
 */
import * as path from 'node:path';
import { UserError } from '../util/errors.js';
import { cachedOrAbsent, checkRevision, HubClient, hubCache, isFile, isRepoId, recordSnapshot, snapshotCommit, type HubOptions } from './hub.js';

export const HUB_PREFIX = 'hf:';

/** The files an SAE folder may hold, small ones first (a snapshot holding weights was not cut short before its config). */
const CONFIGS = ['cfg.json', 'config.json'];
const WEIGHTS = ['sae_weights.safetensors', 'sae.safetensors', 'ae.pt'];
const SAE_FILES = [...CONFIGS, 'sparsity.safetensors', ...WEIGHTS];

export interface HubFolderSpec {
  repo: string;
  /** '' for the repo's top folder */
  subfolder: string;
  revision: string;
}

export interface ResolvedHubFolder extends HubFolderSpec {
  /** the snapshot's subfolder in the cache */
  dir: string;
  source: 'cache' | 'hub';
  commit: string;
}

/** Whether a --checkpoint names a published SAE rather than a folder. */
export function isHubSpec(spec: string): boolean {
  return spec.startsWith(HUB_PREFIX);
}

/** `hf:OWNER/REPO[/SUBFOLDER][@REVISION]`; one line for anything else. */
export function parseHubSpec(spec: string): HubFolderSpec {
  const body = spec.slice(HUB_PREFIX.length);
  const at = body.indexOf('@');
  const where = at < 0 ? body : body.slice(0, at);
  const revision = at < 0 ? 'main' : body.slice(at + 1);
  const parts = where.split('/');
  const repo = parts.slice(0, 2).join('/');
  const subfolder = parts.slice(2).join('/').replace(/\/+$/, '');
  const bad = (why: string): never => {
    throw new UserError(`"${spec}" is not a published SAE of the form hf:OWNER/REPO[/SUBFOLDER][@REVISION]: ${why}`);
  };
  if (parts.length < 2 || !isRepoId(repo)) bad(`"${repo}" is not a Hub repo id OWNER/REPO`);
  if (subfolder && subfolder.split('/').some((p) => p === '' || p === '.' || p === '..')) bad(`the subfolder "${subfolder}" is not a path inside the repo`);
  if (subfolder.includes('\\')) bad('use / between folders');
  if (!revision) bad('nothing after @');
  checkRevision(revision);
  return { repo, subfolder, revision };
}

const inSub = (sub: string, f: string): string => (sub ? `${sub}/${f}` : f);

/** config.json of every folder above `sub`, nearest first. */
function parentConfigs(sub: string): string[] {
  const parts = sub ? sub.split('/') : [];
  const out: string[] = [];
  for (let n = parts.length - 1; n >= 0; n--) out.push(inSub(parts.slice(0, n).join('/'), 'config.json'));
  return out;
}

/** Display name: owner/repo/sub@rev. */
const label = (s: HubFolderSpec): string => `${s.repo}${s.subfolder ? `/${s.subfolder}` : ''}@${s.revision}`;

/** The cache or Hub folder a `hf:` spec names (see the top of this file). */
export async function resolveHubFolder(spec: string, opts: HubOptions = {}): Promise<ResolvedHubFolder> {
  const s = parseHubSpec(spec);
  const { repo, subfolder: sub, revision } = s;
  const { cacheDir, storage, offline } = hubCache(repo, opts);
  const cached = await cachedFolder(storage, s, !offline);
  if (cached) return { ...s, dir: cached.dir, source: 'cache', commit: cached.commit };
  if (offline) {
    throw new UserError(`SAE ${label(s)} is not in the Hugging Face cache (searched ${path.join(storage, 'snapshots')}) and HF_HUB_OFFLINE is set; download it once with network access`);
  }

  const hub = await HubClient.open(repo, revision, opts, 'SAE repo');
  const { commit, files } = await hub.listing();
  const here = SAE_FILES.filter((f) => files.has(inSub(sub, f)));
  if (!here.some((f) => WEIGHTS.includes(f)) || !here.some((f) => CONFIGS.includes(f))) throw noSae(s, files);
  const parents = parentConfigs(sub).filter((f) => files.has(f));
  await hub.fetchFiles([...parents, ...here.map((f) => inSub(sub, f))], commit, cacheDir, opts.onProgress);
  const absent = [...SAE_FILES.filter((f) => !here.includes(f)).map((f) => inSub(sub, f)), ...parentConfigs(sub).filter((f) => !files.has(f))];
  await recordSnapshot(storage, commit, revision, absent);
  return { ...s, dir: path.join(storage, 'snapshots', commit, sub), source: 'hub', commit };
}

/**
 * The snapshot folder the spec names, if it holds an SAE: a config and weights. `strict` also
 * wants every SAE file and every parent config.json either present or recorded in .no_exist, so
 * that a folder another tool filled only in part gets completed; offline, what is there is all
 * there can be.
 */
async function cachedFolder(storage: string, s: HubFolderSpec, strict: boolean): Promise<{ dir: string; commit: string } | null> {
  const commit = await snapshotCommit(storage, s.revision);
  if (!commit) return null;
  const dir = path.join(storage, 'snapshots', commit, s.subfolder);
  const has = async (names: string[]) => {
    for (const f of names) if (await isFile(path.join(dir, f))) return true;
    return false;
  };
  if (!(await has(CONFIGS)) || !(await has(WEIGHTS))) return null;
  if (strict) {
    for (const f of [...SAE_FILES.map((f) => inSub(s.subfolder, f)), ...parentConfigs(s.subfolder)]) {
      if (!(await cachedOrAbsent(storage, commit, f))) return null;
    }
  }
  return { dir, commit };
}

/** A folder with no SAE in it: one line naming the folders of the repo that have one. */
function noSae(s: HubFolderSpec, files: ReadonlySet<string>): UserError {
  const folders = new Map<string, Set<string>>();
  for (const f of files) {
    const i = f.lastIndexOf('/');
    const [dir, name] = i < 0 ? ['', f] : [f.slice(0, i), f.slice(i + 1)];
    if (SAE_FILES.includes(name)) folders.set(dir, (folders.get(dir) ?? new Set()).add(name));
  }
  const saes = [...folders].filter(([, n]) => WEIGHTS.some((w) => n.has(w)) && CONFIGS.some((c) => n.has(c))).map(([d]) => d || '(top folder)').sort();
  const where = s.subfolder ? `folder ${s.subfolder}` : 'top folder';
  const exists = !s.subfolder || [...files].some((f) => f.startsWith(`${s.subfolder}/`));
  const what = exists ? `its ${where} holds no SAE (a cfg.json or config.json with ${WEIGHTS.slice(0, -1).join(', ')} or ${WEIGHTS.at(-1)})` : `it has no ${where}`;
  const hint = saes.length ? `; SAE folders there: ${saes.slice(0, 8).join(', ')}${saes.length > 8 ? `, … (${saes.length} in all)` : ''}` : '; it holds no SAE folder at all';
  return new UserError(`${s.repo} at revision ${s.revision}: ${what}${hint}`);
}
