/**
 * One Parquet file as a corpus unit, local or remote alike: hyparquet reads through an
 * AsyncBuffer, which is a file on disk or HTTP range requests. Only the text column is read, one
 * row group at a time, and a resumed read starts at the row group holding the next row, so
 * neither earlier row groups nor other columns are ever fetched.
 */
import { parquetMetadataAsync, parquetReadObjects, parquetSchema, type AsyncBuffer, type FileMetaData } from 'hyparquet';
import { UserError } from '../util/errors.js';
import { decodeUtf8 } from './text.js';
import type { RawRecord, Unit } from './source.js';

/** A byte array kept as bytes, so that we decide what invalid UTF-8 means, not the decoder. */
const rawStrings = { stringFromBytes: (bytes: Uint8Array | undefined) => bytes as unknown as string };

export class ParquetUnit implements Unit {
  private file: Promise<AsyncBuffer> | null = null;
  private metadata: Promise<FileMetaData> | null = null;

  constructor(
    /** the file as users know it, for messages */
    readonly name: string,
    private readonly open: () => Promise<AsyncBuffer>,
    readonly column: string,
    /** bytes fetched for the footer in one go; smaller than hyparquet's 512 KiB over a network */
    private readonly footerFetch?: number,
  ) {}

  /** Footer and schema, read once; a file that is not Parquet or lacks the column is a user error. */
  async meta(): Promise<{ file: AsyncBuffer; metadata: FileMetaData }> {
    this.file ??= this.open();
    const file = await this.file;
    this.metadata ??= parquetMetadataAsync(file, this.footerFetch ? { initialFetchSize: this.footerFetch } : {}).catch((err: unknown) => {
      if (err instanceof UserError) throw err;
      throw new UserError(`${this.name}: not a readable Parquet file (${oneLine(err)})`);
    });
    const metadata = await this.metadata;
    const top = parquetSchema(metadata).children.map((c) => c.element.name);
    if (!top.includes(this.column)) {
      throw new UserError(`${this.name}: no column "${this.column}" (columns: ${top.join(', ')}); name the column that holds the text with --text-field`);
    }
    return { file, metadata };
  }

  async *read(after?: { row: number }): AsyncGenerator<RawRecord> {
    const { file, metadata } = await this.meta();
    const first = after ? after.row + 1 : 0;
    const groups: { start: number; end: number }[] = [];
    let start = 0;
    for (const rg of metadata.row_groups) {
      const end = start + Number(rg.num_rows);
      if (end > first && end > start) groups.push({ start: Math.max(start, first), end });
      start = end;
    }
    const readGroup = (g: { start: number; end: number }): Promise<Record<string, unknown>[]> =>
      parquetReadObjects({ file, metadata, columns: [this.column], rowStart: g.start, rowEnd: g.end, parsers: rawStrings }).catch((err: unknown) => {
        // corrupt pages and failed range requests alike; the cause says which
        throw new UserError(`${this.name}: cannot read rows ${g.start}-${g.end - 1} (${oneLine(err)})`);
      });
    // the next row group is fetched while this one's documents are consumed
    let next = groups.length ? readGroup(groups[0]) : null;
    for (let i = 0; i < groups.length; i++) {
      const rows = await next!;
      next = i + 1 < groups.length ? readGroup(groups[i + 1]) : null;
      // an unawaited rejection of the prefetch must not crash the process if the reader stops here
      next?.catch(() => undefined);
      for (let r = 0; r < rows.length; r++) yield record(groups[i].start + r, rows[r][this.column], this.name, this.column);
    }
  }
}

function record(row: number, value: unknown, name: string, column: string): RawRecord {
  if (value === null || value === undefined) return { row, text: null };
  if (value instanceof Uint8Array) {
    const text = decodeUtf8(value);
    return text === null ? { row, text: null, invalidUtf8: true } : { row, text };
  }
  if (typeof value === 'string') return { row, text: value };
  throw new UserError(`${name}: column "${column}" holds ${typeof value} values, not text; name the column that holds the text with --text-field`);
}

export function oneLine(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).replace(/\s+/g, ' ').trim();
}
