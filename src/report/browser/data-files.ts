/**
 * The feature browser's data files (src/eval/feature-data.ts): each is one call of the page's
 * global `saeBrowser` with JSON literals as arguments, loaded by a <script> element because
 * browsers refuse fetch() on file:// pages. `readDataScript` reads one back without running it.
 */
import type { FeatureIndex, FeaturePage, TextsData, VocabData } from '../../eval/feature-data.js';

/**
 * JSON that is also a safe JavaScript literal anywhere a script can appear: `<` is escaped so no
 * token text can close an inline <script> or open an HTML comment in it, and U+2028/2029 are
 * escaped because engines before ES2019 read them as line ends inside string literals.
 */
export function scriptJson(value: unknown): string {
  return JSON.stringify(value)
    .replace(/</g, '\\u003c')
    .replace(/\u2028/g, '\\u2028')
    .replace(/\u2029/g, '\\u2029');
}

const call = (fn: string, args: unknown[]) => `saeBrowser.${fn}(${args.map(scriptJson).join(',')});\n`;

export const vocabScript = (v: VocabData): string => call('vocab', [v]);
export const textsScript = (t: TextsData): string => call('texts', [t]);
export const indexScript = (label: string, idx: FeatureIndex): string => call('index', [label, idx]);
export const featureScript = (label: string, page: FeaturePage): string => call('feature', [label, page.id, page]);

/** Where each data file lies, relative to the features folder (labels are [A-Za-z0-9._-]+). */
export const dataPaths = {
  vocab: 'data/vocab.js',
  texts: 'data/texts.js',
  index: (label: string): string => `data/${label}/index.js`,
  feature: (label: string, id: number): string => `data/${label}/f/${id}.js`,
} as const;

const DATA_SCRIPT = /^\s*saeBrowser\.(vocab|texts|index|feature)\(([\s\S]*)\)\s*;?\s*$/;

/**
 * The arguments of one data file, parsed as JSON (the file is never executed): its arguments are
 * JSON literals separated by commas, so `[` + arguments + `]` is one JSON array.
 */
export function readDataScript(text: string): unknown[] {
  const m = DATA_SCRIPT.exec(text);
  if (!m) throw new Error('not a feature-browser data file: expected saeBrowser.<vocab|texts|index|feature>(…);');
  const args: unknown = JSON.parse(`[${m[2]}]`);
  return args as unknown[];
}
