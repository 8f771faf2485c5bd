/**
 * Writing every byte of a buffer list at the file position. A write may be short (a signal, a
 * full pipe, a platform's per-call cap), so the rest is written again; a write of 0 bytes means
 * no progress can be made and would otherwise loop forever, so it fails.
 */

/** The part of fs.FileHandle used here, so a test can stand in for the file. */
export interface VectorWriter {
  writev(buffers: Uint8Array[]): Promise<{ bytesWritten: number }>;
}

/** Below Linux's 0x7ffff000-byte cap per call and Node's 2 GiB buffer limit. */
const MAX_PIECE = 1 << 30;
/** Below any platform's IOV_MAX. */
const MAX_BUFFERS = 512;

/** Append `data` (one buffer or pieces, in order) at the file position, whatever each call manages. */
export async function writeAll(fh: VectorWriter, data: Uint8Array | readonly Uint8Array[]): Promise<void> {
  const pieces: Uint8Array[] = [];
  for (const buf of data instanceof Uint8Array ? [data] : data) {
    for (let o = 0; o < buf.length; o += MAX_PIECE) pieces.push(buf.subarray(o, Math.min(buf.length, o + MAX_PIECE)));
  }
  for (let i = 0; i < pieces.length; ) {
    const batch = pieces.slice(i, i + MAX_BUFFERS);
    i += batch.length;
    let left = batch.reduce((a, b) => a + b.length, 0);
    while (left > 0) {
      const { bytesWritten } = await fh.writev(batch);
      if (bytesWritten === 0) throw new Error(`write made no progress (0 of ${left} bytes written)`);
      left -= bytesWritten;
      // a short write: drop what went out and continue with the rest
      let skip = bytesWritten;
      while (batch.length && skip >= batch[0].length) skip -= batch.shift()!.length;
      if (skip > 0) batch[0] = batch[0].subarray(skip);
    }
  }
}
