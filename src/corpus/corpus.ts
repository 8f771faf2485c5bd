/**
 * Corpora for harvesting: an ordered, deterministic, resumable stream of documents from local
 * files, stdin, a Hub dataset, or the embedded Brown corpus.
 *
 *   const corpus = await openCorpus({ inputs: ['data/*.jsonl'] });
 *   for await (const { text, position } of corpus.documents(resumeFrom)) ...
 *
 * `position` means "resume after this document"; it is plain JSON, to be written next to the
 * shards it produced together with describe(), and handed back to documents() by a resumed run
 * (which should check that describe() is unchanged). Documents that are empty, whitespace-only or
 * not valid UTF-8 are skipped and counted in stats(), never fatal.
 */
import { UserError } from '../util/errors.js';
import { brownFiles, BrownUnit, BROWN_PACKAGE, type BrownSplit } from './brown.js';
import { hubUnits, resolveHubDataset, type HubDatasetSpec, type HubOptions } from './hub-dataset.js';
import { expandInputs, fileUnit, formatOf, StdinUnit, type TxtMode } from './local.js';
import { emptyStats, readUnits, type CorpusDocument, type CorpusPosition, type CorpusStats, type Unit } from './source.js';

export type { CorpusDocument, CorpusPosition, CorpusStats } from './source.js';
export type { BrownSplit } from './brown.js';
export type { HubDatasetSpec } from './hub-dataset.js';
export type { TxtMode } from './local.js';

/**
 * At most one of `inputs`, `hub`, `brown`; none means the embedded default, Brown `train`.
 */
export interface CorpusSpec {
  /** files, folders (every .txt/.jsonl/.parquet below), globs, `-` for stdin */
  inputs?: string[];
  hub?: HubDatasetSpec;
  brown?: BrownSplit;
  /** JSON field / Parquet column holding the text; default `text` */
  textField?: string;
  /** `.txt` files: one document per file (default) or per blank-line-separated block */
  txtMode?: TxtMode;
}

export interface OpenCorpusOptions extends HubOptions {
  /** where `-` reads from; default process.stdin */
  stdin?: AsyncIterable<Uint8Array | string>;
  /** relative inputs resolve against this; default process.cwd() */
  cwd?: string;
  /** the package holding the default corpus; tests point it at one that is not there */
  defaultPackage?: string;
}

export interface Corpus {
  /** stable, recorded in shard metadata: `brown`, `file:/abs/a.jsonl#text`, `hf:id@commit/config/split#text` */
  describe(): string;
  /** the spec with everything that could move pinned (a Hub revision becomes its commit) */
  pinned(): CorpusSpec;
  /** documents after `from`, in corpus order; stats() restart with each call */
  documents(from?: CorpusPosition): AsyncGenerator<CorpusDocument>;
  stats(): CorpusStats;
}

export const DEFAULT_TEXT_FIELD = 'text';

export async function openCorpus(spec: CorpusSpec = {}, opts: OpenCorpusOptions = {}): Promise<Corpus> {
  const given = [spec.inputs?.length ? 'inputs' : null, spec.hub ? 'hub' : null, spec.brown ? 'brown' : null].filter(Boolean);
  if (given.length > 1) throw new UserError(`give one corpus: files or globs, a Hub dataset, or the embedded Brown corpus (got ${given.join(' and ')})`);
  const field = spec.textField ?? DEFAULT_TEXT_FIELD;
  if (!field) throw new UserError('the text field name is empty');

  if (spec.hub) {
    const ds = await resolveHubDataset(spec.hub, opts);
    const units = await hubUnits(ds, field, opts);
    const pinned: CorpusSpec = { hub: { id: ds.id, name: ds.config, split: ds.split, revision: ds.commit }, textField: field };
    return new UnitCorpus(units, `hf:${ds.id}@${ds.commit}/${ds.config}/${ds.split}#${field}`, pinned, `the Hub dataset ${ds.id} (${ds.config}/${ds.split})`);
  }

  if (spec.inputs?.length) {
    const txtMode = spec.txtMode ?? 'file';
    const files = await expandInputs(spec.inputs, opts.cwd);
    const units: Unit[] = files.map((f) => (f === '-' ? new StdinUnit(opts.stdin ?? process.stdin, field) : fileUnit(f, field, txtMode)));
    const formats = new Set(files.map((f) => (f === '-' ? 'stdin' : formatOf(f))));
    // the field and mode are part of the description only where they change what is read
    let desc = `file:${files.map((f) => (f === '-' ? 'stdin' : f)).join(',')}`;
    if (formats.has('jsonl') || formats.has('parquet') || formats.has('stdin')) desc += `#${field}`;
    if (txtMode === 'blocks' && formats.has('txt')) desc += '?blocks';
    return new UnitCorpus(units, desc, { inputs: files, textField: field, txtMode }, filesLabel(files));
  }

  const split = spec.brown ?? 'train';
  const files = await brownFiles(split, opts.defaultPackage ?? BROWN_PACKAGE);
  return new UnitCorpus(files.map((f) => new BrownUnit(f)), split === 'train' ? 'brown' : `brown:${split}`, { brown: split }, `the embedded Brown corpus (${split} split)`);
}

/**
 * The corpus as a message names it: describe() is a recorded key (`file:…#text`), which reads as
 * jargon to the person who typed the file names.
 */
function filesLabel(files: string[]): string {
  const names = files.map((f) => (f === '-' ? 'stdin' : f));
  if (names.length === 1) return names[0];
  return `${names.length} files: ${names.slice(0, 3).join(', ')}${names.length > 3 ? ', …' : ''}`;
}

/** The embedded Brown corpus; `heldout` is disjoint from the `train` split harvest reads by default. */
export function brownCorpus(opts: { split?: BrownSplit } = {}): Promise<Corpus> {
  return openCorpus({ brown: opts.split ?? 'train' });
}

class UnitCorpus implements Corpus {
  private current: CorpusStats = emptyStats();

  constructor(
    private readonly units: readonly Unit[],
    private readonly description: string,
    private readonly pin: CorpusSpec,
    /** for messages */
    private readonly label: string,
  ) {
    if (!units.length) throw new UserError(`corpus ${label} is empty`);
  }

  describe(): string {
    return this.description;
  }

  pinned(): CorpusSpec {
    return structuredClone(this.pin);
  }

  stats(): CorpusStats {
    return { ...this.current };
  }

  documents(from?: CorpusPosition): AsyncGenerator<CorpusDocument> {
    this.current = emptyStats();
    return readUnits(this.units, this.current, this.label, from);
  }
}
