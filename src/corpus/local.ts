/**
 * Local corpora: `.txt` (a document per file, or per blank-line-separated block), `.jsonl`
 * (a text field per line), `.parquet` (a text column), and `-` for stdin.
 */
import { createReadStream, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { asyncBufferFromFile } from 'hyparquet';
import { UserError } from '../util/errors.js';
import { expandGlob, isGlob } from './glob.js';
import { ParquetUnit } from './parquet.js';
import { decodeUtf8, firstNonSpace, isBlankLine, splitLines, type Line } from './text.js';
import type { RawRecord, Unit } from './source.js';

export type TxtMode = 'file' | 'blocks';
export type Format = 'txt' | 'jsonl' | 'parquet';

const EXTENSIONS: Record<string, Format> = { '.txt': 'txt', '.text': 'txt', '.jsonl': 'jsonl', '.ndjson': 'jsonl', '.parquet': 'parquet' };

export function formatOf(file: string): Format | null {
  return EXTENSIONS[path.extname(file).toLowerCase()] ?? null;
}

/**
 * The files the inputs name, in order: each input in the order given, a glob's or a folder's
 * matches sorted. `-` stays `-`. Every glob must match and every path must exist, so a typo
 * fails now rather than after a model has loaded.
 */
export async function expandInputs(inputs: readonly string[], cwd = process.cwd()): Promise<string[]> {
  const out: string[] = [];
  for (const input of inputs) {
    if (input === '-') {
      if (out.includes('-')) throw new UserError('stdin (-) can be given only once as a corpus input');
      out.push('-');
      continue;
    }
    if (isGlob(input)) {
      const matches = (await expandGlob(input, cwd)).filter((f) => formatOf(f) !== null);
      if (!matches.length) throw new UserError(`corpus glob ${input} matches no .txt, .jsonl or .parquet file`);
      out.push(...matches);
      continue;
    }
    const abs = path.resolve(cwd, input);
    const stat = await fs.stat(abs).catch(() => null);
    if (!stat) throw new UserError(`corpus file ${input} does not exist`);
    if (stat.isDirectory()) {
      const matches = (await expandGlob(path.join(abs, '**', '*'), cwd)).filter((f) => formatOf(f) !== null);
      if (!matches.length) throw new UserError(`corpus folder ${input} holds no .txt, .jsonl or .parquet file`);
      out.push(...matches);
      continue;
    }
    if (!formatOf(abs)) throw new UserError(`corpus file ${input}: unknown format; use .txt, .jsonl or .parquet`);
    out.push(abs);
  }
  return out;
}

export function fileUnit(file: string, textField: string, txtMode: TxtMode): Unit {
  switch (formatOf(file)) {
    case 'txt':
      return txtMode === 'blocks' ? new LineUnit(file, blocks) : new WholeFileUnit(file);
    case 'jsonl':
      return new LineUnit(file, (lines, firstRow) => jsonlRecords(lines, firstRow, file, textField));
    case 'parquet':
      return new ParquetUnit(file, () => asyncBufferFromFile(file), textField);
    default:
      throw new UserError(`corpus file ${file}: unknown format; use .txt, .jsonl or .parquet`);
  }
}

class WholeFileUnit implements Unit {
  constructor(private readonly file: string) {}

  async *read(after?: { row: number }): AsyncGenerator<RawRecord> {
    if (after) return;
    const bytes = await fs.readFile(this.file);
    const text = decodeUtf8(bytes);
    yield text === null ? { row: 0, text: null, invalidUtf8: true } : { row: 0, text };
  }
}

type LineParser = (lines: AsyncIterable<Line>, firstRow: number) => AsyncIterable<RawRecord>;

/**
 * A file read line by line. A resume position with a byte offset seeks straight there; one
 * without (written by hand, say) is honoured by reading from the start and dropping rows.
 */
class LineUnit implements Unit {
  constructor(
    private readonly file: string,
    private readonly parse: LineParser,
  ) {}

  async *read(after?: { row: number; offset?: number }): AsyncGenerator<RawRecord> {
    const seek = after?.offset;
    const stream = createReadStream(this.file, seek === undefined ? {} : { start: seek });
    try {
      const records = this.parse(splitLines(stream, seek ?? 0), seek === undefined ? 0 : after!.row + 1);
      for await (const rec of records) if (!after || rec.row > after.row) yield rec;
    } finally {
      stream.destroy();
    }
  }
}

/**
 * Blank-line-separated blocks; a line holding only spaces and tabs separates too. The row is the
 * block's ordinal, the offset the byte after its last line.
 */
export async function* blocks(lines: AsyncIterable<Line>, firstRow: number): AsyncGenerator<RawRecord> {
  let row = firstRow;
  let current: Uint8Array[] = [];
  let end = 0;
  const flush = (): RawRecord => {
    const joined = Buffer.concat(current.flatMap((l, i) => (i ? [Buffer.from('\n'), l] : [l])));
    current = [];
    const text = decodeUtf8(joined);
    return text === null ? { row: row++, offset: end, text: null, invalidUtf8: true } : { row: row++, offset: end, text };
  };
  for await (const line of lines) {
    if (isBlankLine(line.bytes)) {
      if (current.length) yield flush();
      continue;
    }
    current.push(line.bytes);
    end = line.end;
  }
  if (current.length) yield flush();
}

/**
 * One JSON object per line. Blank lines are not records. A line that is not JSON, or an object
 * without the field, stops the read with the line number: that is a wrong file or a wrong
 * text field, and skipping it would hide that. A line that parses but holds bytes that are not
 * UTF-8 is a bad document, counted and skipped like any other.
 */
export async function* jsonlRecords(lines: AsyncIterable<Line>, firstRow: number, name: string, field: string): AsyncGenerator<RawRecord> {
  let row = firstRow;
  for await (const line of lines) {
    const n = row++;
    if (isBlankLine(line.bytes)) continue;
    const strictText = decodeUtf8(line.bytes);
    const source = strictText ?? Buffer.from(line.bytes).toString('utf8');
    let value: unknown;
    try {
      value = JSON.parse(source);
    } catch (err) {
      throw new UserError(`${name}: line ${n + 1} is not valid JSON (${(err as Error).message})`);
    }
    if (value === null || typeof value !== 'object' || Array.isArray(value)) {
      throw new UserError(`${name}: line ${n + 1} is not a JSON object`);
    }
    if (!(field in value)) {
      throw new UserError(`${name}: line ${n + 1} has no field "${field}" (fields: ${Object.keys(value).join(', ')}); name the field that holds the text with --text-field`);
    }
    const text = (value as Record<string, unknown>)[field];
    if (text !== null && typeof text !== 'string') {
      throw new UserError(`${name}: line ${n + 1}: field "${field}" is ${Array.isArray(text) ? 'an array' : typeof text}, not a string`);
    }
    if (strictText === null) yield { row: n, offset: line.end, text: null, invalidUtf8: true };
    else yield { row: n, offset: line.end, text };
  }
}

/**
 * stdin: JSONL when the first non-blank byte is `{`, else blank-line-separated text blocks (a
 * stream is usually many documents; a file is the way to give one long one). It can be read
 * once, so there is no resuming from it.
 */
export class StdinUnit implements Unit {
  private used = false;

  constructor(
    private readonly stream: AsyncIterable<Uint8Array | string>,
    private readonly field: string,
  ) {}

  async *read(after?: { row: number }): AsyncGenerator<RawRecord> {
    if (after) throw new UserError('cannot resume a corpus read from stdin (-); give the corpus as files to resume');
    if (this.used) throw new UserError('stdin (-) can be read only once');
    this.used = true;
    const lines = splitLines(this.stream);
    // look ahead to the first line with content, then replay what was looked at; next() by hand,
    // since leaving a for-await loop early would close the generator
    const seen: Line[] = [];
    let first = -1;
    while (first === -1) {
      const step = await lines.next();
      if (step.done) break;
      seen.push(step.value);
      first = firstNonSpace(step.value.bytes);
    }
    async function* replay(): AsyncGenerator<Line> {
      yield* seen;
      yield* lines;
    }
    if (first === 0x7b) yield* jsonlRecords(replay(), 0, 'stdin', this.field);
    else yield* blocks(replay(), 0);
  }
}
