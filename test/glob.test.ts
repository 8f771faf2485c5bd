import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expandGlob, globToRegExp, isGlob } from '../src/corpus/glob.js';

let root: string;
beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-glob-'));
  for (const f of ['a/1.txt', 'a/2.txt', 'a/b.txt', 'a/.dot.txt', 'a/{x}.txt', 'a/sub/3.txt', '.hid/4.txt', 'a/.hid/5.txt']) {
    await fs.mkdir(path.dirname(path.join(root, f)), { recursive: true });
    await fs.writeFile(path.join(root, f), '');
  }
  await fs.symlink(path.join(root, 'a', 'sub'), path.join(root, 'a', 'link'));
});
afterAll(() => fs.rm(root, { recursive: true, force: true }));

const rel = async (pattern: string) => (await expandGlob(pattern, root)).map((f) => path.relative(root, f));

describe('expandGlob', () => {
  it('matches within a segment, sorted by code unit, skipping dot-entries', async () => {
    expect(await rel('a/*.txt')).toEqual(['a/1.txt', 'a/2.txt', 'a/b.txt', 'a/{x}.txt']);
    expect(await rel('a/?.txt')).toEqual(['a/1.txt', 'a/2.txt', 'a/b.txt']);
  });

  it('negates a class with [!...] and never lets it match a dot-name', async () => {
    expect(await rel('a/[!2]*')).toEqual(['a/1.txt', 'a/b.txt', 'a/{x}.txt']);
    expect(await rel('[!x]*/**/*')).toEqual(['a/1.txt', 'a/2.txt', 'a/b.txt', 'a/link/3.txt', 'a/sub/3.txt', 'a/{x}.txt']);
  });

  it('crosses folders with **, through symbolic links, matching no folder too', async () => {
    expect(await rel('a/**/3.txt')).toEqual(['a/link/3.txt', 'a/sub/3.txt']);
    expect(await rel('**/1.txt')).toEqual(['a/1.txt']);
  });

  it('reads braces literally and finds nothing under a missing folder', async () => {
    expect(await rel('a/{x}*')).toEqual(['a/{x}.txt']);
    expect(await rel('nowhere/*.txt')).toEqual([]);
  });
});

describe('globToRegExp', () => {
  it('anchors, keeps * in a segment, lets **/ match no folder, and matches dot-names', () => {
    expect(globToRegExp('data/train-*').test('data/train-0.parquet')).toBe(true);
    expect(globToRegExp('data/*').test('data/x/y.parquet')).toBe(false);
    expect(globToRegExp('data/*').test('data/.x')).toBe(true);
    expect(globToRegExp('x/**/y').test('x/y')).toBe(true);
    expect(globToRegExp('a/[!b]').test('a/c')).toBe(true);
    expect(globToRegExp('a/[!b]').test('a/b')).toBe(false);
    expect(globToRegExp('train').test('xtrainx')).toBe(false);
  });

  it('tells globs from paths', () => {
    expect(['a/*.txt', 'a/?', 'a/[ab]', 'a/b.txt', 'a/{b}'].map(isGlob)).toEqual([true, true, true, false, false]);
  });
});
