// Library entry: every stage is usable without the CLI.
export * from './kernels/types.js';
export { createReferenceKernels } from './kernels/reference.js';
export { kernelFactory, lmKernelFactory, type KernelName } from './kernels/index.js';
// precision (docs/precision.md) is chosen by the kernels: kernelFactory / lmKernelFactory(name, precision)
export { PRECISIONS, isPrecision, parsePrecision, type Precision } from './kernels/bf16.js';
export * from './kernels/selection.js';
export * from './sae/zipf.js';
export * from './sae/capacities.js';
export { FeatureStats } from './sae/density.js';
export { lossAndGrad, nfmLosses, allocWorkspace, type ObjectiveSpec, type LossTerms, type AuxLossSpec } from './sae/objective.js';
export { resolveConfig, resolveWidth, defaultLr, learningRate, DEFAULTS, ACTIVATIONS, type TrainConfig, type Activation, type PhaseConfig } from './sae/config.js';
export { Trainer, type StepReport, type TrainerSnapshot } from './sae/trainer.js';
export { train, type TrainOptions, type TrainSummary } from './pipeline/train/train.js';
export { openSae, saeFromCheckpoint, type Sae } from './sae/sae.js';
export { saveCheckpoint, loadCheckpoint, type LoadedCheckpoint, type SaeCfgJson } from './sae/checkpoint.js';
export { selectionForCheckpoint, calibrateThresholds } from './sae/inference.js';
export { allocParams } from './kernels/params.js';
export { initParams } from './sae/params.js';
export * from './store/preprocess.js';
export * from './store/shard-format.js';
export * from './store/shard-writer.js';
export { SHARD_DTYPES, type ShardDtype } from './store/dtype.js';
export { openShards, type ShardSet } from './store/shard-set.js';
export { checkCompatible } from './store/compat.js';
export { BatchStream, type DataPosition } from './stream/batch-stream.js';
export * from './pipeline/synth.js';
export { featureRecovery } from './eval/recovery.js';
export { evaluateSae, type EvalResult } from './eval/evaluate.js';
export { Rng } from './util/rng.js';
export { UserError } from './util/errors.js';
export { readSafetensors, writeSafetensors } from './util/safetensors.js';
// looking inside an SAE (issue 20): codes over a stream of rows, per-feature evidence, the browser's files
export { CodeStream, ENCODE_MODES, modeSelection, type EncodeMode, type EncodedBlock, type RowOrigin } from './eval/encode.js';
export { FeaturePass } from './eval/feature-pass.js';
export { logitEffects, type LogitEffects } from './eval/logit-effects.js';
export * from './eval/feature-data.js';
export { features, type FeaturesOptions, type FeaturesResult } from './pipeline/features.js';
export { readDataScript } from './report/browser/page.js';
