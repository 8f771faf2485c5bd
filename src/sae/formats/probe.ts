import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { UserError } from '../../util/errors.js';
import { describeFsError } from '../../util/atomic.js';
import type { FolderProbe } from './types.js';

/** Largest safetensors header read for detection (the format allows 100 MB; real SAE headers are a few KiB). */
const MAX_HEADER = 100_000_000;

/** Read a folder's file names, safetensors headers and JSON files: what the formats' detect() look at. */
export async function probeFolder(dir: string): Promise<FolderProbe> {
  let entries;
  try {
    entries = await fs.readdir(dir, { withFileTypes: true });
  } catch (e) {
    throw describeFsError(e, `reading ${dir}`);
  }
  // a Hub cache snapshot holds symlinks into blobs/: follow them
  const files: string[] = [];
  for (const e of entries) {
    if (e.isFile() || (e.isSymbolicLink() && (await fs.stat(path.join(dir, e.name)).catch(() => null))?.isFile())) files.push(e.name);
  }
  files.sort();
  const probe: FolderProbe = { dir, files, tensors: {}, json: {} };
  for (const f of files) {
    if (f.endsWith('.safetensors')) probe.tensors[f] = await safetensorsHeader(path.join(dir, f));
    else if (f.endsWith('.json')) {
      try {
        probe.json[f] = JSON.parse(await fs.readFile(path.join(dir, f), 'utf8'));
      } catch {
        // not JSON: the format that needs it says so
      }
    }
  }
  return probe;
}

async function safetensorsHeader(file: string): Promise<Record<string, { dtype: string; shape: number[] }>> {
  const fh = await fs.open(file, 'r').catch((e) => {
    throw describeFsError(e, `opening ${file}`);
  });
  try {
    const head = Buffer.alloc(8);
    const { bytesRead } = await fh.read(head, 0, 8, 0);
    if (bytesRead < 8) throw new UserError(`${file}: not a safetensors file (shorter than its 8-byte header length)`);
    const n = Number(head.readBigUInt64LE(0));
    if (n < 2 || n > MAX_HEADER) throw new UserError(`${file}: not a safetensors file (header length ${n})`);
    const buf = Buffer.alloc(n);
    const r = await fh.read(buf, 0, n, 8);
    if (r.bytesRead < n) throw new UserError(`${file}: truncated safetensors header`);
    let header: Record<string, unknown>;
    try {
      header = JSON.parse(buf.toString('utf8'));
    } catch {
      throw new UserError(`${file}: its safetensors header is not JSON`);
    }
    const out: Record<string, { dtype: string; shape: number[] }> = {};
    for (const [name, v] of Object.entries(header)) {
      if (name === '__metadata__') continue;
      const t = v as { dtype?: unknown; shape?: unknown };
      if (typeof t?.dtype !== 'string' || !Array.isArray(t.shape)) throw new UserError(`${file}: tensor ${name} has no dtype or shape in the header`);
      out[name] = { dtype: t.dtype, shape: t.shape.map(Number) };
    }
    return out;
  } finally {
    await fh.close();
  }
}
