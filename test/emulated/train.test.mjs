// Short training runs with the native kernels against the same runs with the reference kernels
// (test/shared/sae-kernel-checks.mjs at the emulated size), for Node's test runner (see
// helpers.mjs). Run: node test/emulated/train.test.mjs
import { describe, it } from 'node:test';
import { defineTrainerChecks } from '../shared/sae-kernel-checks.mjs';
import { kernelModules } from './helpers.mjs';

defineTrainerChecks({ describe, it }, await kernelModules(), 'emulated');
