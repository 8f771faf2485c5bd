/**
 * Progress on stderr: a redrawn bar when stderr is a terminal, plain lines otherwise (logs in CI
 * and pipes stay readable). stdout is never touched.
 */
export class Progress {
  private readonly tty: boolean;
  private lastDraw = 0;
  private readonly t0 = Date.now();
  private lastLine = '';

  constructor(private readonly label: string, private readonly enabled = true, stream: NodeJS.WriteStream = process.stderr) {
    this.tty = !!stream.isTTY && process.env.TERM !== 'dumb';
  }

  /** redraw the bar (terminal only; at most ~10 times a second) */
  tick(done: number, total: number, info = ''): void {
    if (!this.enabled || !this.tty) return;
    const now = Date.now();
    if (now - this.lastDraw < 100 && done < total) return;
    this.lastDraw = now;
    const width = 30;
    const frac = total > 0 ? Math.min(1, done / total) : 0;
    const fill = Math.round(frac * width);
    const elapsed = (now - this.t0) / 1000;
    const eta = done > 0 ? (elapsed / done) * (total - done) : 0;
    this.lastLine = `${this.label} [${'#'.repeat(fill)}${'.'.repeat(width - fill)}] ${done}/${total} ${info} eta ${eta.toFixed(0)}s`;
    process.stderr.write(`\r\x1b[K${this.lastLine}`);
  }

  /** a log line: printed as is when not a terminal, above the bar when it is */
  line(text: string): void {
    if (!this.enabled) return;
    if (this.tty) process.stderr.write(`\r\x1b[K${text}\n${this.lastLine}`);
    else process.stderr.write(text + '\n');
  }

  done(): void {
    if (this.enabled && this.tty && this.lastLine) process.stderr.write('\r\x1b[K');
  }
}

/** Token counts for humans: 3840000 → 3.84M, 65536 → 65.5k. */
export function fmtTokens(n: number): string {
  return n >= 1e6 ? `${+(n / 1e6).toPrecision(3)}M` : n >= 1e4 ? `${+(n / 1e3).toPrecision(3)}k` : String(n);
}
