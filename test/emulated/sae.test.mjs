// The SAE kernels of the native addon against the reference kernels (test/shared/sae-kernel-checks.mjs
// at the emulated size), for Node's test runner (see helpers.mjs). Run: node test/emulated/sae.test.mjs
import { describe, it } from 'node:test';
import { defineSaeKernelChecks } from '../shared/sae-kernel-checks.mjs';
import { kernelModules, requireNative } from './helpers.mjs';

const { info } = await requireNative();
defineSaeKernelChecks({ describe, it }, await kernelModules(), info.isas, 'emulated');
