import { describe, expect, it } from 'vitest';
import { describeFsError } from '../src/util/atomic.js';
import { UserError } from '../src/util/errors.js';

const errno = (code: string) => Object.assign(new Error(code), { code });

describe('file-system errors as user messages', () => {
  it('a full disk names the file and the remedy: free space and rerun the same command', () => {
    const e = describeFsError(errno('ENOSPC'), 'writing acts/shard-00003.parquet') as UserError;
    expect(e).toBeInstanceOf(UserError);
    expect(e.message).toBe('writing acts/shard-00003.parquet: no space left on device; free some space and rerun the same command (what was completed is kept)');
  });

  it('an exceeded quota reads as a full disk', () => {
    expect((describeFsError(errno('EDQUOT'), 'writing x') as UserError).message).toMatch(/^writing x: disk quota exceeded; free some space and rerun the same command/);
  });

  it('leaves errors it does not know as they are (bugs keep their trace)', () => {
    const err = errno('EIO');
    expect(describeFsError(err, 'x')).toBe(err);
  });
});
