import { Flags } from '@oclif/core';
import { SaeCommand } from '../util/command.js';
import { UserError } from '../util/errors.js';
import { sharedFlags } from '../cli/flags.js';
import { Progress } from '../util/progress.js';
import { formatBytes, parseBytes } from '../pipeline/shuffle/plan.js';
import { shuffleShards, ShuffleInterrupted } from '../pipeline/shuffle/shuffle.js';
import { announceEnd, announceShard, collectAnnounced, metaDigest, readAnnouncements } from '../stream/pipe.js';
import { openShards } from '../store/shard-set.js';

export default class Shuffle extends SaeCommand {
  static override description =
    'Shuffle activation shards fully within a memory budget (SPEC §1): rows are dealt into bucket files, each bucket is permuted in memory and written out; deterministic for a seed, resumable, metadata kept with the shuffle recorded';

  static override examples = [
    '<%= config.bin %> shuffle --data data/harvest --out data/shuffled',
    '<%= config.bin %> shuffle --data data/harvest --out data/shuffled --memory 8GB --seed 1 --shard-rows 131072',
  ];

  static override flags = {
    data: Flags.string({ description: 'input activation shards: a folder with manifest.json, one .parquet file, or - for shards announced on stdin by sae harvest --ndjson', required: true }),
    ndjson: Flags.boolean({ description: 'print one NDJSON line per finished shard on stdout (for | sae train --data -)' }),
    follow: Flags.boolean({ description: 'with --data -: if the upstream stage dies, wait for its folder to be completed instead of failing' }),
    out: Flags.string({ description: 'output folder for the shuffled shards (scratch goes to its shuffle-work/ until done)', required: true }),
    memory: Flags.string({ description: 'memory budget for the row buffers, e.g. 512MB, 2GB (K/M/G are powers of 1024; Node itself needs ~100MB more)', default: '2GB' }),
    seed: Flags.integer({ description: 'random seed of the permutation (default 0)' }),
    'shard-rows': Flags.integer({ description: 'rows per output shard (default 65536)' }),
    force: Flags.boolean({ description: "replace what a shuffle left in --out (a finished shuffle, shards, manifest, scratch of a shuffle with other settings); other files stay, and another command's folder (a harvest's, a synth's) is refused" }),
    'allow-no-manifest': sharedFlags['allow-no-manifest'],
    quiet: Flags.boolean({ description: 'no progress or summary on stderr (errors still print)' }),
  };

  async run(): Promise<void> {
    const { flags } = await this.parse(Shuffle);
    const memory = parseBytes(flags.memory);
    if (memory === null) throw new UserError(`--memory must be a size such as 512MB or 2GB, got "${flags.memory}"`);
    if (flags['shard-rows'] !== undefined && flags['shard-rows'] < 1) throw new UserError(`--shard-rows must be ≥ 1, got ${flags['shard-rows']}`);
    const t0 = Date.now();
    const progress = new Progress('shuffle', !flags.quiet);
    // Ctrl-C: the shuffle stops at its next safe point and says how to continue; a second one,
    // or one while the pipe is still being read (nothing written yet), exits at once.
    const controller = new AbortController();
    let started = false;
    const onSigint = () => {
      if (!started || controller.signal.aborted) {
        progress.done();
        process.stderr.write('shuffle: interrupted; rerun the same command to continue\n');
        process.exit(130);
      }
      controller.abort();
    };
    process.on('SIGINT', onSigint);
    // testing: pause after this many input files until Ctrl-C comes, so a test can signal without racing
    const pause = process.env.SAE_TEST_SHUFFLE_PAUSE_AFTER_FILES;
    let digest = '';
    let s;
    try {
      // from a pipe: a full shuffle needs every row, so it gathers the announced shards first
      const piped = flags.data === '-' ? await collectAnnounced(readAnnouncements(process.stdin, { follow: flags.follow })) : null;
      started = true;
      s = await shuffleShards({
        data: piped ? piped.dir : flags.data,
        set: piped?.set,
        onShard: async (e, file) => {
          if (!flags.ndjson) return;
          digest ||= metaDigest((await openShards(file)).meta);
          process.stdout.write(announceShard({ shard: file, rows: e.rows, metadata: digest }));
        },
        out: flags.out,
        memory,
        seed: flags.seed,
        shardRows: flags['shard-rows'],
        force: flags.force,
        allowNoManifest: flags['allow-no-manifest'],
        progress,
        signal: controller.signal,
        pauseAfterFiles: pause ? Number(pause) : undefined,
      });
    } catch (err) {
      if (!(err instanceof ShuffleInterrupted)) throw err;
      progress.done();
      // not an error: the state left is one the same command continues from (like harvest's Ctrl-C)
      process.stderr.write(`shuffle: ${err.message}; rerun the same command to continue\n`);
      this.exit(130);
    } finally {
      progress.done();
      process.off('SIGINT', onSigint);
    }
    const secs = (Date.now() - t0) / 1000;
    // like harvest --quiet, which also drops its closing summary line
    if (!flags.quiet) {
      this.info(
        `shuffle: ${s.rows} rows in ${s.shards} shard${s.shards === 1 ? '' : 's'} through ${s.buckets} bucket${s.buckets === 1 ? '' : 's'} ` +
          `(buffer ${formatBytes(s.arenaBytes)}), ${secs.toFixed(1)}s${s.resumed ? ', resumed' : ''}`,
      );
    }
    process.stdout.write(flags.ndjson ? announceEnd(s.shards, s.rows) : s.out + '\n');
  }
}
