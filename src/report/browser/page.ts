/**
 * The feature browser (issue 20): the one static `index.html` of a `sae features` folder. It carries
 * its CSS and script inline and the manifest as JSON, and reads everything else from the folder's
 * data/*.js files through <script> elements (./data-files.ts), so it works from file:// and from
 * any static host, with no server and no network.
 *
 * Views, each with a URL hash so it can be linked and the back button walks through them:
 *   #list=<label>           the feature list of one SAE (also the default)
 *   #feature=<label>/<id>   one feature's page
 *   #texts=<n>              the per-token view of text n
 *
 * Stable element ids and classes (the tests and scripts target these):
 *   #error                     one visible line when a data file fails to load (hidden otherwise)
 *   #meta                      model · hook · tokens line in the header
 *   #tab-list, #tab-texts      the two tabs (aria-current on the one shown)
 *   #list-view                 the list: #sae-select (inside #sae-pick, hidden with one SAE),
 *                              #sae-info, #search, #match-count ("300 features" / "3 of 300 match"),
 *                              #feature-list (th[data-sort=id|density|maxActivation|zipfRank|shared]
 *                              with aria-sort; tbody tr[data-id]), #prev, #next, #page-info
 *   #feature-page              one feature: .summary (dl), .examples.top (the top activations) of
 *                              .example (p[data-context][data-position]: .val, then .tok spans),
 *                              .band (a quantile, highest first: h4 .range, .examples),
 *                              .histogram svg (one rect per bin), table.logits
 *   .tok                       a token in an example: data-act (the activation), title (its value,
 *                              3 digits), background rgba alpha = act / feature max (none at 0);
 *                              .tok.at is the activating token
 *   .tokname                   a token shown alone (spaces as ·, newline as ↵)
 *   #texts-view                the per-token view: #text-select, #token-flow of button.ttok[data-i]
 *                              (class kind-<kind>; .ttext, then .count[data-label] per SAE),
 *                              #token-features with .token-feature-list[data-label] > ol >
 *                              li[data-id] > a[href="#feature=<label>/<id>"], .act
 */
import { FEATURES_SCHEMA, TOKEN_KINDS, type FeaturesManifest } from '../../eval/feature-data.js';
import { CLIENT_CORE } from './client-core.js';
import { CLIENT_VIEWS } from './client-views.js';
import { scriptJson } from './data-files.js';

export { dataPaths, featureScript, indexScript, readDataScript, textsScript, vocabScript } from './data-files.js';

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

const KIND_COLOURS: Record<(typeof TOKEN_KINDS)[number], string> = {
  bos: '#7f7f7f',
  eos: '#bcbd22',
  word: '#1f77b4',
  continuation: '#2ca02c',
  punctuation: '#d62728',
};

const CSS = `
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 1.5rem 3rem; color: #222; }
header { display: flex; gap: 1.2rem; align-items: baseline; flex-wrap: wrap; border-bottom: 1px solid #ddd; }
header h1 { font-size: 1.2rem; margin: .6rem 0; }
#meta, #sae-info, .range, .hint, .loading, .empty { color: #666; }
nav a { margin-right: .8rem; }
nav a[aria-current] { font-weight: bold; text-decoration: none; color: inherit; }
#error { color: #a00; background: #fde8e8; border: 1px solid #f3b4b4; padding: .3rem .6rem; }
.toolbar { display: flex; gap: 1rem; align-items: center; flex-wrap: wrap; margin: .8rem 0; }
#search { width: 18rem; }
table { border-collapse: collapse; }
th, td { padding: 2px 8px; text-align: right; border-bottom: 1px solid #eee; }
th { background: #fafafa; }
td.toks, th.toks { text-align: left; }
th button { font: inherit; font-weight: bold; background: none; border: 0; padding: 0; cursor: pointer; }
th[aria-sort=descending] button::after { content: " ▾"; }
th[aria-sort=ascending] button::after { content: " ▴"; }
#feature-list tbody tr { cursor: pointer; }
#feature-list tbody tr:hover { background: #f3f7ff; }
.pager { display: flex; gap: .8rem; align-items: center; }
code, .example, .ttok { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 13px; }
.tokname { background: #f1f1f1; border-radius: 3px; padding: 0 3px; margin-right: 4px; white-space: pre; }
.summary { display: grid; grid-template-columns: max-content max-content; gap: 0 1rem; }
.summary dd { margin: 0; }
.example { margin: 2px 0; white-space: pre-wrap; }
.example .val { display: inline-block; min-width: 4.5em; color: #666; }
.tok { border-radius: 2px; }
.tok.at { font-weight: bold; text-decoration: underline; outline: 1px solid #c55a00; }
.band h4 { margin: .7rem 0 .2rem; }
.histogram rect { fill: #4c78a8; }
.histogram line { stroke: #999; }
.histogram text { font-size: 10px; fill: #444; }
#token-flow { display: flex; flex-wrap: wrap; gap: 3px; margin: .8rem 0; }
.ttok { display: inline-flex; flex-direction: column; padding: 0; border: 1px solid #ddd; border-bottom: 3px solid #ddd; background: #fff; cursor: pointer; }
.ttok.legend { cursor: default; color: #666; }
.ttok[aria-pressed=true] { outline: 2px solid #333; }
.ttok .ttext { padding: 0 3px; white-space: pre; }
.ttok .count { padding: 0 3px; font-size: 11px; text-align: center; border-top: 1px solid #eee; }
${TOKEN_KINDS.map((k) => `.kind-${k} { border-bottom-color: ${KIND_COLOURS[k]}; } .key .kind-${k} { background: ${KIND_COLOURS[k]}; }`).join('\n')}
.key span { display: inline-block; width: .8em; height: .8em; margin: 0 .3em 0 .8em; }
.token-feature-lists { display: flex; gap: 2.5rem; align-items: flex-start; }
.token-feature-list ol { margin: 0; padding-left: 2em; max-height: 24rem; overflow: auto; }
.token-feature-list .act { color: #666; }
`;

/** The complete index.html of a features folder. */
export function browserHtml(manifest: FeaturesManifest): string {
  const title = `Features · ${manifest.model} · ${manifest.hook}`;
  const key = TOKEN_KINDS.map((k) => `<span class="kind-${k}"></span>${k}`).join('');
  const script = `(function () {\n'use strict';\nvar SCHEMA = ${scriptJson(FEATURES_SCHEMA)};\n${CLIENT_CORE}\n${CLIENT_VIEWS}\n})();`;
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(title)}</title>
<style>${CSS}</style>
<script type="application/json" id="sae-manifest">${scriptJson(manifest)}</script>
</head>
<body>
<header>
<h1>Feature browser</h1>
<nav><a id="tab-list" href="#list">Features</a><a id="tab-texts" href="#texts">Per token</a></nav>
<span id="meta"></span>
</header>
<p id="error" role="alert" hidden></p>
<main>
<section id="list-view">
<div class="toolbar">
<label id="sae-pick">SAE <select id="sae-select"></select></label>
<input id="search" type="search" placeholder="feature id, or token text" aria-label="search features" autocomplete="off">
<span id="match-count" aria-live="polite"></span>
<span id="sae-info"></span>
</div>
<table id="feature-list">
<thead><tr><th data-sort="id"><button type="button">id</button></th><th data-sort="density"><button type="button">density</button></th><th data-sort="maxActivation"><button type="button">max act</button></th><th data-sort="zipfRank"><button type="button">Zipf rank</button></th><th data-sort="shared" title="mean number of other features active on its tokens"><button type="button">shared</button></th><th class="toks">top token</th><th class="toks">promotes</th></tr></thead>
<tbody></tbody>
</table>
<p class="pager"><button id="prev" type="button">‹ previous</button><span id="page-info"></span><button id="next" type="button">next ›</button></p>
</section>
<section id="feature-page" hidden></section>
<section id="texts-view" hidden>
<div class="toolbar"><label>Text <select id="text-select"></select></label><span class="key">${key}</span></div>
<div id="token-flow"></div>
<div id="token-features"></div>
</section>
</main>
<script>
${script}
</script>
</body>
</html>
`;
}
