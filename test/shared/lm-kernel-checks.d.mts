// Types of lm-kernel-checks.mjs for the vitest files.
import type { Size, TestApi } from './sae-kernel-checks.mjs';

export function defineLmKernelChecks(t: TestApi, m: Record<string, any>, isas: readonly string[], size: Size): void;
