/**
 * Byte-level helpers shared by the corpus readers. Inputs are split into lines as bytes, not
 * strings, so that a document with invalid UTF-8 can be recognised and skipped on its own (a
 * string decoder would silently turn it into U+FFFD) and so that a resume position can carry the
 * byte offset to seek to.
 */

const strict = new TextDecoder('utf-8', { fatal: true });

/** The text, or null when the bytes are not valid UTF-8. A leading BOM is dropped. */
export function decodeUtf8(bytes: Uint8Array): string | null {
  try {
    return strict.decode(bytes);
  } catch {
    return null;
  }
}

/**
 * Whether a string can be encoded as UTF-8 at all: JSON escapes (`"\ud800"`) and Parquet
 * writers can produce lone surrogates, which a tokenizer would see as garbage.
 */
export function isWellFormed(text: string): boolean {
  return (text as string & { isWellFormed(): boolean }).isWellFormed();
}

export interface Line {
  /** the line without its `\n` (or `\r\n`) */
  bytes: Uint8Array;
  /** byte offset just past the line's terminator: where the next line starts */
  end: number;
}

/**
 * Lines of a byte stream. Pieces of a line that spans chunks are kept in a list and joined once,
 * so a long line costs one copy rather than one per chunk.
 */
export async function* splitLines(stream: AsyncIterable<Uint8Array | string>, base = 0): AsyncGenerator<Line> {
  let pieces: Buffer[] = [];
  let pos = base;
  for await (const raw of stream) {
    const chunk = typeof raw === 'string' ? Buffer.from(raw) : Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength);
    let start = 0;
    let nl: number;
    while ((nl = chunk.indexOf(10, start)) !== -1) {
      const tail = chunk.subarray(start, nl);
      const line = pieces.length ? Buffer.concat([...pieces, tail]) : tail;
      pieces = [];
      pos += line.length + 1;
      yield { bytes: stripCr(line), end: pos };
      start = nl + 1;
    }
    if (start < chunk.length) pieces.push(Buffer.from(chunk.subarray(start)));
  }
  if (pieces.length) {
    const line = Buffer.concat(pieces);
    pos += line.length;
    yield { bytes: stripCr(line), end: pos };
  }
}

function stripCr(line: Uint8Array): Uint8Array {
  return line.length && line[line.length - 1] === 13 ? line.subarray(0, line.length - 1) : line;
}

/** ASCII whitespace only: a line holding any other byte (even an invalid one) is not blank. */
export function isBlankLine(bytes: Uint8Array): boolean {
  for (const b of bytes) if (b !== 0x20 && b !== 0x09 && b !== 0x0b && b !== 0x0c && b !== 0x0d) return false;
  return true;
}

/** The first byte that is not ASCII whitespace, or -1. */
export function firstNonSpace(bytes: Uint8Array): number {
  for (const b of bytes) if (b !== 0x20 && b !== 0x09 && b !== 0x0b && b !== 0x0c && b !== 0x0d) return b;
  return -1;
}
