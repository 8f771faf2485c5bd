#!/usr/bin/env node
// Builds the native kernels (native/*.cc, a Node-API addon) into build/sae_kernels.node with the
// system C++ compiler, offline: Node's own headers (shipped next to the node binary) are all it
// needs. Targets (see targetFlags below):
//   linux-x64, darwin-x64   baseline x86-64; AVX-512 / AVX2 / SSE2 code picked at run time
//   linux-arm64, darwin-arm64  NEON (part of every arm64 CPU's baseline)
// Linux uses g++ (or clang++), macOS Apple clang (`c++`). Windows is not built (see the README).
//
// When the build cannot run (no compiler, no headers, an unsupported platform, compile error) it
// prints one line to stderr and exits 0, so installing still works and `auto` kernels fall back to
// the reference implementation; with SAE_REQUIRE_NATIVE=1 it exits 1 instead.
//
// Environment: CXX (compiler), SAE_REQUIRE_NATIVE=1, SAE_SKIP_NATIVE=1 (do nothing),
// SAE_NATIVE_VERBOSE=1 (print the compiler command and its full output), SAE_FORCE_NATIVE=1
// (rebuild even when up to date), SAE_NATIVE_TARGET=linux-arm64 (cross-build on a Linux x86-64
// host, CXX default aarch64-linux-gnu-g++, into build/linux-arm64/sae_kernels.node: used by the
// emulated arm64 tests, scripts/test-arm64.mjs).
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const nativeDir = path.join(root, 'native');
const host = `${process.platform}-${process.arch}`;
const target = process.env.SAE_NATIVE_TARGET || host;
const cross = target !== host;
// a cross build goes next to, never over, the host's addon
const outDir = cross ? path.join(root, 'build', target) : path.join(root, 'build');
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

/** Compiler, flags and link arguments for a target, or a reason why it cannot be built here. */
function targetFlags(t) {
  const [platform, arch] = t.split('-');
  // The same flags everywhere: the kernels' results depend on them (FMA contraction, no errno).
  const common = ['-O3', '-std=gnu++17', '-fPIC', '-pthread', '-fvisibility=hidden', '-fno-math-errno', '-ffp-contract=fast', '-Wall'];
  if (platform === 'linux' && (arch === 'x64' || arch === 'arm64')) {
    if (cross && !(host === 'linux-x64' && arch === 'arm64')) return { reason: `cross-building ${t} on ${host} is not supported` };
    const cxx = process.env.CXX || (cross ? 'aarch64-linux-gnu-g++' : firstCompiler(['g++', 'clang++', 'c++']));
    // armv8-a: the arm64 baseline (NEON, FMA), so one binary runs on every arm64 Linux machine
    const cflags = arch === 'arm64' ? [...common, '-march=armv8-a'] : common;
    // libstdc++ statically when the toolchain allows it (no dependency on the system's version)
    return { cxx, cflags, link: ['-shared', '-pthread'], staticLink: ['-static-libstdc++', '-static-libgcc'] };
  }
  if (platform === 'darwin' && (arch === 'x64' || arch === 'arm64')) {
    if (cross) return { reason: `cross-building ${t} on ${host} is not supported` };
    // -arch explicitly: a Node running under Rosetta would otherwise get a compiler of the other
    // architecture. Apple clang's default CPU for arm64 macOS is the M1, which every Apple-silicon
    // Mac has; for x86-64 it is a baseline every Intel Mac running a supported macOS has.
    const a = arch === 'arm64' ? 'arm64' : 'x86_64';
    const cxx = process.env.CXX || firstCompiler(['c++', 'clang++']);
    // an addon is a bundle whose Node-API symbols resolve against the node binary when loaded
    return { cxx, cflags: [...common, '-arch', a], link: ['-bundle', '-undefined', 'dynamic_lookup', '-arch', a], staticLink: null };
  }
  if (platform === 'win32') {
    return { reason: 'Windows: not built (the kernels use POSIX memory mapping and GCC/clang builtins, and Windows installs of Node ship no headers); use WSL2 for native speed' };
  }
  return { reason: `no native build for ${t} (Linux and macOS on x86-64 or arm64 only)` };
}

function firstCompiler(names) {
  for (const n of names) {
    const p = spawnSync(n, ['--version'], { encoding: 'utf8' });
    if (!p.error && p.status === 0) return n;
  }
  return names[0];
}

if (process.env.SAE_SKIP_NATIVE === '1' && !required) skip('SAE_SKIP_NATIVE=1');
const tf = targetFlags(target);
if (tf.reason) skip(tf.reason);

// Node-API is ABI-stable, so the host node's headers also serve a cross build.
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

const cxx = tf.cxx;
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
// then one link. Objects live in <out dir>/obj and are rebuilt whenever the addon is.
const objDir = path.join(outDir, 'obj');
fs.mkdirSync(objDir, { recursive: true });
const tmp = path.join(outDir, `.sae_kernels.node.${process.pid}.tmp`);
const cflags = [...tf.cflags, `-I${include}`, `-I${nativeDir}`];

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

const link = [...tf.link, ...objects, '-o', tmp];
let r = tf.staticLink ? await run([...link, ...tf.staticLink]) : { status: 1 };
if (r.status !== 0) r = await run(link);
if (verbose && r.text) console.error(r.text);
if (r.error || r.status !== 0) failed(r);
fs.renameSync(tmp, out);
if (verbose) console.error(`sae: built ${path.relative(root, out)}`);
