import { Command, Errors } from '@oclif/core';
import { UserError } from './errors.js';

/**
 * Base for every `sae` command: user errors (bad flags, files, config) become one line on stderr
 * and a non-zero exit, never a stack trace. stdout is reserved for data and manifests.
 */
export abstract class SaeCommand extends Command {
  protected override async catch(err: Error & { exitCode?: number; oclif?: { exit?: number } }): Promise<unknown> {
    if (err instanceof UserError) {
      process.stderr.write(`sae: error: ${oneLine(err.message)}\n`);
      this.exit(err.exitCode);
    }
    // oclif's own flag/arg parsing errors are user errors too.
    if (err instanceof Errors.CLIError && !(err instanceof Errors.ExitError)) {
      process.stderr.write(`sae: error: ${oneLine(err.message)}\n`);
      this.exit(err.oclif?.exit ?? 2);
    }
    return super.catch(err);
  }

  /** Progress and logs go to stderr so that stdout stays machine-readable. */
  protected info(line: string): void {
    process.stderr.write(line + '\n');
  }
}

/** oclif's parse errors span lines ("Parsing --k", the reason, "See more help…"): fold them into one. */
export function oneLine(message: string): string {
  return message
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !/^See more help/i.test(l) && !/^The following errors? occurred:?$/i.test(l))
    .reduce((acc, l) => (!acc ? l : acc.endsWith(':') ? `${acc} ${l}` : `${acc}: ${l}`), '');
}
