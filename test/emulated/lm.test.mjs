// The host LM's native ops against the float64 reference (test/shared/lm-kernel-checks.mjs at the
// emulated size), for Node's test runner (see helpers.mjs). Run: node test/emulated/lm.test.mjs
import { describe, it } from 'node:test';
import { defineLmKernelChecks } from '../shared/lm-kernel-checks.mjs';
import { kernelModules, requireNative } from './helpers.mjs';

const { info } = await requireNative();
defineLmKernelChecks({ describe, it }, await kernelModules(), info.isas, 'emulated');
