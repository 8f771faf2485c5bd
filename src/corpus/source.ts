/**
 * The shape every corpus reader shares: an ordered list of units (files, Parquet files on the
 * Hub, Brown texts), each yielding raw records by row. The generic driver here turns records into
 * documents, counts and skips the unusable ones, and resumes at a position, so the per-format
 * readers only have to know how to start reading after a given row.
 */
import { UserError } from '../util/errors.js';
import { isWellFormed } from './text.js';

/**
 * "Resume after this document". `file` indexes the corpus's units, `row` the record in it (line of
 * a JSONL file, block of a text file, row of a Parquet file; 0 for a whole-file document).
 * `offset`, when a line-based reader sets it, is the byte where the next record starts, so a
 * resumed read seeks there instead of scanning the file again.
 */
export interface CorpusPosition {
  file: number;
  row: number;
  offset?: number;
}

export interface CorpusDocument {
  text: string;
  position: CorpusPosition;
}

export interface CorpusStats {
  documents: number;
  skippedEmpty: number;
  skippedInvalidUtf8: number;
}

/** What a unit hands the driver: text, null for a missing/null value, or a mark for bad bytes. */
export interface RawRecord {
  row: number;
  offset?: number;
  text: string | null;
  invalidUtf8?: boolean;
}

export interface Unit {
  /** records after `after` (all of them when undefined), in row order */
  read(after?: { row: number; offset?: number }): AsyncIterable<RawRecord>;
}

export function emptyStats(): CorpusStats {
  return { documents: 0, skippedEmpty: 0, skippedInvalidUtf8: 0 };
}

export function checkPosition(from: unknown): CorpusPosition {
  const p = from as CorpusPosition;
  const ok =
    p !== null &&
    typeof p === 'object' &&
    Number.isSafeInteger(p.file) &&
    p.file >= 0 &&
    Number.isSafeInteger(p.row) &&
    p.row >= 0 &&
    (p.offset === undefined || (Number.isSafeInteger(p.offset) && p.offset >= 0));
  if (!ok) throw new UserError(`resume position ${JSON.stringify(from)} is not a corpus position {file, row[, offset]}`);
  return p;
}

/**
 * Documents of `units` after `from`. `stats` is filled as records are read. A full read that
 * finds no usable document is an error: harvesting nothing is never what was meant. A resumed
 * read may legitimately find nothing left.
 */
export async function* readUnits(
  units: readonly Unit[],
  stats: CorpusStats,
  /** the corpus as messages name it */
  label: string,
  from?: CorpusPosition,
): AsyncGenerator<CorpusDocument> {
  if (from) checkPosition(from);
  for (let file = from ? from.file : 0; file < units.length; file++) {
    const after = from && file === from.file ? { row: from.row, offset: from.offset } : undefined;
    for await (const rec of units[file].read(after)) {
      if (rec.invalidUtf8 || (rec.text !== null && !isWellFormed(rec.text))) {
        stats.skippedInvalidUtf8++;
        continue;
      }
      if (rec.text === null || rec.text.trim() === '') {
        stats.skippedEmpty++;
        continue;
      }
      stats.documents++;
      const position: CorpusPosition = rec.offset === undefined ? { file, row: rec.row } : { file, row: rec.row, offset: rec.offset };
      yield { text: rec.text, position };
    }
  }
  if (!from && stats.documents === 0) {
    const skipped = stats.skippedEmpty + stats.skippedInvalidUtf8;
    throw new UserError(
      `corpus ${label} has no documents` +
        (skipped ? ` (skipped ${stats.skippedEmpty} empty or whitespace-only and ${stats.skippedInvalidUtf8} not valid UTF-8)` : ''),
    );
  }
}
