/**
 * A Hub dataset from the Hugging Face cache, with no request at all (HF_HUB_OFFLINE=1): the files
 * `snapshot_download(ID, repo_type="dataset")` in Python (or `snapshot_download`) left under
 * `$HF_HUB_CACHE/datasets--OWNER--NAME/snapshots/COMMIT/`, the revision resolved through `refs/`,
 * and the same choice of files as online (the card's `configs:` from the snapshot's README.md,
 * else the layout). The commit recorded is the same as online, so a harvest started online can
 * be continued offline and the reverse.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { getHFHubCachePath, getRepoFolderName } from '@huggingface/hub';
import { parse as parseYaml } from 'yaml';
import { UserError } from '../util/errors.js';
import { compareCodeUnits } from './glob.js';
import { chooseFiles, noParquet, type HubDatasetSpec, type HubFile, type ResolvedHubDataset } from './hub-dataset.js';

const COMMIT = /^[0-9a-f]{40}$/;

export async function resolveCachedDataset(spec: HubDatasetSpec, cacheDir = getHFHubCachePath()): Promise<ResolvedHubDataset> {
  const revision = spec.revision ?? 'main';
  const storage = path.join(cacheDir, getRepoFolderName({ type: 'dataset', name: spec.id }));
  const notCached = (what: string) =>
    new UserError(
      `offline mode (HF_HUB_OFFLINE is set): dataset ${spec.id} at revision ${revision} is not in the Hugging Face cache at ${storage} (${what}); ` +
        `download it once with network access (in Python: snapshot_download("${spec.id}", repo_type="dataset")), or unset HF_HUB_OFFLINE`,
    );
  let commit = revision;
  if (!COMMIT.test(revision)) {
    const ref = await fs.readFile(path.join(storage, 'refs', revision), 'utf8').catch(() => null);
    if (ref === null) throw notCached(`no refs/${revision}`);
    commit = ref.trim();
  }
  const snapshot = path.join(storage, 'snapshots', commit);
  const listing = await listSnapshot(snapshot).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') throw notCached(`no snapshot ${commit}`);
    throw e;
  });
  const chosen = chooseFiles(spec, await cardData(snapshot), listing);
  if (!chosen) throw noParquet(spec, `${commit} in the cache at ${snapshot}`);
  return { id: spec.id, split: spec.split ?? 'train', commit, ...chosen, localDir: snapshot };
}

/** Every file below the snapshot (cache snapshots hold symlinks into blobs/: stat follows them). */
async function listSnapshot(root: string): Promise<HubFile[]> {
  const out: HubFile[] = [];
  const walk = async (rel: string): Promise<void> => {
    for (const e of await fs.readdir(path.join(root, rel), { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      const st = await fs.stat(path.join(root, r)).catch(() => null);
      if (!st) continue; // a dangling link: a download that never finished
      if (st.isDirectory()) await walk(r);
      else out.push({ path: r, size: st.size });
    }
  };
  await walk('');
  return out.sort((a, b) => compareCodeUnits(a.path, b.path));
}

/** The dataset card's YAML front matter (what the Hub API returns as cardData), or null without one. */
export async function cardData(snapshot: string): Promise<unknown> {
  const text = await fs.readFile(path.join(snapshot, 'README.md'), 'utf8').catch(() => null);
  const m = text === null ? null : /^---\r?\n([\s\S]*?)\r?\n---\r?\n?/.exec(text);
  if (!m) return null;
  try {
    return parseYaml(m[1]);
  } catch (err) {
    throw new UserError(`${path.join(snapshot, 'README.md')}: its YAML header does not parse (${(err as Error).message.split('\n')[0]})`);
  }
}
