import { Args, Flags } from '@oclif/core';
import { SaeCommand } from '../util/command.js';
import { pushSae } from '../pipeline/push.js';

export default class Push extends SaeCommand {
  static override description =
    "Publish a run's SAE on the Hugging Face Hub in one commit: its SAELens export in a folder named after the hook (SAE.from_pretrained(\"OWNER/REPO\", HOOK)), our checkpoint under sae/, the --eval / --splice results, and a model card (library_name: saelens). Needs HF_TOKEN with write access; HF_ENDPOINT picks the Hub. Prints the commit URL.";

  static override examples = [
    '<%= config.bin %> push runs/topk me/gpt2-topk-sae --eval topk-eval.json --splice topk-splice.json',
    '<%= config.bin %> export --checkpoint runs/mc --data shards/ --out runs/mc-jumprelu && <%= config.bin %> push runs/mc me/gpt2-mc-sae --exported runs/mc-jumprelu',
    '<%= config.bin %> push runs/topk me/gpt2-topk-sae --dry-run',
  ];

  static override args = {
    run: Args.string({ description: 'run directory (its newest checkpoint) or checkpoint folder', required: true }),
    repo: Args.string({ description: 'the Hub model repo, OWNER/REPO (created when missing)', required: true }),
  };

  static override flags = {
    exported: Flags.string({ description: 'the JumpReLU export of the run (sae export, --format sae or saelens): required for mutual, feature and batchtopk, whose batch selection SAELens runs through calibrated thresholds' }),
    eval: Flags.string({ description: 'a `sae eval` result (JSON) to upload and quote in the model card (L0, FVU)' }),
    splice: Flags.string({ description: 'a `sae splice-eval --json` result to upload and quote in the model card (loss recovered)' }),
    private: Flags.boolean({ description: 'create the repo private (an existing repo keeps its visibility)' }),
    revision: Flags.string({ description: 'branch to commit to, created from main when missing', default: 'main' }),
    'dry-run': Flags.boolean({ description: 'write the folder that would be uploaded, print its path, upload nothing (no token needed)' }),
  };

  async run(): Promise<void> {
    const { args, flags } = await this.parse(Push);
    const r = await pushSae({
      run: args.run,
      repo: args.repo,
      exported: flags.exported,
      evalFile: flags.eval,
      spliceFile: flags.splice,
      private: flags.private,
      branch: flags.revision,
      dryRun: flags['dry-run'],
      onProgress: (m) => this.info(m),
    });
    if (!r.commitUrl) {
      this.info(`dry run: ${r.files.length} files that sae push would upload (SAELens folder ${r.saeId}/); nothing uploaded`);
      process.stdout.write(r.folder + '\n');
      return;
    }
    this.info(`pushed ${r.files.length} files; SAELens: SAE.from_pretrained("${args.repo}", "${r.saeId}"); sae: --checkpoint hf:${args.repo}/${r.saeId}`);
    process.stdout.write(r.commitUrl + '\n');
  }
}
