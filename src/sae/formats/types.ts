/**
 * SAEs in other libraries' formats (issue 19): SAELens, sparsify, dictionary_learning. Each format
 * is one module with the same surface, so that `openSae` (../sae.ts) reads any of them and
 * `sae export --format` writes the ones that can express an SAE. A loader turns a foreign folder
 * into our in-memory checkpoint: parameters in our layout (src/kernels/types.ts: WencT F×d, bEnc F,
 * Wdec F×d, bDec d) and a cfg in our terms (architecture relu | topk | jumprelu, our
 * preprocessing); everything downstream then treats it like one of ours.
 */
import type { SaeParams } from '../../kernels/types.js';
import type { Preprocessing } from '../../store/preprocess.js';
import type { Precision } from '../../kernels/bf16.js';
import type { LoadedCheckpoint } from '../checkpoint.js';

export type SaeFormatName = 'sae' | 'saelens' | 'sparsify' | 'dictionary_learning';

/** A folder read once for detection: file names, each safetensors file's tensor shapes (headers only), its JSON files. */
export interface FolderProbe {
  dir: string;
  /** the names of the folder's regular files */
  files: string[];
  /** safetensors file name → tensor name → { dtype, shape } (from the header; no data read) */
  tensors: Record<string, Record<string, { dtype: string; shape: number[] }>>;
  /** JSON file name → parsed value (files that do not parse are absent) */
  json: Record<string, unknown>;
}

/** An SAE as an export writes it: what every format needs, in our terms. */
export interface ExportSource {
  params: SaeParams;
  /** after calibration: batch selections (mutual, feature, batchtopk) arrive here as jumprelu */
  architecture: 'relu' | 'topk' | 'jumprelu';
  /** topk's k */
  k?: number;
  /** jumprelu's per-feature thresholds θ_j (fires where z'_j > θ_j) */
  threshold?: Float32Array;
  preprocessing: Preprocessing;
  /** dataset_scale's factor, x' = x · scale */
  scale?: number;
  hook: string;
  model: string;
  /** tokens per context in training, when known */
  contextSize?: number;
  /** whether training contexts began with BOS, when known */
  prependBos?: boolean;
  /** the corpus the activations came from, when known */
  datasetPath?: string;
  /** per-feature firing density over the training or calibration tokens, when known (SAELens' sparsity.safetensors) */
  density?: Float32Array;
  trainedPrecision?: Precision;
}

export interface SaeFormat {
  name: Exclude<SaeFormatName, 'sae'>;
  /** true when the folder is this format, told by tensor keys and config fields, never by file names alone */
  detect(probe: FolderProbe): boolean;
  /**
   * The folder as our in-memory checkpoint. cfg.hook_name / cfg.model_name are '' where the
   * foreign config does not say them. Anything malformed (missing, extra or misshapen tensors, an
   * unknown architecture, a cfg contradicting the tensors, NaN/Inf) is a one-line UserError.
   */
  load(probe: FolderProbe): Promise<LoadedCheckpoint>;
  /**
   * Write the folder `out` atomically (filled under a temporary name, renamed when complete);
   * a one-line UserError, before anything is written, for an SAE the format cannot express.
   */
  write?(src: ExportSource, out: string): Promise<void>;
}
