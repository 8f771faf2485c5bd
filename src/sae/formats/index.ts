/**
 * The formats an SAE folder may be in, told apart by tensor keys and config fields (issue 19):
 * ours (SPEC §10), SAELens, sparsify, dictionary_learning. `detectFormat` names the one a probed folder holds, or
 * says in one line what the folder has instead.
 */
import { UserError } from '../../util/errors.js';
import type { FolderProbe, SaeFormat, SaeFormatName } from './types.js';

import { dictionaryLearning } from './dictionary-learning.js';
import { saeLens } from './saelens.js';
import { sparsify } from './sparsify.js';

export { probeFolder } from './probe.js';
export type { ExportSource, FolderProbe, SaeFormat, SaeFormatName } from './types.js';

/** The foreign formats, by name. */
export const FORMATS: Partial<Record<Exclude<SaeFormatName, 'sae'>, SaeFormat>> = { saelens: saeLens, sparsify, dictionary_learning: dictionaryLearning };

/** Ours: SAELens' tensor names in sae.safetensors (sparsify's file name, but encoder.weight there). */
function isOurs(probe: FolderProbe): boolean {
  const t = probe.tensors['sae.safetensors'];
  return !!t && 'W_enc' in t && 'W_dec' in t;
}

/** Which format the folder is in; a one-line UserError naming what it holds when none matches. */
export function detectFormat(probe: FolderProbe): SaeFormatName {
  if (isOurs(probe)) return 'sae';
  for (const f of Object.values(FORMATS)) if (f.detect(probe)) return f.name;
  const tensors = Object.entries(probe.tensors).map(([f, t]) => `${f} [${Object.keys(t).slice(0, 6).join(', ')}]`);
  const what = [...tensors, ...Object.keys(probe.json)].join(', ') || probe.files.slice(0, 8).join(', ') || 'nothing';
  throw new UserError(`${probe.dir}: not an SAE in a format this reads (ours, SAELens, sparsify, dictionary_learning): it holds ${what}`);
}
