import { spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LOCK_FILE, LOCKED_EXIT, holderIsGone, isLockEntry, lockOutDir, processStart, type LockHolder } from '../src/util/lock.js';
import { UserError } from '../src/util/errors.js';

let root: string;
let n = 0;
const fresh = async () => {
  const d = path.join(root, `d${n++}`);
  await fs.mkdir(d);
  return d;
};

/** the pid of a process that has exited: a lock it left is stale */
function deadPid(): number {
  const r = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))']);
  return Number(r.stdout.toString());
}

function holder(over: Partial<LockHolder>): LockHolder {
  return { pid: process.pid, host: os.hostname(), since: '2026-01-01T00:00:00.000Z', procStart: null, command: 'sae test', token: 't', ...over };
}

beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-lock-'));
});
afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

describe('output folder lock', () => {
  it('writes a lock file naming this process and removes it on release', async () => {
    const d = await fresh();
    const lock = await lockOutDir(d, 'sae test');
    const h = JSON.parse(await fs.readFile(path.join(d, LOCK_FILE), 'utf8')) as LockHolder;
    expect(h.pid).toBe(process.pid);
    expect(h.host).toBe(os.hostname());
    expect(h.command).toBe('sae test');
    await lock.release();
    await expect(fs.stat(path.join(d, LOCK_FILE))).rejects.toThrow();
    expect((await fs.readdir(d)).length).toBe(0);
  });

  it('refuses a folder held by a live process, naming the holder, with exit code 75', async () => {
    const d = await fresh();
    // a live holder on this host: our parent process (vitest's)
    await fs.writeFile(path.join(d, LOCK_FILE), JSON.stringify(holder({ pid: process.ppid, command: 'sae harvest', procStart: processStart(process.ppid) })));
    const err = await lockOutDir(d, 'sae shuffle').catch((e) => e);
    expect(err).toBeInstanceOf(UserError);
    expect((err as UserError).exitCode).toBe(LOCKED_EXIT);
    expect((err as Error).message).toMatch(new RegExp(`in use by sae harvest \\(pid ${process.ppid} on `));
    expect((err as Error).message).not.toMatch(/\n/);
  });

  it('takes over the lock of a process that is gone', async () => {
    const d = await fresh();
    await fs.writeFile(path.join(d, LOCK_FILE), JSON.stringify(holder({ pid: deadPid(), token: 'old' })));
    const lock = await lockOutDir(d, 'sae train');
    const h = JSON.parse(await fs.readFile(path.join(d, LOCK_FILE), 'utf8')) as LockHolder;
    expect(h.pid).toBe(process.pid);
    await lock.release();
    expect((await fs.readdir(d)).filter(isLockEntry)).toEqual([]);
  });

  it('counts a live pid that now runs another process (pid reused) as gone', async () => {
    const start = processStart(process.pid);
    if (start === null) return; // no /proc: only liveness can be checked there
    expect(holderIsGone(holder({ procStart: start }))).toBe(false);
    expect(holderIsGone(holder({ procStart: String(Number(start) + 1) }))).toBe(true);
  });

  it('never judges a lock from another host stale', async () => {
    expect(holderIsGone(holder({ host: `${os.hostname()}-elsewhere`, pid: deadPid() }))).toBe(false);
  });

  it('is re-entrant within one process and removed by the last release', async () => {
    const d = await fresh();
    const a = await lockOutDir(d, 'sae demo');
    const b = await lockOutDir(d, 'sae harvest');
    await b.release();
    await expect(fs.stat(path.join(d, LOCK_FILE))).resolves.toBeTruthy();
    await a.release();
    await expect(fs.stat(path.join(d, LOCK_FILE))).rejects.toThrow();
  });

  it('is removed when the holding process exits without releasing it, even on an error', async () => {
    const d = await fresh();
    const js = path.resolve(__dirname, '..', 'dist', 'util', 'lock.js');
    const script = `import { lockOutDir } from ${JSON.stringify(js)}; await lockOutDir(${JSON.stringify(d)}, 'x'); throw new Error('boom');`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
    expect(r.stderr).toMatch(/boom/);
    expect((await fs.readdir(d)).filter(isLockEntry)).toEqual([]);
  });

  it('lets exactly one of several contenders take a stale lock', async () => {
    const d = await fresh();
    const js = path.resolve(__dirname, '..', 'dist', 'util', 'lock.js');
    await fs.writeFile(path.join(d, LOCK_FILE), JSON.stringify(holder({ pid: deadPid(), token: 'old' })));
    // four processes race for the folder; each holds it for a moment and reports whether it got it
    const script = `import { lockOutDir } from ${JSON.stringify(js)};
      try { await lockOutDir(${JSON.stringify(d)}, 'c'); await new Promise((r) => setTimeout(r, 1500)); process.stdout.write('got'); }
      catch (e) { process.stdout.write(e.exitCode === 75 ? 'busy' : 'other:' + e.message); }`;
    const { spawn } = await import('node:child_process');
    const outs = await Promise.all(
      [0, 1, 2, 3].map(
        () =>
          new Promise<string>((resolve) => {
            const c = spawn(process.execPath, ['--input-type=module', '-e', script]);
            let s = '';
            c.stdout.on('data', (b) => (s += b));
            c.on('close', () => resolve(s));
          }),
      ),
    );
    expect(outs.filter((o) => o === 'got').length).toBe(1);
    expect(outs.filter((o) => o === 'busy').length).toBe(3);
  });
});
