import { Flags } from '@oclif/core';
import { SaeCommand } from '../util/command.js';
import { UserError } from '../util/errors.js';
import { PREPROCESSINGS, type Preprocessing } from '../store/preprocess.js';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { ensureOutDir, pathKind } from '../util/outdir.js';
import { SYNTH_DEFAULTS, resolveSynthParams, writeSynth, type Magnitude, type SynthOptions } from '../pipeline/synth.js';
import { refuseOtherWriter } from '../store/outputs.js';
import { lockOutDir, type OutDirLock } from '../util/lock.js';

// Plain string flags parsed in run(): an error thrown inside an oclif flag parser comes back
// wrapped in a multi-line message, and `sae` errors are one line.
const number = (description: string) => Flags.string({ description });

function toNumber(name: string, s: string | undefined): number | undefined {
  if (s === undefined) return undefined;
  const v = Number(s);
  if (s.trim() === '' || !Number.isFinite(v)) throw new UserError(`--${name} must be a number, got "${s}"`);
  return v;
}

export default class Synth extends SaeCommand {
  static override description =
    'Write synthetic activation shards with a known dictionary G (SPEC §11): Zipf-distributed feature firing with a per-sample difficulty, for checking feature recovery offline';

  static override examples = [
    '<%= config.bin %> synth --out data/synth',
    '<%= config.bin %> synth --out data/synth --d 128 --features 1024 --k 16 --rows 262144 --seed 1 --json',
  ];

  static override flags = {
    out: Flags.string({ description: 'output directory (shards, manifest.json, dictionary.safetensors, synth.json)', required: true }),
    d: Flags.integer({ description: `dimension of the samples (default ${SYNTH_DEFAULTS.d})` }),
    features: Flags.integer({ description: `number of true features F_true; may exceed d (default ${SYNTH_DEFAULTS.fTrue})` }),
    k: number(`mean number of active features per sample (default ${SYNTH_DEFAULTS.kTrue})`),
    alpha: number(`Zipf exponent of the firing probabilities (default ${SYNTH_DEFAULTS.alpha})`),
    beta: number(`Zipf bias: p_i ∝ 1/(i+beta)^alpha (default ${SYNTH_DEFAULTS.beta})`),
    'difficulty-sigma': number(`σ of the log-normal per-sample multiplier of all p_i; 0 disables (default ${SYNTH_DEFAULTS.difficultySigma})`),
    magnitude: Flags.string({ description: `distribution of feature magnitudes (default ${SYNTH_DEFAULTS.magnitude})`, options: ['uniform', 'exponential'] }),
    'magnitude-min': number(`lower end of uniform magnitudes (default ${SYNTH_DEFAULTS.magnitudeMin})`),
    'magnitude-max': number(`upper end of uniform magnitudes (default ${SYNTH_DEFAULTS.magnitudeMax})`),
    'magnitude-mean': number(`mean of exponential magnitudes (default ${SYNTH_DEFAULTS.magnitudeMean})`),
    noise: number(`std of Gaussian noise per coordinate (default ${SYNTH_DEFAULTS.noise})`),
    rows: Flags.integer({ description: `number of samples (default ${SYNTH_DEFAULTS.rows})` }),
    seed: Flags.integer({ description: `random seed (default ${SYNTH_DEFAULTS.seed})` }),
    preprocessing: Flags.string({ description: `normalisation applied once before writing (default ${SYNTH_DEFAULTS.preprocessing})`, options: [...PREPROCESSINGS] }),
    'rows-per-shard': Flags.integer({ description: 'rows per Parquet shard (default 65536)' }),
    force: Flags.boolean({ description: 'replace shards already in --out' }),
    json: Flags.boolean({ description: 'print the summary (with the manifest) as JSON on stdout' }),
  };

  async run(): Promise<void> {
    const { flags } = await this.parse(Synth);
    if (flags['rows-per-shard'] !== undefined && flags['rows-per-shard'] < 1) {
      throw new UserError(`--rows-per-shard must be ≥ 1, got ${flags['rows-per-shard']}`);
    }
    // a run that fails (a bad flag value is only found inside writeSynth) removes the folder it created
    const createdOut = (await pathKind(flags.out)) === 'absent';
    const t0 = Date.now();
    let summary;
    let lock: OutDirLock | null = null;
    try {
      const opts: SynthOptions = {
        out: flags.out,
        d: flags.d,
        fTrue: flags.features,
        kTrue: toNumber('k', flags.k),
        alpha: toNumber('alpha', flags.alpha),
        beta: toNumber('beta', flags.beta),
        difficultySigma: toNumber('difficulty-sigma', flags['difficulty-sigma']),
        magnitude: flags.magnitude as Magnitude | undefined,
        magnitudeMin: toNumber('magnitude-min', flags['magnitude-min']),
        magnitudeMax: toNumber('magnitude-max', flags['magnitude-max']),
        magnitudeMean: toNumber('magnitude-mean', flags['magnitude-mean']),
        noise: toNumber('noise', flags.noise),
        rows: flags.rows,
        seed: flags.seed,
        preprocessing: flags.preprocessing as Preprocessing | undefined,
        rowsPerShard: flags['rows-per-shard'],
        overwrite: flags.force,
        overwriteHint: 'add --force to replace them',
      };
      // every flag checked before anything on disk changes
      resolveSynthParams(opts);
      await ensureOutDir(flags.out);
      lock = await lockOutDir(flags.out, 'sae synth');
      // --force replaces only synth's own shards: a harvest's or a shuffle's folder (with its journal) is theirs
      await refuseOtherWriter(flags.out, 'synth');
      summary = await writeSynth(opts);
      await lock.release();
    } catch (err) {
      await lock?.release();
      // rmdir removes the folder only when empty: nothing in it is lost
      if (createdOut) await fs.rmdir(flags.out).catch(() => undefined);
      // Option errors name the option as its flag without dashes; point at the flag.
      if (err instanceof UserError) {
        const m = /^([a-z-]+) must /.exec(err.message);
        if (m && m[1] in Synth.flags) throw new UserError(`--${err.message}`, err.exitCode);
      }
      throw err;
    }
    const s = summary;
    if (flags.json) {
      process.stdout.write(JSON.stringify(s, null, 2) + '\n');
    } else {
      this.info(
        `synth: ${s.rows} rows × d=${s.params.d} from ${s.params.fTrue} features (mean ${s.meanActive.toFixed(2)} active), ` +
          `${s.shards} shard${s.shards === 1 ? '' : 's'}, ${s.params.preprocessing}, ${((Date.now() - t0) / 1000).toFixed(1)}s`,
      );
      process.stdout.write(s.out + '\n');
    }
  }
}
