import { spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readSafetensors } from '../src/util/safetensors.js';

// `sae model run --save` as a user meets it: the compiled CLI on the tiny GPT-2 fixture.
const GPT2 = path.resolve(__dirname, '..', 'fixtures', 'hf-tiny', 'gpt2');
const bin = path.resolve(__dirname, '..', 'bin', 'run.js');
const sae = (...args: string[]) => spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8' });
let root: string;

beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-model-run-'));
});
afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

describe('sae model run --save', () => {
  it('never replaces a file it did not write unless --force; a rerun replaces its own file', async () => {
    const f = path.join(root, 'precious.safetensors');
    await fs.writeFile(f, 'precious\n');
    const args = ['model', 'run', GPT2, '--text', 'hi', '--hook', 'blocks.1.hook_resid_pre', '--save', f];
    const r = sae(...args);
    expect(r.status).not.toBe(0);
    expect(r.stderr.trim().split('\n')).toEqual([`sae: error: --save ${f} exists and is not an earlier output of this command; add --force to replace it`]);
    expect(await fs.readFile(f, 'utf8')).toBe('precious\n');
    expect(sae(...args, '--force').status).toBe(0);
    expect((await readSafetensors(f)).metadata?.writer).toBe('sae model run');
    const again = sae(...args);
    expect(again.status, again.stderr).toBe(0);
  });

  it('prints the report on stdout and where it saved on stderr', async () => {
    const f = path.join(root, 'out.safetensors');
    const r = sae('model', 'run', GPT2, '--text', 'hi there', '--hook', 'blocks.1.hook_resid_pre', '--save', f);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).not.toMatch(/saved/);
    expect(r.stdout).toMatch(/^1×\d+ tokens/);
    expect(r.stderr).toMatch(/saved 1 hook, logits and loss_per_token to .*out\.safetensors/);
  });
});
