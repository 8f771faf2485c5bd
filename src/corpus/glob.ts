/**
 * A minimal glob: `*` and `?` within one path segment, `**` across segments, `[...]` classes.
 * Node 20 has no fs.glob (it came in 22) and the project depends on no glob library, and corpora
 * need little more than `data/*.jsonl` or `shards/**\/*.parquet`. The same matcher serves the
 * `data_files` patterns of Hub dataset cards, which use this syntax too.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';

export function isGlob(pattern: string): boolean {
  return /[*?[]/.test(pattern);
}

/** Anchored RegExp for a `/`-separated pattern. */
export function globToRegExp(pattern: string): RegExp {
  let re = '';
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i];
    if (c === '*') {
      if (pattern[i + 1] === '*') {
        // `**/` may match no folder at all, so `a/**/b` matches `a/b`
        const slash = pattern[i + 2] === '/';
        re += slash ? '(?:[^/]*/)*' : '.*';
        i += slash ? 2 : 1;
      } else {
        re += '[^/]*';
      }
    } else if (c === '?') {
      re += '[^/]';
    } else if (c === '[') {
      const close = pattern.indexOf(']', i + 2);
      if (close === -1) {
        re += '\\[';
      } else {
        const body = pattern.slice(i + 1, close).replace(/^!/, '^').replace(/\\/g, '\\\\');
        re += `[${body}]`;
        i = close;
      }
    } else {
      re += c.replace(/[.+^${}()|\\\]]/g, '\\$&');
    }
  }
  return new RegExp(`^${re}$`);
}

/**
 * Files matching `pattern`, absolute and sorted by code unit so the order is the same on every
 * machine. The walk starts at the pattern's longest literal prefix and skips dot-entries.
 */
export async function expandGlob(pattern: string, cwd = process.cwd()): Promise<string[]> {
  const abs = path.resolve(cwd, pattern).split(path.sep).join('/');
  const segments = abs.split('/');
  const firstMagic = segments.findIndex(isGlob);
  const base = segments.slice(0, firstMagic).join('/') || '/';
  const rest = segments.slice(firstMagic).join('/');
  const matcher = globToRegExp(rest);
  const deep = rest.includes('**');
  const depth = segments.length - firstMagic;
  const out: string[] = [];
  const walk = async (dir: string, rel: string, level: number): Promise<void> => {
    const entries = await fs.readdir(dir, { withFileTypes: true }).catch(() => []);
    for (const e of entries) {
      if (e.name.startsWith('.')) continue;
      const childRel = rel ? `${rel}/${e.name}` : e.name;
      const full = path.join(dir, e.name);
      const isDir = e.isDirectory() || (e.isSymbolicLink() && (await fs.stat(full).catch(() => null))?.isDirectory());
      if (isDir) {
        if (deep || level + 1 < depth) await walk(full, childRel, level + 1);
      } else if (matcher.test(childRel)) {
        out.push(full);
      }
    }
  };
  await walk(base, '', 0);
  return out.sort(compareCodeUnits);
}

export function compareCodeUnits(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
