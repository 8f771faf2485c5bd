import { Flags } from '@oclif/core';
import type { LmKernels } from '../kernels/lm-types.js';
import { HookedTransformer } from './model.js';
import { resolveModel, type ResolvedModel } from './hub.js';

/** Flags every command that loads a host LM shares. */
export const modelFlags = {
  revision: Flags.string({ description: 'Hub revision: branch, tag (e.g. step143000) or commit sha (default main)' }),
};

/**
 * A model folder, or a Hub id resolved through the Hugging Face cache (downloaded when online and
 * not cached), loaded into a HookedTransformer.
 */
export async function loadModel(
  spec: string,
  opts: { revision?: string; kernels?: LmKernels; onProgress?: (msg: string) => void } = {},
): Promise<{ model: HookedTransformer; dir: string; resolved: ResolvedModel }> {
  const resolved = await resolveModel(spec, { revision: opts.revision, onProgress: opts.onProgress });
  return { model: await HookedTransformer.load(resolved.dir, opts.kernels), dir: resolved.dir, resolved };
}
