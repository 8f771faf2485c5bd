import { promises as fs } from 'node:fs';
import { describeFsError, writeFileAtomic } from '../../util/atomic.js';

/**
 * A run's metrics.jsonl: one JSON record per line, each with the step it was taken at. Records are
 * collected and appended together by flush(), which the job calls before every checkpoint, so
 * that a checkpoint never has fewer log lines behind it than its step.
 */
export class MetricsLog {
  private readonly pending: string[] = [];

  constructor(readonly file: string) {}

  /** On resume, drop the lines past the checkpoint's step so the log reads like one uninterrupted run. */
  async truncate(step: number): Promise<void> {
    let text: string;
    try {
      text = await fs.readFile(this.file, 'utf8');
    } catch {
      return;
    }
    const keep = text
      .split('\n')
      .filter((l) => l.trim())
      .filter((l) => {
        try {
          return (JSON.parse(l) as { step: number }).step <= step;
        } catch {
          return false;
        }
      });
    await writeFileAtomic(this.file, keep.map((l) => l + '\n').join(''));
  }

  push(record: { step: number; [key: string]: unknown }): void {
    this.pending.push(JSON.stringify(record) + '\n');
  }

  async flush(): Promise<void> {
    if (!this.pending.length) return;
    await fs.appendFile(this.file, this.pending.join('')).catch((e) => {
      throw describeFsError(e, `writing ${this.file}`);
    });
    this.pending.length = 0;
  }
}
