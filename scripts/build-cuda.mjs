#!/usr/bin/env node
// The CUDA backend's build hook (issue 12 part 2), run after the native build by `npm install` and
// `npm run build`. It finds nvcc ($CUDA_HOME/bin/nvcc, else nvcc on PATH) and records what it found
// in build/cuda-status.json, which `--kernels cuda` reads to say why the backend is missing.
//
// This version builds nothing: the CUDA sources (native/cuda/) do not exist yet, and CUDA code is
// written and proven in a session with a GPU (docs/gpu.md). Whatever it finds, it prints one line
// to stderr and exits 0, so the CPU build and tests are unaffected; with SAE_REQUIRE_CUDA=1 (a GPU
// machine that must have the backend) it exits 1 instead.
//
// Usage: node scripts/build-cuda.mjs [--out-dir DIR]   (default: build/ under the package root)
// Environment: CUDA_HOME, SAE_REQUIRE_CUDA=1, SAE_SKIP_CUDA=1 (do nothing).
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const argOut = process.argv.indexOf('--out-dir');
const outDir = argOut > 0 && process.argv[argOut + 1] ? path.resolve(process.argv[argOut + 1]) : path.join(root, 'build');
const sourcesDir = path.join(root, 'native', 'cuda');
const required = process.env.SAE_REQUIRE_CUDA === '1';

/** Record the outcome for the runtime's message, print one line, exit. */
function finish(status) {
  try {
    fs.mkdirSync(outDir, { recursive: true });
    fs.writeFileSync(path.join(outDir, 'cuda-status.json'), JSON.stringify(status) + '\n');
  } catch {
    // the status file only improves a later message; the build itself must not fail over it
  }
  if (status.built) process.exit(0);
  if (required) {
    console.error(`sae: CUDA backend not built (${status.reason}); SAE_REQUIRE_CUDA=1, failing`);
    process.exit(1);
  }
  console.error(`sae: CUDA backend not built (${status.reason}); the CPU kernels are unaffected`);
  process.exit(0);
}

/** nvcc from CUDA_HOME, else from PATH; null with where it looked. */
function findNvcc() {
  const home = process.env.CUDA_HOME;
  const candidates = home ? [path.join(home, 'bin', 'nvcc')] : ['nvcc'];
  for (const c of candidates) {
    const r = spawnSync(c, ['--version'], { encoding: 'utf8' });
    if (!r.error && r.status === 0) {
      const release = /release ([0-9.]+)/.exec(r.stdout)?.[1] ?? 'of unknown release';
      return { nvcc: c, release, where: home ? `at ${c}` : 'on PATH' };
    }
  }
  return { nvcc: null, looked: home ? `CUDA_HOME=${home} has no working bin/nvcc` : 'CUDA_HOME is unset and nvcc is not on PATH' };
}

if (process.env.SAE_SKIP_CUDA === '1' && !required) finish({ built: false, nvcc: null, reason: 'SAE_SKIP_CUDA=1' });

const found = findNvcc();
if (!found.nvcc) finish({ built: false, nvcc: null, reason: `no nvcc at build time: ${found.looked}` });

const sources = fs.existsSync(sourcesDir) ? fs.readdirSync(sourcesDir).filter((f) => f.endsWith('.cu')) : [];
if (sources.length === 0) {
  finish({ built: false, nvcc: found.nvcc, reason: `nvcc ${found.release} found ${found.where}, but this version of sae has no CUDA backend to build yet (see docs/gpu.md)` });
}
// Sources exist but the compile and link steps are written with them, on a GPU machine.
finish({ built: false, nvcc: found.nvcc, reason: `native/cuda/ has ${sources.length} source(s) but this version of sae does not compile them yet (see docs/gpu.md)` });
