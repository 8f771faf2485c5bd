import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { Progress, type ProgressStream } from '../src/util/progress.js';

/** A stand-in for stderr: a terminal of `columns` columns, or a plain pipe. */
function fakeStream(tty: boolean, columns?: number): ProgressStream & { out: string } {
  const s = {
    out: '',
    isTTY: tty,
    columns,
    write(text: string) {
      s.out += text;
      return true;
    },
  };
  return s;
}

/** A clock the test moves by hand. */
function clock(start = 1_000_000) {
  const c = { t: start, now: () => c.t };
  return c;
}

/** What a terminal shows after the writes: each \r starts the line again, \x1b[K clears it. */
function screen(out: string): string[] {
  const lines: string[] = [''];
  for (const part of out.split(/(\r|\n|\x1b\[K)/)) {
    if (part === '\r' || part === '\x1b[K') lines[lines.length - 1] = '';
    else if (part === '\n') lines.push('');
    else lines[lines.length - 1] += part;
  }
  return lines;
}

const term = process.env.TERM;
beforeAll(() => {
  process.env.TERM = 'xterm';
});
afterAll(() => {
  process.env.TERM = term;
});

describe('Progress on a terminal', () => {
  it('writes to the stream it is given, not to process.stderr', () => {
    const s = fakeStream(true, 120);
    const spy = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    try {
      const p = new Progress('harvest', true, s, clock().now);
      p.tick(10, 100, '1 shard');
      p.line('a log line');
      p.done();
      expect(spy).not.toHaveBeenCalled();
    } finally {
      spy.mockRestore();
    }
    expect(s.out).toContain('harvest [###');
    expect(s.out).toContain('a log line\n');
  });

  it('done() clears the bar, and a summary line after it is not followed by a redrawn bar', () => {
    const s = fakeStream(true, 120);
    const p = new Progress('harvest', true, s, clock().now);
    p.tick(100, 100);
    p.done();
    p.line('harvested 100 tokens');
    // the stdout path printed next starts on a clean line, not glued to "…eta 0s"
    expect(s.out.endsWith('harvested 100 tokens\n')).toBe(true);
    expect(screen(s.out)).toEqual(['harvested 100 tokens', '']);
  });

  it('draws nothing after done()', () => {
    const s = fakeStream(true, 120);
    const c = clock();
    const p = new Progress('harvest', true, s, c.now);
    p.tick(1, 100);
    p.done();
    const before = s.out;
    c.t += 1000;
    p.tick(50, 100);
    p.status('50 tokens');
    p.report(() => 'alive');
    expect(s.out).toBe(before);
  });

  it('never draws a line as wide as the terminal, so a redraw cannot wrap', () => {
    const s = fakeStream(true, 40);
    const c = clock();
    const p = new Progress('harvest', true, s, c.now);
    for (let i = 1; i <= 5; i++) {
      c.t += 200;
      p.tick(i * 1000, 5000, `${i} shards, a long description of what is happening`);
      c.t += 200;
      p.status(`${i} tokens and a long description of what is happening`);
    }
    p.line('a log line');
    const drawn = s.out.split(/\r\x1b\[K|\n/).filter(Boolean);
    expect(drawn.length).toBeGreaterThan(5);
    for (const l of drawn) expect(l.length, l).toBeLessThan(40);
  });

  it('redraws at most ~10 times a second, and always at the end', () => {
    const s = fakeStream(true, 120);
    const c = clock();
    const p = new Progress('x', true, s, c.now);
    p.tick(1, 10);
    c.t += 50;
    p.tick(2, 10);
    p.tick(10, 10);
    expect(screen(s.out).pop()).toMatch(/^x \[#{30}\] 10\/10/);
    expect(s.out.match(/\r/g)).toHaveLength(2);
  });
});

describe('Progress off a terminal', () => {
  it('draws no bar and no status line, only log lines', () => {
    const s = fakeStream(false);
    const p = new Progress('harvest', true, s, clock().now);
    p.tick(1, 10);
    p.status('1 token');
    p.line('loaded');
    p.done();
    expect(s.out).toBe('loaded\n');
  });

  it('report() prints a line at once, then at most once per interval', () => {
    const s = fakeStream(false);
    const c = clock();
    const p = new Progress('harvest', true, s, c.now);
    const seen: number[] = [];
    for (let i = 0; i < 12; i++) {
      p.report(() => {
        seen.push(i);
        return `step ${i}`;
      }, 5000);
      c.t += 1000;
    }
    expect(seen).toEqual([0, 5, 10]);
    expect(s.out).toBe('step 0\nstep 5\nstep 10\n');
  });

  it('is silent when disabled (--quiet)', () => {
    const s = fakeStream(false);
    const p = new Progress('harvest', false, s, clock().now);
    p.report(() => 'x');
    p.line('y');
    expect(s.out).toBe('');
  });
});
