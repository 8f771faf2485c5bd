import { promises as fs } from 'node:fs';
import * as zlib from 'node:zlib';
import { constants as bufferConstants } from 'node:buffer';
import { UserError } from '../util/errors.js';
import { describeFsError } from '../util/atomic.js';

/**
 * A read-only view of a zip archive whose entries are stored uncompressed, which is what
 * torch.save writes. Only the central directory is read up front; entry bytes are read on demand
 * so a multi-gigabyte checkpoint never sits in memory twice.
 */
export interface ZipEntry {
  name: string;
  method: number;
  flags: number;
  crc32: number;
  compressedSize: number;
  size: number;
  localHeaderOffset: number;
}

const SIG_EOCD = 0x06054b50;
const SIG_EOCD64 = 0x06064b50;
const SIG_EOCD64_LOCATOR = 0x07064b50;
const SIG_CENTRAL = 0x02014b50;
const SIG_LOCAL = 0x04034b50;
const EOCD_SIZE = 22;
const MAX_COMMENT = 0xffff;
// fs reads are capped near 2 GiB per call; big storages are read in pieces of this size.
const READ_CHUNK = 1 << 30;

export class ZipReader {
  private constructor(
    private readonly fh: fs.FileHandle,
    readonly label: string,
    readonly fileSize: number,
    /** where the central directory starts: every entry's data must end before it */
    private readonly dataEnd: number,
    readonly entries: Map<string, ZipEntry>,
  ) {}

  static async open(file: string, label = file): Promise<ZipReader> {
    let fh: fs.FileHandle;
    try {
      fh = await fs.open(file, 'r');
    } catch (e) {
      throw describeFsError(e, label);
    }
    try {
      const { size } = await fh.stat();
      const { cdOffset, cdSize, count } = await findCentralDirectory(fh, size, label);
      const cd = await readAt(fh, cdOffset, cdSize, label);
      const entries = parseCentralDirectory(cd, count, label);
      return new ZipReader(fh, label, size, cdOffset, entries);
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  async close(): Promise<void> {
    await this.fh.close();
  }

  /** The entry's bytes, checked against its CRC-32. */
  async read(entry: ZipEntry): Promise<Uint8Array> {
    const bad = (why: string): never => {
      throw new UserError(`${this.label}: zip entry ${entry.name} ${why}`);
    };
    if (entry.flags & 1) bad('is encrypted');
    // torch never compresses; inflating is possible but would only hide a file torch did not write
    if (entry.method !== 0) bad(`is compressed (method ${entry.method}); torch.save stores entries uncompressed`);
    if (entry.compressedSize !== entry.size) bad(`is stored but its sizes differ (${entry.compressedSize} vs ${entry.size})`);
    if (entry.size > bufferConstants.MAX_LENGTH) bad(`is ${entry.size} bytes, more than one buffer can hold here (${bufferConstants.MAX_LENGTH})`);
    if (entry.localHeaderOffset + 30 > this.dataEnd) bad(`has its local header past the central directory (offset ${entry.localHeaderOffset})`);
    const local = await readAt(this.fh, entry.localHeaderOffset, 30, this.label);
    const dv = view(local);
    if (dv.getUint32(0, true) !== SIG_LOCAL) bad(`has no local header at offset ${entry.localHeaderOffset}`);
    // The local header's name/extra lengths may differ from the central copy (torch pads the
    // local extra field to align storages), so the data offset must come from here.
    const start = entry.localHeaderOffset + 30 + dv.getUint16(26, true) + dv.getUint16(28, true);
    if (start + entry.size > this.dataEnd) bad(`runs past the end of the data (needs bytes ${start}..${start + entry.size}, data ends at ${this.dataEnd})`);
    const bytes = await readAt(this.fh, start, entry.size, this.label);
    if (zlib.crc32(bytes) >>> 0 !== entry.crc32) bad('fails its CRC-32 check (the file is corrupt)');
    return bytes;
  }
}

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

async function readAt(fh: fs.FileHandle, position: number, length: number, label: string): Promise<Uint8Array> {
  // A fresh ArrayBuffer per read, offset 0, so tensors cut from it stay aligned to their item size.
  const out = new Uint8Array(length);
  let done = 0;
  while (done < length) {
    const want = Math.min(READ_CHUNK, length - done);
    const { bytesRead } = await fh.read(out, done, want, position + done);
    if (bytesRead === 0) throw new UserError(`${label}: truncated (wanted ${length} bytes at offset ${position}, the file ends first)`);
    done += bytesRead;
  }
  return out;
}

function u64(dv: DataView, at: number, label: string, what: string): number {
  const v = dv.getBigUint64(at, true);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new UserError(`${label}: zip64 ${what} ${v} is out of range`);
  return Number(v);
}

async function findCentralDirectory(
  fh: fs.FileHandle,
  size: number,
  label: string,
): Promise<{ cdOffset: number; cdSize: number; count: number }> {
  const notZip = (why: string): never => {
    throw new UserError(`${label}: not a torch zip checkpoint (${why}); only torch.save's zip format (torch >= 1.6) is read, otherwise use model.safetensors`);
  };
  if (size < EOCD_SIZE) notZip(`${size} bytes, too short for a zip`);
  const tailLen = Math.min(size, EOCD_SIZE + MAX_COMMENT);
  const tailStart = size - tailLen;
  const tail = await readAt(fh, tailStart, tailLen, label);
  const dv = view(tail);
  // The end record sits at the very end unless a comment follows it; scan back for a signature
  // whose comment length accounts exactly for the remaining bytes.
  let at = -1;
  for (let i = tailLen - EOCD_SIZE; i >= 0; i--) {
    if (dv.getUint32(i, true) === SIG_EOCD && i + EOCD_SIZE + dv.getUint16(i + 20, true) === tailLen) {
      at = i;
      break;
    }
  }
  if (at < 0) {
    const head = tail.subarray(0, 2);
    if (tailStart === 0 && head[0] === 0x80) notZip('a bare pickle, as torch.save wrote before 1.6');
    notZip('no end-of-central-directory record; the file may be truncated');
  }
  let count = dv.getUint16(at + 10, true);
  let cdSize = dv.getUint32(at + 12, true);
  let cdOffset = dv.getUint32(at + 16, true);
  const eocdPos = tailStart + at;
  let cdLimit = eocdPos;
  if (count === 0xffff || cdSize === 0xffffffff || cdOffset === 0xffffffff) {
    // zip64: a locator just before the end record points at the 64-bit end record
    const locPos = eocdPos - 20;
    if (locPos < 0) notZip('zip64 sizes without a zip64 locator');
    const loc = view(await readAt(fh, locPos, 20, label));
    if (loc.getUint32(0, true) !== SIG_EOCD64_LOCATOR) notZip('zip64 sizes without a zip64 locator');
    const recPos = u64(loc, 8, label, 'end record offset');
    if (recPos + 56 > locPos) throw new UserError(`${label}: zip64 end record offset ${recPos} is outside the file`);
    const rec = view(await readAt(fh, recPos, 56, label));
    if (rec.getUint32(0, true) !== SIG_EOCD64) throw new UserError(`${label}: no zip64 end record at offset ${recPos}`);
    count = u64(rec, 32, label, 'entry count');
    cdSize = u64(rec, 40, label, 'central directory size');
    cdOffset = u64(rec, 48, label, 'central directory offset');
    cdLimit = recPos;
  }
  if (cdOffset + cdSize > cdLimit) {
    throw new UserError(`${label}: corrupt zip (central directory at ${cdOffset}+${cdSize} overlaps its end record at ${cdLimit}; the file may be truncated)`);
  }
  return { cdOffset, cdSize, count };
}

function parseCentralDirectory(cd: Uint8Array, count: number, label: string): Map<string, ZipEntry> {
  const corrupt = (why: string): never => {
    throw new UserError(`${label}: corrupt zip central directory (${why})`);
  };
  const dv = view(cd);
  const entries = new Map<string, ZipEntry>();
  const utf8 = new TextDecoder('utf-8', { fatal: true });
  let p = 0;
  for (let i = 0; i < count; i++) {
    if (p + 46 > cd.length) corrupt(`entry ${i} of ${count} runs past its end`);
    if (dv.getUint32(p, true) !== SIG_CENTRAL) corrupt(`bad signature for entry ${i} at byte ${p}`);
    const nameLen = dv.getUint16(p + 28, true);
    const extraLen = dv.getUint16(p + 30, true);
    const commentLen = dv.getUint16(p + 32, true);
    const next = p + 46 + nameLen + extraLen + commentLen;
    if (next > cd.length) corrupt(`entry ${i} of ${count} runs past its end`);
    let name: string;
    try {
      name = utf8.decode(cd.subarray(p + 46, p + 46 + nameLen));
    } catch {
      return corrupt(`entry ${i} has a name that is not UTF-8`);
    }
    let size = dv.getUint32(p + 24, true);
    let compressedSize = dv.getUint32(p + 20, true);
    let localHeaderOffset = dv.getUint32(p + 42, true);
    // zip64 extra field: 64-bit values only for the fields saturated in the fixed header, in order
    let e = p + 46 + nameLen;
    const eEnd = e + extraLen;
    while (e + 4 <= eEnd) {
      const id = dv.getUint16(e, true);
      const len = dv.getUint16(e + 2, true);
      if (e + 4 + len > eEnd) corrupt(`entry ${name} has a malformed extra field`);
      if (id === 0x0001) {
        let q = e + 4;
        const take = (what: string): number => {
          if (q + 8 > e + 4 + len) corrupt(`entry ${name} has a short zip64 field`);
          const v = u64(dv, q, label, what);
          q += 8;
          return v;
        };
        if (size === 0xffffffff) size = take('size');
        if (compressedSize === 0xffffffff) compressedSize = take('compressed size');
        if (localHeaderOffset === 0xffffffff) localHeaderOffset = take('offset');
      }
      e += 4 + len;
    }
    if (entries.has(name)) corrupt(`entry ${name} appears twice`);
    entries.set(name, {
      name,
      flags: dv.getUint16(p + 8, true),
      method: dv.getUint16(p + 10, true),
      crc32: dv.getUint32(p + 16, true),
      compressedSize,
      size,
      localHeaderOffset,
    });
    p = next;
  }
  return entries;
}
