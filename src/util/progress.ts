/** What Progress writes to: stderr, or a stand-in in tests. */
export interface ProgressStream {
  write(text: string): unknown;
  isTTY?: boolean;
  /** terminal width; a redrawn line longer than this would wrap and leave a copy per redraw */
  columns?: number;
}

/**
 * Progress on stderr: a redrawn bar when stderr is a terminal, plain lines otherwise (logs in CI
 * and pipes stay readable). stdout is never touched.
 */
export class Progress {
  private readonly tty: boolean;
  private lastDraw = -Infinity;
  private readonly t0: number;
  /** the live line as drawn now ('' when none is on screen) */
  private lastLine = '';
  private lastReport = -Infinity;
  private finished = false;

  constructor(
    private readonly label: string,
    private readonly enabled = true,
    private readonly stream: ProgressStream = process.stderr,
    private readonly now: () => number = Date.now,
  ) {
    this.tty = !!stream.isTTY && process.env.TERM !== 'dumb';
    this.t0 = now();
  }

  /** redraw the bar (terminal only; at most ~10 times a second) */
  tick(done: number, total: number, info = ''): void {
    const t = this.now();
    const frac = total > 0 ? Math.min(1, done / total) : 0;
    const width = 30;
    const fill = Math.round(frac * width);
    const elapsed = (t - this.t0) / 1000;
    const eta = done > 0 ? (elapsed / done) * (total - done) : 0;
    this.draw(`${this.label} [${'#'.repeat(fill)}${'.'.repeat(width - fill)}] ${done}/${total} ${info} eta ${eta.toFixed(0)}s`, done >= total);
  }

  /** a live status line without a bar, for work of unknown length (terminal only) */
  status(text: string): void {
    this.draw(`${this.label} ${text}`, false);
  }

  private draw(text: string, force: boolean): void {
    if (!this.enabled || !this.tty || this.finished) return;
    const t = this.now();
    if (t - this.lastDraw < 100 && !force) return;
    this.lastDraw = t;
    this.lastLine = this.fit(text);
    this.stream.write(`\r\x1b[K${this.lastLine}`);
  }

  /** one column short of the width: a line that fills the last column wraps on some terminals */
  private fit(text: string): string {
    const cols = this.stream.columns;
    if (!cols || cols < 2 || text.length < cols) return text;
    return text.slice(0, cols - 2) + '…';
  }

  /** a log line: printed as is when not a terminal, above the bar when it is */
  line(text: string): void {
    if (!this.enabled) return;
    if (this.tty && this.lastLine) this.stream.write(`\r\x1b[K${text}\n${this.lastLine}`);
    else this.stream.write(text + '\n');
  }

  /**
   * A log line at most every `everyMs` (the first at once), so that a long run shows it is alive
   * in a log or a pipe, where the bar is not drawn, without flooding it.
   */
  report(text: () => string, everyMs = 5000): void {
    if (!this.enabled || this.finished) return;
    const t = this.now();
    if (t - this.lastReport < everyMs) return;
    this.lastReport = t;
    this.line(text());
  }

  /** clear the bar for good: what follows (a summary, the data on stdout) starts on a clean line */
  done(): void {
    if (this.enabled && this.tty && this.lastLine) this.stream.write('\r\x1b[K');
    this.lastLine = '';
    this.finished = true;
  }
}

/** Token counts for humans: 3840000 → 3.84M, 65536 → 65.5k. */
export function fmtTokens(n: number): string {
  return n >= 1e6 ? `${+(n / 1e6).toPrecision(3)}M` : n >= 1e4 ? `${+(n / 1e3).toPrecision(3)}k` : String(n);
}
