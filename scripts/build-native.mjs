#!/usr/bin/env node
// Builds the native kernels (native/*.cc, a Node-API addon) into build/sae_kernels.node with the
// system C++ compiler, offline: Node's own headers (shipped next to the node binary) are all it
// needs. The binary targets baseline x86-64 and picks AVX-512 / AVX2 code paths at run time.
//
// When the build cannot run (no compiler, no headers, not Linux x86-64, compile error) it prints
// one line to stderr and exits 0, so installing still works and `auto` kernels fall back to the
// reference implementation; with SAE_REQUIRE_NATIVE=1 it exits 1 instead.
//
// Environment: CXX (compiler, default g++), SAE_REQUIRE_NATIVE=1, SAE_SKIP_NATIVE=1 (do nothing),
// SAE_NATIVE_VERBOSE=1 (print the compiler command and its full output).
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const nativeDir = path.join(root, 'native');
const outDir = path.join(root, 'build');
const out = path.join(outDir, 'sae_kernels.node');
const required = process.env.SAE_REQUIRE_NATIVE === '1';
const verbose = process.env.SAE_NATIVE_VERBOSE === '1';

function skip(reason) {
  if (required) {
    console.error(`sae: native kernels not built (${reason}); SAE_REQUIRE_NATIVE=1, failing`);
    process.exit(1);
  }
  console.error(`sae: native kernels not built (${reason}); using the reference kernels`);
  process.exit(0);
}

if (process.env.SAE_SKIP_NATIVE === '1' && !required) skip('SAE_SKIP_NATIVE=1');
if (process.platform !== 'linux' || process.arch !== 'x64') skip(`they need Linux on x86-64, this is ${process.platform}/${process.arch}`);

const include = path.join(path.dirname(process.execPath), '..', 'include', 'node');
if (!fs.existsSync(path.join(include, 'node_api.h'))) skip(`Node's headers not found at ${include}`);

let sources;
try {
  sources = fs
    .readdirSync(nativeDir)
    .filter((f) => f.endsWith('.cc'))
    .sort()
    .map((f) => path.join(nativeDir, f));
} catch {
  sources = [];
}
if (sources.length === 0) skip(`no sources in ${nativeDir}`);
const headers = fs
  .readdirSync(nativeDir)
  .filter((f) => f.endsWith('.h'))
  .map((f) => path.join(nativeDir, f));

const cxx = process.env.CXX || 'g++';
const probe = spawnSync(cxx, ['--version'], { encoding: 'utf8' });
if (probe.error || probe.status !== 0) skip(`no C++ compiler: \`${cxx} --version\` failed`);

// Up to date? (every input older than the output, the node binary's headers included)
const inputs = [...sources, ...headers, fileURLToPath(import.meta.url), path.join(include, 'node_api.h')];
if (fs.existsSync(out) && process.env.SAE_FORCE_NATIVE !== '1') {
  const built = fs.statSync(out).mtimeMs;
  if (inputs.every((f) => fs.statSync(f).mtimeMs <= built)) {
    if (verbose) console.error(`sae: native kernels up to date (${path.relative(root, out)})`);
    process.exit(0);
  }
}

fs.mkdirSync(outDir, { recursive: true });
// One object per source, compiled in parallel (the sources are independent translation units),
// then one link. Objects live in build/obj and are rebuilt whenever the addon is.
const objDir = path.join(outDir, 'obj');
fs.mkdirSync(objDir, { recursive: true });
const tmp = path.join(outDir, `.sae_kernels.node.${process.pid}.tmp`);
const cflags = ['-O3', '-std=gnu++17', '-fPIC', '-pthread', '-fvisibility=hidden', '-fno-math-errno', '-ffp-contract=fast', '-Wall', `-I${include}`, `-I${nativeDir}`];

function run(args) {
  if (verbose) console.error(`${cxx} ${args.join(' ')}`);
  return new Promise((resolve) => {
    const child = spawn(cxx, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let text = '';
    child.stdout.on('data', (b) => (text += b));
    child.stderr.on('data', (b) => (text += b));
    child.on('error', (error) => resolve({ status: null, error, text }));
    child.on('close', (status) => resolve({ status, text }));
  });
}

function failed(r) {
  fs.rmSync(tmp, { force: true });
  const first = r.text.split('\n').find((l) => /error/i.test(l)) ?? r.text.split('\n')[0] ?? '';
  skip(`${cxx} failed${first ? `: ${first.trim().slice(0, 200)}` : ''}; SAE_NATIVE_VERBOSE=1 shows the full output`);
}

const objects = sources.map((s) => path.join(objDir, `${path.basename(s, '.cc')}.o`));
const jobs = Math.max(1, Math.min(sources.length, os.availableParallelism?.() ?? os.cpus().length));
let next = 0;
const results = [];
await Promise.all(
  Array.from({ length: jobs }, async () => {
    while (next < sources.length) {
      const i = next++;
      results[i] = await run([...cflags, '-c', sources[i], '-o', objects[i]]);
    }
  }),
);
for (const r of results) if (verbose && r.text) console.error(r.text);
const bad = results.find((r) => r.error || r.status !== 0);
if (bad) failed(bad);

// Link libstdc++ statically when the toolchain allows it (the addon then does not depend on the
// system's libstdc++ version); otherwise link it dynamically.
const link = ['-shared', '-pthread', ...objects, '-o', tmp];
let r = await run([...link, '-static-libstdc++', '-static-libgcc']);
if (r.status !== 0) r = await run(link);
if (verbose && r.text) console.error(r.text);
if (r.error || r.status !== 0) failed(r);
fs.renameSync(tmp, out);
if (verbose) console.error(`sae: built ${path.relative(root, out)}`);
