import { promises as fs } from 'node:fs';
import { Flags } from '@oclif/core';
import { UserError } from '../util/errors.js';
import { HookedTransformer } from './model.js';

/** Flags every command that loads a host LM shares. */
export const modelFlags = {
  revision: Flags.string({ description: 'Hub revision: branch, tag (e.g. step143000) or commit (default main)' }),
};

/** A model folder (or, with network, a Hub id) loaded into a HookedTransformer. */
export async function loadModel(spec: string, opts: { revision?: string } = {}): Promise<{ model: HookedTransformer; dir: string }> {
  const st = await fs.stat(spec).catch(() => null);
  if (!st) throw new UserError(`model ${spec}: no such folder${opts.revision ? '' : ''}`);
  if (!st.isDirectory()) throw new UserError(`model ${spec}: not a folder (give the folder that holds config.json)`);
  return { model: await HookedTransformer.load(spec), dir: spec };
}
