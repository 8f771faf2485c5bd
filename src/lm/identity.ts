import { createHash } from 'node:crypto';
import { closeSync, existsSync, openSync, readdirSync, readFileSync, readSync, realpathSync, statSync } from 'node:fs';
import path from 'node:path';

/** Bytes hashed from the start of each weights file (its header and first tensors). */
const SAMPLE = 64 * 1024;

/**
 * Whether two spellings of a host model name the same model. Records keep the name the user gave
 * (a Hub id, or a folder path relative to where they ran the command), so:
 *
 * - the same string, or two paths to one folder, are the same model;
 * - two existing folders are the same model when their contents are: config.json and, for every
 *   weights file, its name, size and first 64 KiB (a copy of a model matches, another model that
 *   happens to sit in a folder of the same name does not);
 * - otherwise (a recorded folder that no longer exists here, a Hub id) the last path component
 *   decides, as a Hub id's name and a folder named after it agree.
 */
export function sameModel(recorded: string, given: string): boolean {
  if (recorded === given) return true;
  const a = folder(recorded), b = folder(given);
  if (a && b) return a === b || contentDigest(a) === contentDigest(b);
  const lastPart = (m: string) => m.replace(/[\\/]+$/, '').split(/[\\/]/).pop();
  return lastPart(recorded) === lastPart(given);
}

function folder(spec: string): string | null {
  try {
    if (!existsSync(path.join(spec, 'config.json'))) return null;
    return realpathSync(spec);
  } catch {
    return null;
  }
}

const digests = new Map<string, string>();

function contentDigest(dir: string): string {
  let d = digests.get(dir);
  if (d) return d;
  const h = createHash('sha256');
  h.update(readFileSync(path.join(dir, 'config.json')));
  const buf = Buffer.alloc(SAMPLE);
  const weights = readdirSync(dir)
    .filter((f) => /^(model|pytorch_model)[^/]*\.(safetensors|bin)$/.test(f))
    .sort();
  for (const f of weights) {
    const p = path.join(dir, f);
    const size = statSync(p).size;
    h.update(`${f}\0${size}\0`);
    const fd = openSync(p, 'r');
    try {
      const n = readSync(fd, buf, 0, Math.min(SAMPLE, size), 0);
      h.update(buf.subarray(0, n));
    } finally {
      closeSync(fd);
    }
  }
  d = h.digest('hex');
  digests.set(dir, d);
  return d;
}
