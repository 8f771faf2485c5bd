import { spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import { buildManifest, type OclifManifest } from '../scripts/manifest-lib.mjs';

// What `sae --help` shows comes from oclif.manifest.json; these tests hold it to the compiled
// commands (npm test builds dist/ first), and every flag or command a message names to the CLI.
const root = path.resolve(__dirname, '..');
const bin = path.join(root, 'bin', 'run.js');

async function onDisk(): Promise<OclifManifest> {
  return JSON.parse(await fs.readFile(path.join(root, 'oclif.manifest.json'), 'utf8')) as OclifManifest;
}

async function sourceFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await fs.readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...(await sourceFiles(p)));
    else if (e.name.endsWith('.ts')) out.push(p);
  }
  return out;
}

describe('the oclif manifest', () => {
  it('equals the manifest built from the compiled commands', async () => {
    expect(await onDisk()).toEqual(await buildManifest(root));
  });

  it('lists exactly the flags each command class declares', async () => {
    const manifest = await onDisk();
    // dist/commands/model/info.js is the command model:info
    const files = (await fs.readdir(path.join(root, 'dist', 'commands'), { recursive: true })).filter((f) => f.endsWith('.js'));
    const ids = files.map((f) => f.slice(0, -3).split(path.sep).join(':'));
    expect(Object.keys(manifest.commands).sort()).toEqual([...ids].sort());
    for (const [i, id] of ids.entries()) {
      const cls = (await import(pathToFileURL(path.join(root, 'dist', 'commands', files[i])).href)).default as { flags: Record<string, unknown> };
      expect(Object.keys(manifest.commands[id].flags).sort(), id).toEqual(Object.keys(cls.flags).sort());
    }
  });

  it('puts every flag of every command in its --help', async () => {
    const manifest = await onDisk();
    for (const [id, cmd] of Object.entries(manifest.commands)) {
      const help = spawnSync(process.execPath, [bin, ...id.split(':'), '--help'], { encoding: 'utf8', env: { ...process.env, FORCE_COLOR: '0', COLUMNS: '400' } }).stdout;
      for (const flag of Object.keys(cmd.flags)) expect(help, `sae ${id} --help`).toContain(`--${flag}`);
    }
  });
});

describe('messages and docs name real commands and flags', () => {
  it('every `sae <command> --flag` names a command that has that flag', async () => {
    const manifest = await onDisk();
    const texts = [await fs.readFile(path.join(root, 'README.md'), 'utf8')];
    for (const f of await sourceFiles(path.join(root, 'src'))) texts.push(await fs.readFile(f, 'utf8'));
    let checked = 0;
    for (const text of texts) {
      // a pipeline `sae a … | sae b …` is several commands
      const spans = [...text.matchAll(/`(sae [^`\n]*)`/g)].flatMap((m) => m[1].split('|').map((p) => `\`${p.trim()}\``));
      for (const m of spans.flatMap((span) => [...span.matchAll(/`sae ([a-z-]+)( [a-z-]+)?([^`\n]*)`/g)])) {
        // topics: `sae model info` is the command model:info
        const sub = m[2]?.trim();
        const cmd = (sub && manifest.commands[`${m[1]}:${sub}`]) || manifest.commands[m[1]];
        expect(cmd, `command in ${m[0]}`).toBeDefined();
        const rest = sub && manifest.commands[`${m[1]}:${sub}`] ? m[3] : `${m[2] ?? ''}${m[3]}`;
        for (const f of rest.matchAll(/(?:^|\s)--([a-z][a-z0-9-]*)/g)) expect(Object.keys(cmd.flags), `${m[0]}`).toContain(f[1]);
        checked++;
      }
    }
    expect(checked).toBeGreaterThan(5);
  });

  it('every --flag in a source string or the README is a flag of some command', async () => {
    const manifest = await onDisk();
    // --help is oclif's own, on every command
    const all = new Set(['help', ...Object.values(manifest.commands).flatMap((c) => Object.keys(c.flags))]);
    const files = [path.join(root, 'README.md'), ...(await sourceFiles(path.join(root, 'src')))];
    const unknown: string[] = [];
    for (const f of files) {
      const text = await fs.readFile(f, 'utf8');
      for (const m of text.matchAll(/(?:^|[\s`'"(/])--([a-z][a-z0-9-]*)/g)) if (!all.has(m[1])) unknown.push(`${path.relative(root, f)}: --${m[1]}`);
    }
    expect(unknown).toEqual([]);
  });
});
