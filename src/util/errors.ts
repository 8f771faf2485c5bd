/**
 * An error caused by the user's input (flags, files, config). The CLI prints its message on one
 * line and exits non-zero without a stack trace; anything else is a bug and keeps its trace.
 */
export class UserError extends Error {
  readonly exitCode: number;
  constructor(message: string, exitCode = 2) {
    super(message);
    this.name = 'UserError';
    this.exitCode = exitCode;
  }
}

export function userError(message: string, exitCode = 2): never {
  throw new UserError(message, exitCode);
}
