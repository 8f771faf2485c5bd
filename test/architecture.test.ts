import { describe, expect, it } from 'vitest';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

// ARCHITECTURE.md's floors: a folder may import from its own floor or any lower one, never upward.
const FLOORS: Record<string, number> = {
  commands: 0, cli: 0, hooks: 0, 'index.ts': 0,
  pipeline: 1,
  eval: 2, report: 2,
  sae: 3,
  stream: 4, corpus: 4, harvest: 4,
  store: 5, lm: 5,
  kernels: 6,
  util: 7,
};
const MAX_LINES = 450;

const SRC = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'src');

async function sources(dir = SRC): Promise<string[]> {
  const out: string[] = [];
  for (const e of await fs.readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...(await sources(p)));
    else if (e.name.endsWith('.ts')) out.push(p);
  }
  return out;
}

/** Relative module specifiers of static imports, re-exports and dynamic imports. */
function importsOf(text: string): string[] {
  const re = /(?:^|\n)\s*(?:import|export)\b[^;]*?\bfrom\s*['"](\.[^'"]+)['"]|\bimport\(\s*['"](\.[^'"]+)['"]\s*\)/g;
  return [...text.matchAll(re)].map((m) => m[1] ?? m[2]);
}

const folderOf = (file: string): string => path.relative(SRC, file).split(path.sep)[0];

describe('the house', () => {
  it('puts every top-level source folder on a floor', async () => {
    const folders = new Set((await sources()).map(folderOf));
    expect([...folders].filter((f) => !(f in FLOORS))).toEqual([]);
  });

  it('has no import that runs from a lower floor to a higher one', async () => {
    const upward: string[] = [];
    for (const file of await sources()) {
      const from = folderOf(file);
      for (const spec of importsOf(await fs.readFile(file, 'utf8'))) {
        const to = folderOf(path.resolve(path.dirname(file), spec));
        if (FLOORS[to] < FLOORS[from]) upward.push(`${path.relative(SRC, file)} → ${spec}`);
      }
    }
    expect(upward).toEqual([]);
  });

  it(`keeps every TypeScript source under ${MAX_LINES} lines`, async () => {
    const long: string[] = [];
    for (const file of await sources()) {
      const lines = (await fs.readFile(file, 'utf8')).split('\n').length - 1;
      if (lines > MAX_LINES) long.push(`${path.relative(SRC, file)}: ${lines}`);
    }
    expect(long).toEqual([]);
  });

  it('sees the imports it checks (the scanner finds an upward import in a sample)', () => {
    const sample = "import { x } from '../pipeline/train.js';\nexport { y } from './z.js';\nconst m = await import('../eval/splice.js');";
    expect(importsOf(sample)).toEqual(['../pipeline/train.js', './z.js', '../eval/splice.js']);
  });
});
