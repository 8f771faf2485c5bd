/**
 * Which files in a report folder `sae report` may replace: only its own. Every file it writes
 * carries a generator tag (a <meta> in report.html, an attribute on each SVG's root element), so a
 * rerun into its own folder works while a user's report.html or chart.svg there is refused unless
 * --force.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { UserError } from '../util/errors.js';
import { describeFsError } from '../util/atomic.js';

export const GENERATOR = 'sae report';
export const HTML_TAG = `<meta name="generator" content="${GENERATOR}">`;
const SVG_ATTR = `data-generator="${GENERATOR}"`;

/** The SVG as written to its own file: the root element carries the generator attribute. */
export function tagSvg(svg: string): string {
  return svg.replace(/^<svg\b/, `<svg ${SVG_ATTR}`);
}

/** Is `head` (the start of a file) one of the report's own outputs of that name's kind? */
export function isReportOutput(name: string, head: string): boolean {
  if (name.endsWith('.html')) {
    const end = head.indexOf('</head>');
    return (end < 0 ? head : head.slice(0, end)).includes(HTML_TAG);
  }
  const root = head.match(/^<svg\b[^>]*>/);
  return root !== null && root[0].includes(SVG_ATTR);
}

async function readHead(file: string, bytes = 8192): Promise<string | null> {
  let fh: fs.FileHandle;
  try {
    fh = await fs.open(file, 'r');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw describeFsError(e, `reading ${file}`);
  }
  try {
    if ((await fh.stat()).isDirectory()) throw new UserError(`--out ${path.dirname(file)}: ${path.basename(file)} is a directory, where the report writes a file; choose another --out`);
    const buf = Buffer.alloc(bytes);
    const { bytesRead } = await fh.read(buf, 0, bytes, 0);
    return buf.subarray(0, bytesRead).toString('utf8');
  } finally {
    await fh.close();
  }
}

/**
 * Refuse (one line) when any of `names` exists in `out` and was not written by `sae report`,
 * unless `force`. A folder in the way is refused even with --force: it is never ours to replace.
 */
export async function checkReportOutputs(out: string, names: string[], force: boolean): Promise<void> {
  const foreign: string[] = [];
  for (const name of names) {
    const head = await readHead(path.join(out, name));
    if (head !== null && !isReportOutput(name, head)) foreign.push(name);
  }
  if (!foreign.length || force) return;
  const what = foreign.length === 1 ? `${foreign[0]} exists there and was not written` : `${foreign.join(', ')} exist there and were not written`;
  throw new UserError(`--out ${out}: ${what} by sae report; choose another --out, or add --force to replace ${foreign.length === 1 ? 'it' : 'them'}`);
}
