import type { Hook } from '@oclif/core';

/**
 * An unknown command is a user error like any other: one `sae: error:` line and exit 2, so that
 * scripts see the same shape whatever went wrong (oclif's default prints its own styled block).
 */
const hook: Hook.CommandNotFound = async function (opts) {
  const name = opts.id.split(':').join(' ');
  const known = [...new Set(opts.config.commands.map((c) => c.id.split(':')[0]))].sort();
  process.stderr.write(`sae: error: unknown command "${name}"; the commands are ${known.join(', ')} (sae --help)\n`);
  process.exit(2);
};

export default hook;
