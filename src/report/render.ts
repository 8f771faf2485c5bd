/**
 * Figures → SVG (Vega-Lite compiled to Vega, rendered headless in Node) → OUT/<id>.svg and one
 * self-contained OUT/report.html: the SVGs inline (no scripts, no network), the plotted data as
 * JSON in a <script type="application/json"> for reuse. Its one way out is a relative link to each
 * `sae features` folder's browser (a local file, never the network).
 */
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import * as vega from 'vega';
import * as vl from 'vega-lite';
import { writeFileAtomic } from '../util/atomic.js';
import { ensureOutDir } from '../util/outdir.js';
import type { FeatureFolderData, RunData } from './data.js';
import { buildFigures, type Figure, type VlSpec } from './figures.js';
import { checkReportOutputs, REPORT_HTML_TAG, tagSvg } from '../store/outputs.js';

export async function renderSvg(spec: VlSpec): Promise<string> {
  const compiled = vl.compile(spec as unknown as vl.TopLevelSpec).spec;
  const view = new vega.View(vega.parse(compiled), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

/** JSON safe inside <script>: no "</script>" or "<!--" can appear. */
const scriptJson = (v: unknown) => JSON.stringify(v).replace(/</g, '\\u003c');

function fmt(v: number | null, digits = 4): string {
  return v === null || !Number.isFinite(v) ? '–' : Number(v.toPrecision(digits)).toString();
}

function runTable(runs: RunData[]): string {
  const head = ['run', 'activation', 'd', 'width', 'steps', 'L0', 'FVU', 'dead %', 'dead window (tokens)', 'Zipf α', 'Zipf β', 'R²', 'loss recovered'];
  const rows = runs.map((r) =>
    [
      r.name,
      r.activations.join(' → '),
      String(r.d),
      String(r.width),
      String(r.steps),
      fmt(r.l0),
      fmt(r.fvu),
      fmt(100 * r.deadFraction, 3),
      String(r.deadWindow),
      fmt(r.fit?.alpha ?? null),
      fmt(r.fit?.beta ?? null, 3),
      fmt(r.fit?.r2 ?? null, 3),
      fmt(r.lossRecovered),
    ]
      .map((c) => `<td>${esc(c)}</td>`)
      .join(''),
  );
  return `<table><thead><tr>${head.map((h) => `<th>${esc(h)}</th>`).join('')}</tr></thead><tbody>${rows.map((r) => `<tr>${r}</tr>`).join('\n')}</tbody></table>`;
}

/**
 * The link from the report in `out` to a features folder's browser: relative (each path segment
 * URI-encoded), so that the report and the folder can be moved together; an absolute file:// URL
 * only where no relative path exists (another drive on Windows).
 */
export function browserHref(out: string, folder: string): string {
  const target = path.resolve(folder, 'index.html');
  const rel = path.relative(path.resolve(out), target);
  if (path.isAbsolute(rel)) return pathToFileURL(target).href;
  return rel.split(path.sep).map(encodeURIComponent).join('/');
}

export interface BrowserLink {
  folder: FeatureFolderData;
  href: string;
}

function browserSection(links: BrowserLink[]): string {
  if (!links.length) return '';
  const items = links.map(({ folder: f, href }) => {
    const m = f.manifest;
    const saes = f.saes.map((s) => `${s.label} (${s.activation}, ${s.F} features)`).join(', ');
    return `<li><a class="feature-browser" href="${esc(href)}">${esc(f.name)}</a>: ${esc(saes)}; ${esc(`${m.tokens} tokens of ${m.corpus}, model ${m.model}, hook ${m.hook}`)} <span class="path">(${esc(path.resolve(f.dir))})</span></li>`;
  });
  return `<section id="feature-browser">
<h2>Feature browser</h2>
<p>Folders written by <code>sae features</code>: each link opens its browser (top contexts, activation bands and logit effects per feature). The links are relative to this report: move the two folders together.</p>
<ul>
${items.join('\n')}
</ul>
</section>`;
}

export function reportHtml(runs: RunData[], figures: { figure: Figure; svg: string }[], notes: string[], generated = new Date(), browsers: BrowserLink[] = []): string {
  const data = {
    generated: generated.toISOString(),
    // per-run values; the plotted points (densities thinned to ≤ 400 ranks, steps to ≤ 300) are in each figure's spec
    runs: runs.map(({ density: _d, metrics: _m, ...rest }) => rest),
    features: browsers.map(({ folder: f, href }) => ({ name: f.name, dir: f.dir, href, manifest: f.manifest })),
    figures: figures.map(({ figure }) => ({ id: figure.id, title: figure.title, points: figure.points, spec: figure.spec })),
    notes,
  };
  const body = figures
    .map(
      ({ figure, svg }) =>
        `<figure id="fig-${esc(figure.id)}" data-points="${figure.points}">\n<h2>${esc(figure.title)}</h2>\n${svg}\n<figcaption>${esc(figure.caption)} <a href="${esc(figure.id)}.svg">${esc(figure.id)}.svg</a></figcaption>\n</figure>`,
    )
    .join('\n');
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
${REPORT_HTML_TAG}
<title>SAE report: ${esc([...runs.map((r) => r.name), ...browsers.map((b) => b.folder.name)].join(', '))}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1100px; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin-bottom: 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
figure { margin: 2em 0; } figcaption { font-size: 0.85em; color: #555; max-width: 60em; }
.notes { color: #7a4b00; }
.path { color: #777; font-size: 0.85em; }
</style>
</head>
<body>
<h1>SAE report</h1>
<p>${esc(sources(runs, browsers))}. Generated ${esc(data.generated)} by <code>sae report</code>.</p>
${runs.length ? runTable(runs) : ''}
${notes.length ? `<ul class="notes">${notes.map((n) => `<li>${esc(n)}</li>`).join('')}</ul>` : ''}
${browserSection(browsers)}
${body}
<script type="application/json" id="report-data">${scriptJson(data)}</script>
</body>
</html>
`;
}

function sources(runs: RunData[], browsers: BrowserLink[]): string {
  const parts: string[] = [];
  if (runs.length) parts.push(`${runs.length} run${runs.length === 1 ? '' : 's'}: ${runs.map((r) => r.dir).join(', ')}`);
  if (browsers.length) parts.push(`${browsers.length} sae features folder${browsers.length === 1 ? '' : 's'}: ${browsers.map((b) => b.folder.dir).join(', ')}`);
  return parts.join('; ');
}

export interface ReportResult {
  /** files written, report.html last */
  files: string[];
  figures: { id: string; points: number }[];
  notes: string[];
}

/**
 * Render every figure the runs have data for into `out`: <id>.svg each, then report.html. Files of
 * those names that another program wrote are refused before anything is written, unless `force`.
 */
export async function writeReport(runs: RunData[], out: string, opts: { force?: boolean; features?: FeatureFolderData[] } = {}): Promise<ReportResult> {
  await ensureOutDir(out);
  const folders = opts.features ?? [];
  const { figures, notes } = buildFigures(runs, folders);
  await checkReportOutputs(out, [...figures.map((f) => `${f.id}.svg`), 'report.html'], opts.force ?? false);
  const rendered: { figure: Figure; svg: string }[] = [];
  const files: string[] = [];
  for (const figure of figures) {
    const svg = await renderSvg(figure.spec);
    const file = path.join(out, `${figure.id}.svg`);
    await writeFileAtomic(file, tagSvg(svg));
    files.push(file);
    rendered.push({ figure, svg });
  }
  const html = path.join(out, 'report.html');
  await writeFileAtomic(html, reportHtml(runs, rendered, notes, new Date(), folders.map((folder) => ({ folder, href: browserHref(out, folder.dir) }))));
  files.push(html);
  return { files, figures: figures.map((f) => ({ id: f.id, points: f.points })), notes };
}
