import { UserError } from '../util/errors.js';
import type { LmConfig } from './config.js';

/**
 * Hook sites (SPEC §2), named as TransformerLens names them. Each has a place in the forward
 * (`order`), so a run can stop after the last site it needs, and a shape: [B, T, d] for the
 * residual-stream sites, [B, H, T, T] for attention patterns (capture only).
 */
export type HookKind = 'embed' | 'pos_embed' | 'resid_pre' | 'pattern' | 'attn_out' | 'resid_mid' | 'mlp_out' | 'resid_post' | 'normalized';

export interface HookSite {
  name: string;
  kind: HookKind;
  /** block index, −1 before the first block, nLayers for ln_final */
  layer: number;
  /** position in the forward: sites with a larger order are computed later */
  order: number;
}

const IN_BLOCK: HookKind[] = ['resid_pre', 'pattern', 'attn_out', 'resid_mid', 'mlp_out', 'resid_post'];

function site(name: string, kind: HookKind, layer: number): HookSite {
  const within = kind === 'embed' ? 0 : kind === 'pos_embed' ? 1 : kind === 'normalized' ? 0 : IN_BLOCK.indexOf(kind);
  return { name, kind, layer, order: (layer + 1) * 10 + within };
}

/** Every hook the model has, in forward order. */
export function hookNames(cfg: LmConfig): string[] {
  const names = ['hook_embed'];
  if (cfg.family === 'gpt2') names.push('hook_pos_embed');
  for (let L = 0; L < cfg.nLayers; L++) {
    names.push(`blocks.${L}.hook_resid_pre`, `blocks.${L}.attn.hook_pattern`, `blocks.${L}.hook_attn_out`);
    if (!cfg.parallelResidual) names.push(`blocks.${L}.hook_resid_mid`);
    names.push(`blocks.${L}.hook_mlp_out`, `blocks.${L}.hook_resid_post`);
  }
  names.push('ln_final.hook_normalized');
  return names;
}

/** A hook this model has, for hints: the middle layer's residual stream, where SAEs are usually trained. */
export function exampleHook(cfg: LmConfig): string {
  return `blocks.${Math.floor(cfg.nLayers / 2)}.hook_resid_pre`;
}

/** Parse and check a hook name against the model; one-line errors say what is wrong. */
export function parseHook(name: string, cfg: LmConfig): HookSite {
  if (name === 'hook_embed') return site(name, 'embed', -1);
  if (name === 'hook_pos_embed') {
    if (cfg.family !== 'gpt2') throw new UserError(`hook ${name}: ${cfg.family} has no position embedding (it uses rotary)`);
    return site(name, 'pos_embed', -1);
  }
  if (name === 'ln_final.hook_normalized') return site(name, 'normalized', cfg.nLayers);
  const m = /^blocks\.(\d+)\.(hook_resid_pre|hook_resid_mid|hook_resid_post|hook_attn_out|hook_mlp_out|attn\.hook_pattern)$/.exec(name);
  if (!m) throw new UserError(`unknown hook "${name}" (e.g. ${exampleHook(cfg)}; \`sae model info\` lists them)`);
  const layer = Number(m[1]);
  if (layer >= cfg.nLayers) throw new UserError(`hook ${name}: layer ${layer} is out of range (the model has ${cfg.nLayers} blocks, 0..${cfg.nLayers - 1}; e.g. ${exampleHook(cfg)})`);
  const kind = m[2] === 'attn.hook_pattern' ? 'pattern' : (m[2].slice(5) as HookKind);
  if (kind === 'resid_mid' && cfg.parallelResidual) throw new UserError(`hook ${name}: a parallel-residual model has no resid_mid (attention and MLP read the same input)`);
  return site(name, kind, layer);
}
