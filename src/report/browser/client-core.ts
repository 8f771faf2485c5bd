/**
 * The browser's client script, first half: loading data files, routing on the URL hash, and the
 * feature list. Plain ES2017 JavaScript kept as a string (tsconfig has no DOM lib, and the page
 * must carry its script inline with no build step); page.ts wraps both halves in one function
 * scope, so the helpers here are visible to client-views.ts and the other way round.
 *
 * String.raw keeps backslashes as written; the text must contain no backtick, no "${" and no
 * closing script tag.
 */
export const CLIENT_CORE = String.raw`
var manifest = JSON.parse(document.getElementById('sae-manifest').textContent);
var saes = manifest.saes || [];
var saeByLabel = {};
saes.forEach(function (s) { saeByLabel[s.label] = s; });

// What the data files deliver, by the callbacks below; a file's <script> runs its one call before
// its load event fires, so load() finds the data in here when the element reports success.
var data = { vocab: null, texts: null, index: {}, feature: {} };
window.saeBrowser = {
  vocab: function (v) { data.vocab = v; },
  texts: function (t) { data.texts = t; },
  index: function (label, idx) { data.index[label] = idx; },
  feature: function (label, id, page) { data.feature[label + '/' + id] = page; }
};

var pending = {};
function load(path, get) {
  if (get()) return Promise.resolve(get());
  if (!pending[path]) {
    pending[path] = new Promise(function (resolve, reject) {
      var s = document.createElement('script');
      function fail(message) {
        delete pending[path]; // a later visit tries again
        s.remove();
        reject(new Error(message));
      }
      s.onload = function () {
        if (get()) resolve(get());
        else fail(path + ' loaded but did not deliver its data');
      };
      s.onerror = function () { fail('could not load ' + path + ' (missing file?)'); };
      s.charset = 'utf-8';
      s.src = path;
      document.head.appendChild(s);
    });
  }
  return pending[path];
}
function loadVocab() { return load('data/vocab.js', function () { return data.vocab; }); }
function loadTexts() { return load('data/texts.js', function () { return data.texts; }); }
function loadIndex(label) {
  return load('data/' + label + '/index.js', function () { return data.index[label]; });
}
function loadFeature(label, id) {
  return load('data/' + label + '/f/' + id + '.js', function () { return data.feature[label + '/' + id]; });
}

function $(id) { return document.getElementById(id); }
function el(tag, cls, text) {
  var e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}
function link(href, text, cls) {
  var a = el('a', cls, text);
  a.href = href;
  return a;
}
function showError(e) {
  var p = $('error');
  p.textContent = e && e.message ? e.message : String(e);
  p.hidden = false;
}
function clearError() {
  $('error').hidden = true;
  $('error').textContent = '';
}

function num(x) {
  if (x === null || x === undefined || !isFinite(x)) return '–';
  if (x === 0) return '0';
  var a = Math.abs(x);
  if (a < 1e-3 || a >= 1e5) return x.toExponential(2);
  return String(Number(x.toPrecision(3)));
}
function tokText(id) {
  var t = data.vocab && data.vocab.tokens[id];
  return typeof t === 'string' ? t : '#' + id;
}
// Whitespace made visible: in a context line spaces stay spaces (white-space: pre), a token alone
// shows them as a middle dot, since a leading space is what tells " cat" from "cat".
function visible(s) {
  return s.replace(/\r\n|\n/g, '↵').replace(/\r/g, '␍').replace(/\t/g, '⇥');
}
function alone(s) { return s === '' ? '∅' : visible(s).replace(/ /g, '·'); }
function tokName(id) {
  var c = el('code', 'tokname', id < 0 ? '—' : alone(tokText(id)));
  if (id >= 0) c.title = 'token ' + id;
  return c;
}

// Routing: every view has a hash so it can be linked and the back button walks through them.
//   #list=<label>   the feature list of one SAE (#list or no hash: the last one shown)
//   #feature=<label>/<id>
//   #texts=<n>      the per-token view of text n
var gen = 0; // a view whose data arrive after the user moved on draws nothing
function route() {
  var my = ++gen;
  var h = location.hash.replace(/^#/, '');
  try { h = decodeURIComponent(h); } catch (e) { /* a malformed escape: read the hash as it is */ }
  var m;
  clearError();
  if ((m = /^feature=([A-Za-z0-9._-]+)\/(\d+)$/.exec(h))) return showFeature(m[1], Number(m[2]), my);
  if ((m = /^texts(?:=(\d+))?$/.exec(h))) return showTexts(m[1] ? Number(m[1]) : 0, my);
  m = /^list=([A-Za-z0-9._-]+)$/.exec(h);
  return showList(m ? m[1] : list.label, my);
}
function failed(my) {
  return function (e) { if (my === gen) showError(e); };
}
function show(id) {
  ['list-view', 'feature-page', 'texts-view'].forEach(function (v) { $(v).hidden = v !== id; });
  $('tab-list').toggleAttribute('aria-current', id === 'list-view');
  $('tab-texts').toggleAttribute('aria-current', id === 'texts-view');
}

// The feature list: the order is computed once per SAE and sort, the search filters it, and only
// one page of rows is in the DOM, so 24,576 features stay quick.
var PAGE = 100;
var FIRST_DESC = { id: false, density: true, maxActivation: true, zipfRank: false, shared: true };
var list = { label: saes.length ? saes[0].label : '', sort: 'id', desc: false, query: '', page: 0, order: null, matches: null };
var lowerVocab = null;

function showList(label, my) {
  show('list-view');
  if (!saeByLabel[label]) return showError('no SAE labelled "' + label + '" in this folder');
  if (label !== list.label) {
    list.label = label;
    list.order = null;
    list.page = 0;
  }
  $('sae-select').value = label;
  $('tab-list').href = '#list=' + label;
  saeInfo(saeByLabel[label]);
  if (!data.index[label]) {
    $('match-count').textContent = 'loading…';
    $('feature-list').tBodies[0].replaceChildren();
  }
  Promise.all([loadVocab(), loadIndex(label)]).then(function () {
    if (my === gen) renderList();
  }, failed(my));
}

function saeInfo(s) {
  var idx = data.index[s.label];
  var parts = [s.activation, 'F ' + s.F, 'd ' + s.d, s.mode + ' mode', 'L0 ' + num(s.l0)];
  if (idx && idx.zipf) parts.push('Zipf α ' + num(idx.zipf.alpha) + ', R² ' + num(idx.zipf.r2));
  $('sae-info').textContent = parts.join(' · ');
}

function sortOrder(idx) {
  var n = idx.F;
  var ids = new Array(n);
  for (var i = 0; i < n; i++) ids[i] = i;
  var col = list.sort === 'id' ? null : idx[list.sort];
  var sign = list.desc ? -1 : 1;
  if (col) ids.sort(function (a, b) { return sign * (col[a] - col[b]) || a - b; });
  else if (list.desc) ids.reverse();
  return ids;
}

function matching(idx, order) {
  var q = list.query.trim();
  if (q === '') return order;
  if (/^\d+$/.test(q)) {
    var id = Number(q);
    return id < idx.F ? [id] : [];
  }
  q = q.toLowerCase();
  if (!lowerVocab) lowerVocab = data.vocab.tokens.map(function (t) { return t.toLowerCase(); });
  function hit(t) { return t >= 0 && t < lowerVocab.length && lowerVocab[t].indexOf(q) >= 0; }
  return order.filter(function (f) {
    if (hit(idx.topToken[f])) return true;
    var p = idx.promoted[f] || [];
    for (var j = 0; j < p.length; j++) if (hit(p[j])) return true;
    return false;
  });
}

function renderList() {
  var idx = data.index[list.label];
  saeInfo(saeByLabel[list.label]);
  if (!list.order) list.order = sortOrder(idx);
  var rows = (list.matches = matching(idx, list.order));
  var q = list.query.trim();
  $('match-count').textContent = q === '' ? idx.F + ' features' : rows.length + ' of ' + idx.F + ' match';
  var pages = Math.max(1, Math.ceil(rows.length / PAGE));
  if (list.page >= pages) list.page = pages - 1;
  var start = list.page * PAGE;
  var shown = rows.slice(start, start + PAGE);
  var body = document.createDocumentFragment();
  shown.forEach(function (f) { body.appendChild(row(idx, f)); });
  $('feature-list').tBodies[0].replaceChildren(body);
  $('page-info').textContent = rows.length ? 'rows ' + (start + 1) + '–' + (start + shown.length) + ' of ' + rows.length : 'no feature matches';
  $('prev').disabled = list.page === 0;
  $('next').disabled = start + PAGE >= rows.length;
  Array.prototype.forEach.call(document.querySelectorAll('#feature-list th[data-sort]'), function (th) {
    var key = th.getAttribute('data-sort');
    th.setAttribute('aria-sort', key !== list.sort ? 'none' : list.desc ? 'descending' : 'ascending');
  });
}

function row(idx, f) {
  var tr = el('tr');
  tr.setAttribute('data-id', f);
  var cells = [
    link('#feature=' + list.label + '/' + f, String(f)),
    num(idx.density[f]),
    num(idx.maxActivation[f]),
    String(idx.zipfRank[f]),
    num(idx.shared[f]),
    tokName(idx.topToken[f]),
    null
  ];
  cells.forEach(function (c, i) {
    var td = el('td', i >= 5 ? 'toks' : null);
    if (i === 6) (idx.promoted[f] || []).forEach(function (t) { td.appendChild(tokName(t)); });
    else td.append(c);
    tr.appendChild(td);
  });
  return tr;
}

function wireList() {
  saes.forEach(function (s) {
    var o = el('option', null, s.label);
    o.value = s.label;
    $('sae-select').appendChild(o);
  });
  $('sae-pick').hidden = saes.length < 2;
  $('sae-select').addEventListener('change', function () { location.hash = 'list=' + this.value; });
  $('search').addEventListener('input', function () {
    list.query = this.value;
    list.page = 0;
    if (data.index[list.label] && data.vocab) renderList();
  });
  $('prev').addEventListener('click', function () { list.page--; renderList(); });
  $('next').addEventListener('click', function () { list.page++; renderList(); });
  $('feature-list').tHead.addEventListener('click', function (e) {
    var th = e.target.closest('th[data-sort]');
    if (!th || !data.index[list.label]) return;
    var key = th.getAttribute('data-sort');
    list.desc = key === list.sort ? !list.desc : FIRST_DESC[key];
    list.sort = key;
    list.order = null;
    list.page = 0;
    renderList();
  });
  $('feature-list').tBodies[0].addEventListener('click', function (e) {
    var tr = e.target.closest('tr[data-id]');
    if (tr && !e.target.closest('a')) location.hash = 'feature=' + list.label + '/' + tr.getAttribute('data-id');
  });
}
`;
