/**
 * The browser's client script, second half: the feature page, the per-token view, and the start.
 * Same rules as client-core.ts (plain JavaScript in String.raw: no backtick, no "${", no closing
 * script tag); it uses that half's helpers through the one function scope page.ts wraps them in.
 */
export const CLIENT_VIEWS = String.raw`
// A token in a context: shaded by its activation over the feature's max (alpha ∝ act/max, none
// at 0), its value on hover, the activating token marked.
function tok(id, act, max, at) {
  var s = el('span', at ? 'tok at' : 'tok', visible(tokText(id)) || '∅');
  s.setAttribute('data-act', String(act));
  s.title = num(act);
  var a = max > 0 && act > 0 ? Math.min(1, act / max) : 0;
  if (a > 0) s.style.backgroundColor = 'rgba(255, 127, 14, ' + Number(a.toFixed(3)) + ')';
  return s;
}
function example(ex, max) {
  var p = el('p', 'example');
  p.setAttribute('data-context', ex.context);
  p.setAttribute('data-position', ex.position);
  p.appendChild(el('span', 'val', num(ex.value)));
  var line = el('span', 'line');
  ex.ids.forEach(function (t, i) { line.appendChild(tok(t, ex.acts[i], max, i === ex.at)); });
  p.appendChild(line);
  return p;
}
function examples(list, max, cls) {
  var div = el('div', cls ? 'examples ' + cls : 'examples');
  if (!list.length) div.appendChild(el('p', 'empty', 'no examples'));
  list.forEach(function (ex) { div.appendChild(example(ex, max)); });
  return div;
}

function showFeature(label, id, my) {
  show('feature-page');
  var sec = $('feature-page');
  sec.replaceChildren(el('h2', null, 'Feature ' + id + ' · ' + label), el('p', 'loading', 'loading…'));
  var sae = saeByLabel[label];
  if (!sae) return showError('no SAE labelled "' + label + '" in this folder');
  if (id >= sae.F) return showError('feature ' + id + ' is out of range: ' + label + ' has ' + sae.F + ' features');
  Promise.all([loadVocab(), loadFeature(label, id)]).then(function (r) {
    if (my === gen) renderFeature(label, sae, r[1]);
  }, failed(my));
}

function renderFeature(label, sae, p) {
  var sec = $('feature-page');
  var nav = el('p', 'feature-nav');
  nav.appendChild(link('#list=' + label, '← ' + label + ' features'));
  if (p.id > 0) nav.append(' · ', link('#feature=' + label + '/' + (p.id - 1), '‹ ' + (p.id - 1)));
  if (p.id + 1 < sae.F) nav.append(' · ', link('#feature=' + label + '/' + (p.id + 1), (p.id + 1) + ' ›'));
  var h2 = el('h2', null, 'Feature ' + p.id + ' ');
  h2.appendChild(el('small', null, label));
  var dl = el('dl', 'summary');
  [['density', num(p.density)], ['max activation', num(p.maxActivation)], ['mean activation', num(p.meanActivation)],
   ['Zipf rank', String(p.zipfRank)], ['shared', num(p.shared)], ['firings', String(p.count)]].forEach(function (kv) {
    dl.append(el('dt', null, kv[0]), el('dd', null, kv[1]));
  });
  sec.replaceChildren(nav, h2, dl, el('h3', null, 'Top activations'), examples(p.top, p.maxActivation, 'top'));
  sec.appendChild(el('h3', null, 'Quantiles'));
  p.quantiles.slice().reverse().forEach(function (b) {
    var band = el('section', 'band');
    var h4 = el('h4', null, b.label + ' ');
    h4.appendChild(el('span', 'range', num(b.from) + ' – ' + num(b.to)));
    band.append(h4, examples(b.examples, p.maxActivation));
    sec.appendChild(band);
  });
  sec.append(el('h3', null, 'Activation histogram'), histogram(p.histogram));
  sec.append(el('h3', null, 'Logit effect'), logits(p.logits));
  window.scrollTo(0, 0);
}

// Bars of equal width, one per bin: the edges are log-spaced, so equal widths are a log axis.
function histogram(hg) {
  var n = hg.counts.length;
  var wrap = el('div', 'histogram');
  if (!n) {
    wrap.appendChild(el('p', 'empty', 'no firings'));
    return wrap;
  }
  var W = 640, H = 150, left = 44, bw = (W - left) / n;
  var top = Math.max.apply(null, hg.counts) || 1;
  var svg = ['<svg viewBox="0 0 ' + W + ' ' + (H + 22) + '" width="' + W + '" height="' + (H + 22) + '" role="img" aria-label="activation histogram">'];
  hg.counts.forEach(function (c, i) {
    var h = (H * c) / top;
    svg.push('<rect x="' + (left + i * bw).toFixed(1) + '" y="' + (H - h).toFixed(1) + '" width="' + Math.max(1, bw - 1).toFixed(1) +
      '" height="' + h.toFixed(1) + '"><title>[' + num(hg.edges[i]) + ', ' + num(hg.edges[i + 1]) + '): ' + c + '</title></rect>');
  });
  svg.push('<line x1="' + left + '" y1="' + H + '" x2="' + W + '" y2="' + H + '"></line>');
  svg.push('<text x="' + (left - 4) + '" y="10" text-anchor="end">' + top + '</text>');
  svg.push('<text x="' + (left - 4) + '" y="' + H + '" text-anchor="end">0</text>');
  var ticks = Math.min(n, 4);
  for (var k = 0; k <= ticks; k++) {
    var i = Math.round((k * n) / ticks);
    var anchor = k === 0 ? 'start' : k === ticks ? 'end' : 'middle';
    svg.push('<text x="' + (left + i * bw).toFixed(1) + '" y="' + (H + 16) + '" text-anchor="' + anchor + '">' + num(hg.edges[i]) + '</text>');
  }
  svg.push('</svg>');
  wrap.innerHTML = svg.join('');
  return wrap;
}

function logits(lg) {
  var t = el('table', 'logits');
  var head = el('tr');
  ['promoted', 'logit', 'suppressed', 'logit'].forEach(function (h) { head.appendChild(el('th', null, h)); });
  t.createTHead().appendChild(head);
  var body = t.createTBody();
  for (var i = 0; i < Math.max(lg.promoted.length, lg.suppressed.length); i++) {
    var tr = el('tr');
    [lg.promoted[i], lg.suppressed[i]].forEach(function (pair) {
      var a = el('td', 'toks'), b = el('td');
      if (pair) {
        a.appendChild(tokName(pair[0]));
        b.textContent = num(pair[1]);
      }
      tr.append(a, b);
    });
    body.appendChild(tr);
  }
  return t;
}

// The per-token view: for one text, every token with the count of features each SAE gave it,
// one row per SAE (side by side), shaded by count; a click lists the token's features.
var textsAt = { n: -1, token: -1 };
function showTexts(n, my) {
  show('texts-view');
  Promise.all([loadVocab(), loadTexts()]).then(function () {
    if (my === gen) renderTexts(n);
  }, failed(my));
}

function renderTexts(n) {
  var T = data.texts;
  var sel = $('text-select');
  if (sel.options.length !== T.texts.length) {
    sel.replaceChildren();
    T.texts.forEach(function (t, i) {
      var words = t.ids.slice(0, 10).map(function (id) { return visible(tokText(id)); }).join('');
      var o = el('option', null, i + ': ' + words.trim().slice(0, 60) + '…');
      o.value = String(i);
      sel.appendChild(o);
    });
  }
  var t = T.texts[n];
  if (!t) return showError('no text ' + n + ' (the folder has ' + T.texts.length + ')');
  sel.value = String(n);
  if (textsAt.n !== n) textsAt = { n: n, token: -1 };
  var top = 1;
  T.labels.forEach(function (l) {
    (t.features[l] || []).forEach(function (fs) { top = Math.max(top, fs.length); });
  });
  var flow = $('token-flow');
  flow.replaceChildren();
  var legend = el('div', 'ttok legend');
  legend.appendChild(el('span', 'ttext', 'token'));
  T.labels.forEach(function (l) { legend.appendChild(el('span', 'count', l)); });
  flow.appendChild(legend);
  t.ids.forEach(function (id, i) {
    var b = el('button', 'ttok kind-' + t.kinds[i]);
    b.type = 'button';
    b.setAttribute('data-i', i);
    b.setAttribute('aria-pressed', String(i === textsAt.token));
    b.title = t.kinds[i] + ', position ' + i;
    b.appendChild(el('span', 'ttext', alone(tokText(id))));
    T.labels.forEach(function (l) {
      var c = ((t.features[l] || [])[i] || []).length;
      var s = el('span', 'count', String(c));
      s.setAttribute('data-label', l);
      if (c > 0) s.style.backgroundColor = 'rgba(31, 119, 180, ' + Number((c / top).toFixed(3)) + ')';
      b.appendChild(s);
    });
    flow.appendChild(b);
  });
  tokenFeatures(t, T.labels);
}

function tokenFeatures(t, labels) {
  var box = $('token-features');
  var i = textsAt.token;
  if (i < 0) return box.replaceChildren(el('p', 'hint', 'Click a token to list its features.'));
  var h = el('h3', null, 'Token ' + i + ' ');
  h.appendChild(tokName(t.ids[i]));
  var cols = el('div', 'token-feature-lists');
  labels.forEach(function (l) {
    var fs = (t.features[l] || [])[i] || [];
    var col = el('section', 'token-feature-list');
    col.setAttribute('data-label', l);
    col.appendChild(el('h4', null, l + ' · ' + fs.length + ' features'));
    var ol = el('ol');
    fs.forEach(function (pair) {
      var li = el('li');
      li.setAttribute('data-id', pair[0]);
      li.append(link('#feature=' + l + '/' + pair[0], String(pair[0])), ' ', el('span', 'act', num(pair[1])));
      ol.appendChild(li);
    });
    col.appendChild(ol);
    cols.appendChild(col);
  });
  box.replaceChildren(h, cols);
}

function wireTexts() {
  $('text-select').addEventListener('change', function () { location.hash = 'texts=' + this.value; });
  $('token-flow').addEventListener('click', function (e) {
    var b = e.target.closest('button[data-i]');
    if (!b) return;
    textsAt.token = Number(b.getAttribute('data-i'));
    Array.prototype.forEach.call(this.querySelectorAll('button[data-i]'), function (x) {
      x.setAttribute('aria-pressed', String(x === b));
    });
    tokenFeatures(data.texts.texts[textsAt.n], data.texts.labels);
  });
}

function start() {
  var m = manifest;
  $('meta').textContent = [m.model, m.hook, m.tokens + ' tokens', m.contexts + ' contexts of ' + m.ctx, m.precision].join(' · ');
  wireList();
  wireTexts();
  window.addEventListener('hashchange', route);
  if (m.schema !== SCHEMA) showError('unknown features schema ' + m.schema + '; this page reads ' + SCHEMA);
  else if (!saes.length) showError('this folder has no SAE');
  else route();
}
start();
`;
