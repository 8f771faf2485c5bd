import { Args, Flags } from '@oclif/core';
import { SaeCommand } from '../util/command.js';
import { UserError } from '../util/errors.js';
import { Progress, fmtTokens } from '../util/progress.js';
import { sharedFlags } from '../cli/flags.js';
import { loadModel } from '../lm/load.js';
import { loadTokenizer } from '../lm/tokenizer.js';
import { lmKernelFactory, type KernelName } from '../kernels/index.js';
import { parsePrecision } from '../kernels/bf16.js';
import { DEFAULT_SCALE_ROWS, PREPROCESSINGS, type Preprocessing } from '../store/preprocess.js';
import { announceEnd, announceShard, metaDigest } from '../stream/pipe.js';
import { openShards } from '../store/shard-set.js';
import { openCorpus, type CorpusSpec } from '../corpus/corpus.js';
import { harvest, type HarvestConfig } from '../pipeline/harvest.js';

/** "1 shard", "3 shards": counts in messages read as English. */
const plural = (n: number, noun: string) => `${n} ${noun}${n === 1 ? '' : 's'}`;

/** The corpus the arguments and flags describe: files/globs/-, or --hub with --name/--split/--corpus-revision. */
function corpusSpec(inputs: string[], f: { hub?: string; name?: string; split?: string; 'corpus-revision'?: string; 'text-field'?: string; blocks?: boolean }): CorpusSpec {
  if (f.hub && inputs.length) throw new UserError('give either corpus files or --hub, not both');
  if (!f.hub && (f.name !== undefined || f.split !== undefined || f['corpus-revision'] !== undefined)) throw new UserError('--name, --split and --corpus-revision apply to a --hub dataset');
  const spec: CorpusSpec = { textField: f['text-field'], txtMode: f.blocks ? 'blocks' : 'file' };
  if (f.hub) spec.hub = { id: f.hub, name: f.name, split: f.split, revision: f['corpus-revision'] };
  else if (inputs.length) spec.inputs = inputs;
  return spec;
}

export default class Harvest extends SaeCommand {
  static override description =
    'Run text through the host LM and write the activations at one or more hooks to Parquet shards (SPEC §1, §10): contexts of --ctx tokens with BOS first, preprocessing applied once, resumable by rerunning the same command';

  static override examples = [
    '<%= config.bin %> harvest --model fixtures/hf-tiny/gpt2 --hook blocks.1.hook_resid_pre --out acts/ --max-tokens 100000',
    '<%= config.bin %> harvest docs/*.jsonl --text-field body --model gpt2 --hook blocks.6.hook_resid_pre --out acts/',
    '<%= config.bin %> harvest --hub HuggingFaceFW/fineweb --name sample-10BT --split train --model gpt2 --out acts/ --max-tokens 10000000',
    '<%= config.bin %> harvest --model gpt2 --out acts/ --ndjson | <%= config.bin %> train --data - --out runs/mc --activation mutual',
  ];

  static override strict = false;

  static override args = {
    corpus: Args.string({ description: 'corpus files, folders or globs (.txt, .jsonl, .parquet), or - for stdin; default: the embedded Brown corpus' }),
  };

  static override flags = {
    out: Flags.string({ description: 'output folder (one shard set; a subfolder per hook when several)', required: true }),
    model: Flags.string({ description: 'host LM: a Hugging Face model folder or Hub id', default: 'gpt2' }),
    revision: Flags.string({ description: 'Hub revision of the model (branch, tag such as step143000, or commit)' }),
    hook: Flags.string({ description: 'hook to harvest, repeatable (several from one forward pass)', multiple: true, default: ['blocks.6.hook_resid_pre'] }),
    ctx: Flags.integer({ description: 'tokens per context, BOS first', default: 64 }),
    pad: Flags.boolean({ description: 'one document per context, padded (padding is not harvested) instead of documents joined with EOS' }),
    'skip-bos': Flags.boolean({ description: 'leave position 0 (BOS) out of the shards: its norm is an outlier' }),
    'max-tokens': Flags.integer({ description: 'stop after this many harvested tokens (rows)' }),
    'shard-rows': Flags.integer({ description: 'rows per shard file', default: 65536 }),
    dtype: Flags.string({ description: 'stored activation type, widened to float32 on read', options: ['float32', 'float16', 'bfloat16'], default: 'float32' }),
    preprocessing: Flags.string({ description: 'normalisation applied once before writing (SPEC §3); dataset_scale multiplies every row by one factor per hook, s = sqrt(d)/mean‖x‖ (SAELens expected_average_only_in), recorded in each shard', options: [...PREPROCESSINGS], default: 'center_unit_norm' }),
    'scale-rows': Flags.integer({
      description: `with --preprocessing dataset_scale: estimate s over the first N raw rows (default ${DEFAULT_SCALE_ROWS}), or all the rows when the harvest has fewer. SAELens averages over ~1000 batches; the mean norm settles far sooner, and these rows wait in memory (N·d·4 bytes per hook) since no shard is written before s is known. A resume reuses the s its shards record`,
    }),
    batch: Flags.integer({ description: 'contexts per forward pass', default: 32 }),
    hub: Flags.string({ description: 'corpus: a Hub dataset id (e.g. HuggingFaceFW/fineweb), streamed with range requests' }),
    name: Flags.string({ description: 'corpus: the Hub dataset config (e.g. sample-10BT)' }),
    split: Flags.string({ description: 'corpus: the Hub dataset split (default train)' }),
    'corpus-revision': Flags.string({ description: 'corpus: the Hub dataset revision (default main, pinned to its commit)' }),
    'text-field': Flags.string({ description: 'corpus: JSONL field / Parquet column holding the text (default text)' }),
    blocks: Flags.boolean({ description: 'corpus: one document per blank-line-separated block of a .txt file (default: per file)' }),
    ndjson: Flags.boolean({ description: 'print one NDJSON line per finished shard on stdout (for | sae train --data - or | sae shuffle --data -)' }),
    force: Flags.boolean({ description: 'replace another (or a finished) harvest in --out; only files a harvest writes are removed' }),
    quiet: Flags.boolean({ description: 'no progress on stderr' }),
    kernels: sharedFlags.kernels,
    precision: sharedFlags.precision,
  };

  async run(): Promise<void> {
    const { argv, flags } = await this.parse(Harvest);
    const inputs = argv as string[];
    if (flags.ctx < 2) throw new UserError(`--ctx must be at least 2, got ${flags.ctx}`);
    if (flags['shard-rows'] < 1) throw new UserError('--shard-rows must be ≥ 1');
    if (flags.batch < 1) throw new UserError('--batch must be ≥ 1');
    if (flags['max-tokens'] !== undefined && flags['max-tokens'] < 1) throw new UserError('--max-tokens must be ≥ 1');
    const datasetScale = flags.preprocessing === 'dataset_scale';
    if (flags['scale-rows'] !== undefined && !datasetScale) throw new UserError('--scale-rows applies to --preprocessing dataset_scale');
    if (flags['scale-rows'] !== undefined && flags['scale-rows'] < 1) throw new UserError('--scale-rows must be ≥ 1');
    const progress = new Progress('harvest', !flags.quiet);
    const spec = corpusSpec(inputs, flags);
    // the corpus first: a bad one fails before any model loads
    const corpus = await openCorpus(spec);
    const precision = parsePrecision(flags.precision);
    const { model, dir, resolved } = await loadModel(flags.model, { revision: flags.revision, kernels: lmKernelFactory(flags.kernels as KernelName, precision), onProgress: (m) => progress.line(m) });
    const tokenizer = await loadTokenizer(dir);
    const config: HarvestConfig = {
      model: resolved.repo ?? flags.model,
      revision: resolved.commit ?? resolved.revision ?? 'local',
      hooks: flags.hook,
      ctx: flags.ctx,
      mode: flags.pad ? 'pad' : 'concat',
      skipBos: flags['skip-bos'],
      maxTokens: flags['max-tokens'] ?? null,
      shardRows: flags['shard-rows'],
      dtype: flags.dtype as HarvestConfig['dtype'],
      preprocessing: flags.preprocessing as Preprocessing,
      ...(datasetScale ? { scaleRows: flags['scale-rows'] ?? DEFAULT_SCALE_ROWS } : {}),
      corpus: corpus.describe(),
      tokenizer: tokenizer.digest,
      batch: flags.batch,
      precision,
    };
    const controller = new AbortController();
    const onSigint = () => {
      if (controller.signal.aborted) process.exit(130);
      progress.line('interrupt: finishing the batch in flight; rerun the same command to continue');
      controller.abort();
    };
    process.on('SIGINT', onSigint);
    const t0 = Date.now();
    const digests = new Map<string, string>();
    // Tests simulate `kill -9` at a named moment with this: once the journal records this many
    // shards, the process dies as a kill would leave it (no cleanup, no end line).
    const killAfterShards = Number(process.env.SAE_TEST_KILL_AFTER_SHARDS ?? NaN);
    try {
      const s = await harvest({
        out: flags.out,
        config,
        model,
        tokenizer,
        corpus,
        force: flags.force,
        signal: controller.signal,
        onShard: async (e) => {
          if (!flags.ndjson) return;
          if (!digests.has(e.hook)) digests.set(e.hook, metaDigest((await openShards(e.shard)).meta));
          process.stdout.write(announceShard({ shard: e.shard, rows: e.rows, metadata: digests.get(e.hook)! }));
        },
        onProgress: (p) => {
          if (p.shards >= killAfterShards) process.kill(process.pid, 'SIGKILL');
          const counts = `${fmtTokens(p.rows)} tokens, ${p.contexts} contexts, ${plural(p.shards, 'shard')}`;
          // the live line on a terminal: a bar when the length is known
          if (config.maxTokens) progress.tick(p.rows, config.maxTokens, plural(p.shards, 'shard'));
          else progress.status(counts);
          // and a line every few seconds, the only sign of life where stderr is a log or a pipe
          progress.report(() => {
            const rate = p.rows / Math.max((Date.now() - t0) / 1000, 1e-3);
            const eta = config.maxTokens ? ` ETA ${Math.max(0, (config.maxTokens - p.rows) / Math.max(rate, 1e-9)).toFixed(0)}s` : '';
            return `${counts}, ${rate.toFixed(0)} tok/s${eta}`;
          });
        },
      });
      progress.done();
      const st = corpus.stats();
      if (st.skippedEmpty || st.skippedInvalidUtf8) progress.line(`skipped ${st.skippedEmpty} empty and ${st.skippedInvalidUtf8} invalid UTF-8 documents`);
      if (!s.complete) {
        progress.line(`interrupted after ${plural(s.rows, 'row')} in ${plural(s.shards, 'complete shard')}; rerun the same command to continue`);
        this.exit(130);
      }
      progress.line(`harvested ${plural(s.rows, 'token')} at ${config.hooks.join(', ')} into ${plural(s.shards, 'shard')} in ${((Date.now() - t0) / 1000).toFixed(1)}s`);
      // the end line counts every shard line printed: one set per hook
      if (flags.ndjson) process.stdout.write(announceEnd(s.shards * config.hooks.length, s.rows * config.hooks.length));
      else process.stdout.write(Object.values(s.dirs).join('\n') + '\n');
    } finally {
      process.off('SIGINT', onSigint);
    }
  }
}
