import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { UserError } from '../util/errors.js';
import { MANIFEST, type ShardManifest, type ShardMeta } from './shards.js';
import { openShards } from './reader.js';

/**
 * Which command wrote a folder of activation shards. `--force` replaces only what the same command
 * wrote (issue 16): another command's folder needs that command's own `--force`, or a new folder,
 * so that no journal (harvest.json, a shuffle's scratch, synth.json) outlives the data it describes.
 * The names are spelled out here rather than imported, so that this low module imports no stage.
 */
export type ShardWriterCommand = 'harvest' | 'shuffle' | 'synth' | 'other';

const HARVEST_JOURNAL = 'harvest.json';
const SHUFFLE_WORK = 'shuffle-work';
const SYNTH_FILES = ['synth.json', 'dictionary.safetensors'];
const SHARD = /^shard-\d+\.parquet$/;

export interface FolderWriter {
  writer: ShardWriterCommand;
  /** the entry that says so, for messages */
  evidence: string;
}

/** The writer of the shards in `dir`, from its journals, else its shards' metadata; null when it holds none. */
export async function folderWriter(dir: string): Promise<FolderWriter | null> {
  return (await folderWriters(dir))[0] ?? null;
}

/** Every sign of a writer in `dir`: journals and scratch first, then what the shards' metadata says. */
export async function folderWriters(dir: string): Promise<FolderWriter[]> {
  const entries = await fs.readdir(dir).catch(() => [] as string[]);
  const found: FolderWriter[] = [];
  if (entries.includes(HARVEST_JOURNAL)) found.push({ writer: 'harvest', evidence: HARVEST_JOURNAL });
  if (entries.includes(SHUFFLE_WORK)) found.push({ writer: 'shuffle', evidence: `${SHUFFLE_WORK}/` });
  for (const f of SYNTH_FILES) if (entries.includes(f)) found.push({ writer: 'synth', evidence: f });
  let meta: ShardMeta | null = null;
  let evidence = MANIFEST;
  if (entries.includes(MANIFEST)) {
    meta = await fs
      .readFile(path.join(dir, MANIFEST), 'utf8')
      .then((t) => (JSON.parse(t) as ShardManifest).meta ?? null)
      .catch(() => null);
  }
  if (!meta) {
    const first = entries.filter((n) => SHARD.test(n)).sort()[0];
    if (!first) return entries.includes(MANIFEST) ? [...found, { writer: 'other', evidence: MANIFEST }] : found;
    evidence = first;
    meta = (await openShards(path.join(dir, first)).catch(() => null))?.meta ?? null;
    if (!meta) return [...found, { writer: 'other', evidence }];
  }
  const writer: ShardWriterCommand = typeof meta.extras?.['shuffle.seed'] === 'string' ? 'shuffle' : meta.model === 'synthetic' ? 'synth' : 'harvest';
  return [...found, { writer, evidence }];
}

const WHAT: Record<ShardWriterCommand, string> = {
  harvest: 'a harvest',
  shuffle: "a shuffle's output",
  synth: 'synthetic activations from sae synth',
  other: 'activation shards of unknown origin',
};

/**
 * Refuse `dir` when another command's shards are there, whatever `--force` says: one line naming
 * what is there and who may replace it.
 */
export async function refuseOtherWriter(dir: string, self: ShardWriterCommand, label = '--out'): Promise<void> {
  const w = (await folderWriters(dir)).find((x) => x.writer !== self);
  if (!w) return;
  const who = w.writer === 'other' ? 'which sae does not replace' : `which only sae ${w.writer} --force may replace`;
  throw new UserError(`${label} ${dir} holds ${WHAT[w.writer]} (${w.evidence}), ${who}; choose another ${label}`);
}
