import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sameModel } from '../src/lm/identity.js';

const HF = path.resolve(__dirname, '..', 'fixtures', 'hf-tiny');
let root: string;

beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-identity-'));
});
afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

describe('sameModel', () => {
  it('takes a copy of a model folder, under another name, for the same model', async () => {
    const copy = path.join(root, 'gpt2copy');
    await fs.cp(path.join(HF, 'gpt2'), copy, { recursive: true });
    expect(sameModel(path.join(HF, 'gpt2'), copy)).toBe(true);
    expect(sameModel(path.relative(process.cwd(), path.join(HF, 'gpt2')), path.join(HF, 'gpt2'))).toBe(true);
  });

  it('tells another model apart even when its folder has the same name', async () => {
    const impostor = path.join(root, 'elsewhere', 'gpt2');
    await fs.cp(path.join(HF, 'gpt-neox'), impostor, { recursive: true });
    expect(sameModel(path.join(HF, 'gpt2'), impostor)).toBe(false);
  });

  it('falls back to the name when the recorded folder is not here (a Hub id and its folder agree)', () => {
    expect(sameModel('/somewhere/else/gpt2', 'gpt2')).toBe(true);
    expect(sameModel('/somewhere/else/gpt2', path.join(HF, 'gpt2'))).toBe(true);
    expect(sameModel('EleutherAI/pythia-70m', 'gpt2')).toBe(false);
  });
});
