/**
 * The CUDA backend's loader side (issue 12 part 2, not written yet): where its addon would be, why
 * it is unavailable, and whether this machine has an NVIDIA GPU at all. No CUDA code lives here
 * and none has run: `--kernels cuda` fails with the reason until a GPU session builds and proves
 * the addon (docs/gpu.md).
 *
 * scripts/build-cuda.mjs records what it found at build time in build/cuda-status.json
 * ({ built, reason, nvcc }); the reason printed here comes from there, so the user learns whether
 * nvcc was missing at build time or something else stopped the build.
 *
 * Environment: SAE_CUDA_DISABLE=1 (behave as if the addon were not built).
 */
import { existsSync, readFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { packageRoot } from '../util/package-root.js';

/** Where the CUDA addon is expected (build/sae_cuda.node under the package root). */
export function cudaAddonPath(): string {
  return path.join(packageRoot(), 'build', 'sae_cuda.node');
}

/** What scripts/build-cuda.mjs found (build/cuda-status.json). */
export function cudaStatusPath(): string {
  return path.join(packageRoot(), 'build', 'cuda-status.json');
}

export interface CudaStatus {
  available: boolean;
  /** one line: why the CUDA backend cannot be used (null when available) */
  reason: string | null;
}

interface BuildStatus {
  built?: boolean;
  reason?: string;
  nvcc?: string | null;
}

function buildStatus(): BuildStatus | null {
  try {
    return JSON.parse(readFileSync(cudaStatusPath(), 'utf8')) as BuildStatus;
  } catch {
    return null;
  }
}

/**
 * Whether the CUDA backend can run here, and if not, why (one line). Never true in this version:
 * no addon is built, and a build/sae_cuda.node found anyway has no TypeScript side to drive it.
 */
export function cudaStatus(): CudaStatus {
  if (process.env.SAE_CUDA_DISABLE === '1') return { available: false, reason: 'disabled by SAE_CUDA_DISABLE=1' };
  const file = cudaAddonPath();
  const gpu = gpuPresent();
  const here = gpu.present ? 'this machine has an NVIDIA GPU' : gpu.how;
  if (!existsSync(file)) {
    const b = buildStatus();
    const why = b?.reason ? `not built: ${b.reason}` : `not built: ${file} is missing and scripts/build-cuda.mjs recorded no build (run \`node scripts/build-cuda.mjs\`)`;
    return { available: false, reason: `CUDA backend unavailable, ${why}; ${here}` };
  }
  return { available: false, reason: `CUDA backend unavailable: ${file} exists but this version of sae has no CUDA training backend to drive it yet (see docs/gpu.md); ${here}` };
}

/** Detected NVIDIA GPU (for tests that must run wherever one is present, and for messages). */
export function gpuPresent(): { present: boolean; how: string } {
  if (existsSync('/dev/nvidia0') || existsSync('/dev/nvidiactl')) return { present: true, how: 'an NVIDIA device node exists (/dev/nvidia0 or /dev/nvidiactl)' };
  const smi = spawnSync('nvidia-smi', ['-L'], { encoding: 'utf8', timeout: 10_000 });
  if (!smi.error && smi.status === 0 && /GPU \d+:/.test(smi.stdout)) return { present: true, how: `nvidia-smi lists ${smi.stdout.trim().split('\n')[0]}` };
  return { present: false, how: 'no NVIDIA GPU (no /dev/nvidia0 or /dev/nvidiactl, nvidia-smi absent or lists none)' };
}
