import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { parquetMetadata } from 'hyparquet';
import { UserError } from '../util/errors.js';

/**
 * Output files of single-file commands (splice-eval --out, model run --save, eval --features-out).
 * Nothing already written is lost: an existing file is replaced only when it is recognisably an
 * earlier output of the same command (a rerun), or with --force. "Ours" is recognised by content,
 * not by name, so a user's file that happens to sit at the path is never taken for ours.
 */
export type Ours = (file: string) => Promise<boolean>;

/**
 * Check `file` before any work, and again just before writing (the file may have appeared since):
 * its folder exists, it is not a folder, and if it exists it is ours or `force` is set.
 */
export async function checkOutFile(file: string, flag: string, ours: Ours, force: boolean): Promise<void> {
  const dir = path.dirname(path.resolve(file));
  const dst = await fs.stat(dir).catch(() => null);
  if (!dst) throw new UserError(`${flag} ${file}: its folder does not exist`);
  if (!dst.isDirectory()) throw new UserError(`${flag} ${file}: ${dir} is not a folder`);
  const st = await fs.stat(file).catch(() => null);
  if (!st) return;
  if (st.isDirectory()) throw new UserError(`${flag} ${file} is a folder; give a file name`);
  if (force) return;
  if (!(await ours(file).catch(() => false))) throw new UserError(`${flag} ${file} exists and is not an earlier output of this command; add --force to replace it`);
}

/** A JSON file whose top-level `schema` is `schema` (e.g. sae-splice/1). */
export const jsonWithSchema =
  (schema: string): Ours =>
  async (file) => {
    const st = await fs.stat(file);
    if (st.size > 64 << 20) return false;
    const v = JSON.parse(await fs.readFile(file, 'utf8')) as { schema?: unknown };
    return typeof v === 'object' && v !== null && v.schema === schema;
  };

/** A safetensors file whose header metadata has `key` = `value`; reads the header only. */
export const safetensorsWithMeta =
  (key: string, value: string): Ours =>
  async (file) => {
    const fh = await fs.open(file, 'r');
    try {
      const len = Buffer.alloc(8);
      if ((await fh.read(len, 0, 8, 0)).bytesRead < 8) return false;
      const n = Number(len.readBigUInt64LE(0));
      if (n < 2 || n > 100 << 20) return false;
      const head = Buffer.alloc(n);
      if ((await fh.read(head, 0, n, 8)).bytesRead < n) return false;
      const h = JSON.parse(head.toString('utf8')) as { __metadata__?: Record<string, unknown> };
      return h.__metadata__?.[key] === value;
    } finally {
      await fh.close();
    }
  };

/** A CSV whose header line is exactly `columns`, or a Parquet file with exactly these columns. */
export const tableWithColumns =
  (columns: readonly string[]): Ours =>
  async (file) => {
    const buf = await fs.readFile(file);
    if (file.toLowerCase().endsWith('.parquet')) {
      const md = parquetMetadata(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength) as ArrayBuffer);
      const names = md.schema.slice(1).map((s) => s.name);
      return names.length === columns.length && names.every((n, i) => n === columns[i]);
    }
    const nl = buf.indexOf(10);
    return buf.subarray(0, nl < 0 ? buf.length : nl).toString('utf8').replace(/\r$/, '') === columns.join(',');
  };
