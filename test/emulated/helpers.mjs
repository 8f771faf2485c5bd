// Shared by the emulated kernel tests (test/emulated/*.test.mjs): plain JavaScript for Node's own
// test runner, because vitest and esbuild have no arm64 binaries in this checkout's node_modules.
// The checks themselves are test/shared/*-checks.mjs (the vitest kernel tests run them too); the
// files here load the compiled package (dist/) two directories up and run them at the 'emulated'
// size, so scripts/test-arm64.mjs can stage dist/ with the cross-built addon and run them under
// qemu; `node test/emulated/x.test.mjs` runs them on the host against build/sae_kernels.node.
import assert from 'node:assert/strict';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const imp = (p) => import(pathToFileURL(path.join(root, 'dist', p)).href);

/** The native addon must be there: these tests exist to exercise it, never to skip. */
export async function requireNative() {
  const native = await imp('kernels/native.js');
  assert.equal(native.nativeLoadError(), null, 'the native addon must load');
  const info = native.nativeInfo();
  const want = process.env.SAE_EXPECT_ISA;
  if (want) assert.equal(info.isa, want, `instruction set in use (SAE_EXPECT_ISA=${want})`);
  return { native, info };
}

/** The kernel modules the shared checks take, from dist/. */
export async function kernelModules() {
  const { native } = await requireNative();
  return {
    ...native,
    ...(await imp('util/rng.js')),
    ...(await imp('kernels/params.js')),
    ...(await imp('kernels/selection.js')),
    ...(await imp('kernels/reference.js')),
    ...(await imp('kernels/optimizer.js')),
    ...(await imp('kernels/index.js')),
    ...(await imp('kernels/lm-native.js')),
    ...(await imp('kernels/lm-reference.js')),
    ...(await imp('sae/config.js')),
    ...(await imp('sae/trainer.js')),
  };
}
