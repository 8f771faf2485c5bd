import { spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openShards } from '../src/store/shard-set.js';

// What sae harvest tells a user: its --help examples, and the hints of its errors (compiled CLI).
const bin = path.resolve(__dirname, '..', 'bin', 'run.js');
const FIXTURES = path.resolve(__dirname, '..', 'fixtures');
const GPT2 = path.join(FIXTURES, 'hf-tiny', 'gpt2');
let root: string;

function sae(args: string[], cwd?: string) {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', cwd, env: { ...process.env, FORCE_COLOR: '0' } });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function errorLine(r: ReturnType<typeof sae>): string {
  expect(r.code).not.toBe(0);
  const lines = r.stderr.trim().split('\n').filter((l) => l.startsWith('sae: error:'));
  expect(lines).toHaveLength(1);
  expect(r.stderr).not.toMatch(/\n\s+at /);
  return lines[0];
}

beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-harvest-msg-'));
  // the examples name fixtures/… relative to the project, as the README's commands do
  await fs.symlink(FIXTURES, path.join(root, 'fixtures'));
});

afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

describe('sae harvest --help', () => {
  it('its examples on the fixture model run as written', async () => {
    const help = sae(['harvest', '--help']).stdout;
    const examples = help
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l.startsWith('$ sae harvest') && l.includes('fixtures/hf-tiny/'));
    expect(examples.length).toBeGreaterThan(0);
    for (const [i, ex] of examples.entries()) {
      const cwd = path.join(root, `example-${i}`);
      await fs.mkdir(cwd);
      await fs.symlink(FIXTURES, path.join(cwd, 'fixtures'));
      const r = sae(ex.slice('$ sae '.length).split(/\s+/), cwd);
      expect(r.code, `${ex}\n${r.stderr}`).toBe(0);
      expect((await openShards(path.join(cwd, r.stdout.trim()))).rows).toBeGreaterThan(0);
    }
  });
});

describe('progress where stderr is not a terminal', () => {
  const progressLine = /^\d+(\.\d+)?k? tokens, \d+ contexts, \d+ shards?, \d+ tok\/s/m;
  let corpus: string;
  beforeAll(async () => {
    corpus = path.join(root, 'docs.jsonl');
    const docs = Array.from({ length: 60 }, (_, i) => JSON.stringify({ text: `Note ${i}: the river ${i % 5 ? 'rises' : 'falls'} by ${i * 3} inches after the storm of day ${i}.` }));
    await fs.writeFile(corpus, docs.join('\n') + '\n');
  });

  it('a plain progress line appears from the first batch on, with --max-tokens', () => {
    const r = sae(['harvest', corpus, '--model', GPT2, '--hook', 'blocks.1.hook_resid_pre', '--out', path.join(root, 'prog-max'), '--ctx', '16', '--max-tokens', '300']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(progressLine);
    expect(r.stderr).toMatch(/ETA \d+s$/m);
    // no bar drawing codes in a log
    expect(r.stderr).not.toMatch(/\r|\x1b\[/);
  });

  it('a plain progress line appears from the first batch on, without --max-tokens', () => {
    const r = sae(['harvest', corpus, '--model', GPT2, '--hook', 'blocks.1.hook_resid_pre', '--out', path.join(root, 'prog-all'), '--ctx', '16']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(progressLine);
    expect(r.stderr).not.toMatch(/\r|\x1b\[/);
  });

  it('--quiet prints no progress', () => {
    const r = sae(['harvest', corpus, '--model', GPT2, '--hook', 'blocks.1.hook_resid_pre', '--out', path.join(root, 'prog-quiet'), '--ctx', '16', '--quiet']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toBe('');
  });
});

describe('hook hints', () => {
  const harvest = (hook: string) => sae(['harvest', '--model', GPT2, '--hook', hook, '--out', path.join(root, 'never'), '--max-tokens', '10', '--quiet']);

  it('an unknown hook name is answered with a hook the model has', () => {
    expect(errorLine(harvest('blocks.1.resid'))).toMatch(/unknown hook "blocks\.1\.resid" \(e\.g\. blocks\.1\.hook_resid_pre;/);
  });

  it('a layer beyond the model (the default blocks.6 on a 3-block model) is answered with a hook the model has', () => {
    const r = sae(['harvest', '--model', GPT2, '--out', path.join(root, 'never'), '--max-tokens', '10', '--quiet']);
    expect(errorLine(r)).toMatch(/layer 6 is out of range \(the model has 3 blocks, 0\.\.2; e\.g\. blocks\.1\.hook_resid_pre\)/);
  });
});
