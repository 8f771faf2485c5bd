/**
 * Globs for corpora (`data/*.jsonl`, `shards/**\/*.parquet`) and for the `data_files` patterns of
 * Hub dataset cards: tinyglobby walks the disk, picomatch matches listings. Both are held to one
 * syntax, `*` and `?` within a path segment, `**` across segments and `[...]` classes, with brace
 * expansion and extglobs off so that `{`, `(`, `+`, `@` and `!` in a name stay literal, and
 * `[!...]` negating a class as in POSIX (picomatch spells it `[^...]`).
 */
import * as path from 'node:path';
import picomatch from 'picomatch';
import { glob } from 'tinyglobby';

const SYNTAX = { braceExpansion: false, extglob: false } as const;

function toPicomatch(pattern: string): string {
  return pattern.replace(/\[!/g, '[^');
}

export function isGlob(pattern: string): boolean {
  return /[*?[]/.test(pattern);
}

/** Anchored RegExp for a `/`-separated pattern; dot-entries match like any other name. */
export function globToRegExp(pattern: string): RegExp {
  return picomatch.makeRe(toPicomatch(pattern), { dot: true, nobrace: !SYNTAX.braceExpansion, noextglob: !SYNTAX.extglob });
}

/**
 * Files matching `pattern`, absolute and sorted by code unit so the order is the same on every
 * machine. The walk starts at the pattern's longest literal prefix (so nothing in it is read as
 * glob syntax), skips dot-entries and follows symbolic links.
 */
export async function expandGlob(pattern: string, cwd = process.cwd()): Promise<string[]> {
  const segments = path.resolve(cwd, pattern).split(path.sep).join('/').split('/');
  const firstMagic = segments.findIndex(isGlob);
  const base = segments.slice(0, firstMagic).join('/') || '/';
  const rest = segments.slice(firstMagic).join('/');
  const files = await glob(toPicomatch(rest), {
    ...SYNTAX,
    cwd: base,
    absolute: true,
    dot: false,
    // dot: false alone lets a leading class such as `[^x]` match a dot-name
    ignore: ['**/.*', '**/.*/**'],
    onlyFiles: true,
    followSymbolicLinks: true,
    expandDirectories: false,
  });
  return files.map((f) => path.resolve(f)).sort(compareCodeUnits);
}

export function compareCodeUnits(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
