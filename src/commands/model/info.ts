import { Args, Flags } from '@oclif/core';
import { SaeCommand } from '../../util/command.js';
import { loadModel, modelFlags } from '../../lm/load.js';

export default class ModelInfo extends SaeCommand {
  static override description = 'Describe a host LM (a Hugging Face model folder or Hub id): architecture, layers, d_model, vocabulary, positions and its hook names';

  static override examples = ['<%= config.bin %> model info fixtures/hf-tiny/gpt2', '<%= config.bin %> model info gpt2 --json'];

  static override args = {
    model: Args.string({ description: 'model folder, or Hub id (gpt2, EleutherAI/pythia-70m-deduped)', required: true }),
  };

  static override flags = {
    ...modelFlags,
    json: Flags.boolean({ description: 'print the description as JSON' }),
  };

  async run(): Promise<void> {
    const { args, flags } = await this.parse(ModelInfo);
    const { model, dir } = await loadModel(args.model, flags);
    const c = model.cfg;
    const info = {
      model: args.model,
      dir,
      family: c.family,
      layers: c.nLayers,
      dModel: c.dModel,
      heads: c.nHeads,
      headDim: c.headDim,
      dMlp: c.dMlp,
      vocab: c.vocab,
      positions: c.nPositions,
      positional: c.rotaryDims > 0 ? `rotary (${c.rotaryDims} of ${c.headDim} dims, base ${c.rotaryBase})` : 'learned',
      residual: c.parallelResidual ? 'parallel' : 'sequential',
      gelu: c.gelu === 'tanh' ? 'gelu_new (tanh)' : 'gelu (erf)',
      tiedUnembed: c.tiedUnembed,
      bosTokenId: c.bosTokenId,
      eosTokenId: c.eosTokenId,
      hooks: model.hookNames(),
    };
    if (flags.json) {
      process.stdout.write(JSON.stringify(info) + '\n');
      return;
    }
    const lines = [
      `${info.family}: ${info.layers} layers, d_model ${info.dModel}, ${info.heads} heads × ${info.headDim}, MLP ${info.dMlp}`,
      `vocabulary ${info.vocab}, ${info.positions} positions (${info.positional}), ${info.residual} residual, ${info.gelu}, unembedding ${info.tiedUnembed ? 'tied' : 'untied'}`,
      `BOS ${info.bosTokenId}, EOS ${info.eosTokenId}; folder ${dir}`,
      'hooks:',
      ...info.hooks.map((h) => `  ${h}`),
    ];
    process.stdout.write(lines.join('\n') + '\n');
  }
}
