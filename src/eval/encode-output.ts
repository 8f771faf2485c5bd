/**
 * What `sae encode` writes (issue 20): one record per token, in the order the tokens were read,
 *
 *   {"context":C,"position":P,"token":" the","token_id":262,"features":[[id,value],…]}
 *
 * as NDJSON (one line each) or as Parquet with the same columns: context INT32, position INT32,
 * token STRING (null where no tokenizer names it), token_id INT32, features LIST<STRUCT<id INT32,
 * value FLOAT>>. A token's features are its active SAE features, largest value first (ties: lower
 * id first). Values are the SAE's float32 codes: exact in Parquet; in NDJSON the shortest decimal
 * that reads back to the same float32 (`float32Text`), so 0.1f prints as 0.1, not 0.10000000149.
 *
 * Both write as the codes arrive: NDJSON a batch of lines at a time, Parquet a row group at a time
 * (`rowGroupRows` records in memory, whatever the corpus's length). A file output is written to a
 * temporary sibling and renamed into place once complete, so a killed or failed encode leaves no
 * partial file under the output's name.
 */
import { closeSync, fsyncSync, openSync, promises as fs, writeSync } from 'node:fs';
import { ByteWriter, ParquetWriter } from 'hyparquet-writer';
import type { KeyValue, SchemaElement } from 'hyparquet';
import type { EncodedBlock } from './encode.js';
import { describeFsError, tmpSibling } from '../util/atomic.js';
import { ENCODE_COLUMNS, ENCODE_MARK } from '../store/outputs.js';

export const ENCODE_FORMATS = ['ndjson', 'parquet'] as const;
export type EncodeFormat = (typeof ENCODE_FORMATS)[number];

/** Rows per Parquet row group by default: a few MB of codes at k = 32. */
export const DEFAULT_ROW_GROUP_ROWS = 8192;

/** The text of a token id, or null where there is no tokenizer to ask. */
export type TokenText = (id: number) => string | null;

/** Where encoded blocks go. */
export interface EncodeSink {
  /** the reader went away (a closed stdout: `| head`): stop, quietly */
  readonly closed: boolean;
  write(block: EncodedBlock, token: TokenText): Promise<void>;
  /** the stream is complete: publish the output */
  finish(): Promise<void>;
  /** the stream failed or was interrupted: leave nothing under the output's name */
  abort(): Promise<void>;
}

/** The shortest decimal that reads back (as float32) to the float32 `v`. */
export function float32Text(v: number): string {
  if (v === 0 || !Number.isFinite(v)) return String(v);
  for (let p = 1; p < 9; p++) {
    const s = Number(v.toPrecision(p));
    if (Math.fround(s) === v) return String(s);
  }
  return String(Number(v.toPrecision(9)));
}

/**
 * The entries of row b of the block's codes, largest value first, ties by lower feature id (the
 * codes come with ids ascending, so a stable sort by value keeps that order among ties).
 */
export function rowOrder(block: EncodedBlock, b: number, into: number[]): number[] {
  const { rowPtr, value } = block.codes;
  into.length = 0;
  for (let e = rowPtr[b]; e < rowPtr[b + 1]; e++) into.push(e);
  // insertion sort: stable, and rows hold a few dozen entries
  for (let i = 1; i < into.length; i++) {
    const e = into[i];
    const v = value[e];
    let j = i - 1;
    while (j >= 0 && value[into[j]] < v) {
      into[j + 1] = into[j];
      j--;
    }
    into[j + 1] = e;
  }
  return into;
}

/** The block's records as NDJSON lines. */
export function ndjsonLines(block: EncodedBlock, token: TokenText): string {
  const { index, value } = block.codes;
  const order: number[] = [];
  let out = '';
  for (let b = 0; b < block.n; b++) {
    const t = token(block.tokenId[b]);
    let f = '';
    for (const e of rowOrder(block, b, order)) f += `${f ? ',' : ''}[${index[e]},${float32Text(value[e])}]`;
    out += `{"context":${block.context[b]},"position":${block.position[b]},"token":${t === null ? 'null' : JSON.stringify(t)},"token_id":${block.tokenId[b]},"features":[${f}]}\n`;
  }
  return out;
}

/** NDJSON on a stream (stdout): a closed reader (EPIPE) ends the output quietly. */
export class StreamNdjsonSink implements EncodeSink {
  private epipe = false;
  private failure: Error | null = null;
  private drained: Promise<void> | null = null;
  private readonly onError = (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE' || err.code === 'ERR_STREAM_DESTROYED') this.epipe = true;
    else this.failure = err;
  };

  constructor(private readonly out: NodeJS.WritableStream) {
    // kept for the life of the process: a late EPIPE (a write still in flight) must not crash it
    out.on('error', this.onError);
  }

  get closed(): boolean {
    return this.epipe;
  }

  write(block: EncodedBlock, token: TokenText): Promise<void> {
    if (this.failure) return Promise.reject(describeFsError(this.failure, 'writing to stdout'));
    if (this.epipe) return Promise.resolve();
    if (this.out.write(ndjsonLines(block, token))) return this.drained ?? Promise.resolve();
    // backpressure: one wait for the reader (or for it to go away), shared by the writes until then
    this.drained ??= new Promise<void>((resolve) => {
      const done = () => {
        this.out.off('drain', done);
        this.out.off('error', done);
        this.out.off('close', done);
        this.drained = null;
        resolve();
      };
      this.out.once('drain', done);
      this.out.once('error', done);
      this.out.once('close', done);
    });
    return this.drained;
  }

  async finish(): Promise<void> {
    if (this.failure) throw describeFsError(this.failure, 'writing to stdout');
  }

  async abort(): Promise<void> {}
}

/** A file written under a temporary sibling name and renamed into place by `publish`. */
class TmpFile {
  readonly tmp: string;
  private fd: number | null;

  constructor(readonly file: string) {
    this.tmp = tmpSibling(file);
    try {
      this.fd = openSync(this.tmp, 'w');
    } catch (err) {
      throw describeFsError(err, `writing ${file}`);
    }
  }

  write(bytes: Uint8Array): void {
    try {
      for (let o = 0; o < bytes.length; ) o += writeSync(this.fd!, bytes, o, bytes.length - o);
    } catch (err) {
      throw describeFsError(err, `writing ${this.file}`);
    }
  }

  async publish(): Promise<void> {
    try {
      fsyncSync(this.fd!);
      closeSync(this.fd!);
      this.fd = null;
      await fs.rename(this.tmp, this.file);
    } catch (err) {
      await this.discard();
      throw describeFsError(err, `writing ${this.file}`);
    }
  }

  async discard(): Promise<void> {
    if (this.fd !== null) closeSync(this.fd);
    this.fd = null;
    await fs.rm(this.tmp, { force: true }).catch(() => undefined);
  }
}

/** NDJSON into a file, published when complete. */
export class FileNdjsonSink implements EncodeSink {
  readonly closed = false;
  private readonly f: TmpFile;
  private readonly enc = new TextEncoder();

  constructor(file: string) {
    this.f = new TmpFile(file);
  }

  async write(block: EncodedBlock, token: TokenText): Promise<void> {
    this.f.write(this.enc.encode(ndjsonLines(block, token)));
  }

  finish(): Promise<void> {
    return this.f.publish();
  }

  abort(): Promise<void> {
    return this.f.discard();
  }
}

/** The Parquet schema of the records: the features a list of (id, value) structs. */
export const ENCODE_PARQUET_SCHEMA: SchemaElement[] = [
  { name: 'root', num_children: ENCODE_COLUMNS.length },
  { name: 'context', type: 'INT32', repetition_type: 'REQUIRED' },
  { name: 'position', type: 'INT32', repetition_type: 'REQUIRED' },
  { name: 'token', type: 'BYTE_ARRAY', converted_type: 'UTF8', logical_type: { type: 'STRING' }, repetition_type: 'OPTIONAL' },
  { name: 'token_id', type: 'INT32', repetition_type: 'REQUIRED' },
  { name: 'features', repetition_type: 'REQUIRED', converted_type: 'LIST', logical_type: { type: 'LIST' }, num_children: 1 },
  { name: 'list', repetition_type: 'REPEATED', num_children: 1 },
  { name: 'element', repetition_type: 'REQUIRED', num_children: 2 },
  { name: 'id', type: 'INT32', repetition_type: 'REQUIRED' },
  { name: 'value', type: 'FLOAT', repetition_type: 'REQUIRED' },
];

/** hyparquet-writer's byte writer, emptied into the file after each row group. */
class FlushingWriter extends ByteWriter {
  constructor(private readonly f: TmpFile) {
    super(1 << 20);
  }
  flush(): void {
    this.f.write(new Uint8Array(this.buffer, 0, this.index));
    this.index = 0;
  }
  override finish(): void {
    this.flush();
  }
}

type Feature = { id: number; value: number };

/** Parquet into a file, a row group at a time, published when complete. */
export class ParquetSink implements EncodeSink {
  readonly closed = false;
  private readonly f: TmpFile;
  private readonly writer: ParquetWriter;
  private n = 0;
  private readonly context: Int32Array;
  private readonly position: Int32Array;
  private readonly tokenId: Int32Array;
  private token: (string | null)[] = [];
  private features: Feature[][] = [];
  private readonly order: number[] = [];

  /** provenance: more key-value metadata beside the mark (checkpoint, mode, hook …) */
  constructor(
    file: string,
    private readonly rowGroupRows = DEFAULT_ROW_GROUP_ROWS,
    provenance: Record<string, string> = {},
  ) {
    this.f = new TmpFile(file);
    const kv: KeyValue[] = Object.entries({ ...ENCODE_MARK, ...provenance }).map(([key, value]) => ({ key, value }));
    this.writer = new ParquetWriter({ writer: new FlushingWriter(this.f), schema: ENCODE_PARQUET_SCHEMA, kvMetadata: kv, createdBy: 'sae encode' });
    this.context = new Int32Array(rowGroupRows);
    this.position = new Int32Array(rowGroupRows);
    this.tokenId = new Int32Array(rowGroupRows);
  }

  async write(block: EncodedBlock, token: TokenText): Promise<void> {
    const { index, value } = block.codes;
    for (let b = 0; b < block.n; b++) {
      const r = this.n++;
      this.context[r] = block.context[b];
      this.position[r] = block.position[b];
      this.tokenId[r] = block.tokenId[b];
      this.token.push(token(block.tokenId[b]));
      this.features.push(rowOrder(block, b, this.order).map((e) => ({ id: index[e], value: value[e] })));
      if (this.n === this.rowGroupRows) this.flushGroup();
    }
  }

  private flushGroup(): void {
    const n = this.n;
    if (n === 0) return;
    const columnData = [
      { name: 'context', data: this.context.slice(0, n) },
      { name: 'position', data: this.position.slice(0, n) },
      { name: 'token', data: this.token },
      { name: 'token_id', data: this.tokenId.slice(0, n) },
      { name: 'features', data: this.features },
    ];
    // one row group, written to the file (FlushingWriter.flush) before this returns
    void this.writer.write({ columnData, rowGroupSize: n });
    this.n = 0;
    this.token = [];
    this.features = [];
  }

  async finish(): Promise<void> {
    try {
      this.flushGroup();
      void this.writer.finish();
    } catch (err) {
      await this.f.discard();
      throw err;
    }
    await this.f.publish();
  }

  abort(): Promise<void> {
    return this.f.discard();
  }
}
