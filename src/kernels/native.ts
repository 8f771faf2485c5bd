import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { KernelFactory, KernelShape, SaeKernels } from './types.js';

// Loader for the native addon (build/sae_kernels.node, built by scripts/build-native.mjs).

function packageRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (!existsSync(path.join(dir, 'package.json'))) {
    const up = path.dirname(dir);
    if (up === dir) throw new Error('package root not found');
    dir = up;
  }
  return dir;
}

type Addon = { create(shape: KernelShape): SaeKernels };
let addon: Addon | null | undefined;
let loadError: string | null = null;

function load(): Addon | null {
  if (addon !== undefined) return addon;
  const file = path.join(packageRoot(), 'build', 'sae_kernels.node');
  if (!existsSync(file)) {
    loadError = `${file} not built`;
    return (addon = null);
  }
  try {
    addon = createRequire(import.meta.url)(file) as Addon;
  } catch (err) {
    loadError = (err as Error).message.split('\n')[0];
    addon = null;
  }
  return addon;
}

export function nativeAvailable(): boolean {
  return load() !== null;
}

export function nativeLoadError(): string | null {
  load();
  return loadError;
}

export const createNativeKernels: KernelFactory = (shape) => {
  const a = load();
  if (!a) throw new Error(`native kernels unavailable: ${loadError}`);
  return a.create(shape);
};
