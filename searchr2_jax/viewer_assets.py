"""The viewer page's inline assets (`viewer.page` writes them into one self-contained HTML file).

ONERROR  the first script: an uncaught error sets `#viewer-status` to data-state="error" with the message.
CSS      the page's style sheet.
JS       the page's script: reads the records from `#viewer-data`, builds the filters, the list and the
         turn-by-turn detail (every element through `textContent`), and keeps its state in the URL hash.
"""

ONERROR = """window.onerror = function (msg, src, line, col) {
  var s = document.getElementById('viewer-status');
  s.setAttribute('data-state', 'error');
  s.textContent = 'error: ' + msg + ' (line ' + line + ':' + col + ')';
};"""

CSS = """
:root { --ok: #1a7f37; --bad: #cf222e; --gold: #fff3bf; --goldline: #d4a72c; --accent: #0969da; --muted: #57606a;
  --line: #d0d7de; --rev: #8250df; }
* { box-sizing: border-box; }
body { margin: 0; font: 13px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328;
  background: #f6f8fa; }
#viewer-status { position: fixed; right: 8px; bottom: 4px; font-size: 10px; color: var(--muted); z-index: 2; }
#viewer-status[data-state="error"] { color: #fff; background: var(--bad); padding: 4px 8px; font-size: 13px; }
header { background: #24292f; color: #fff; padding: 8px 14px; display: flex; gap: 22px; flex-wrap: wrap;
  align-items: baseline; }
header h1 { font-size: 15px; margin: 0; }
header .side b { color: #9ecbff; }
#filters { padding: 6px 14px; background: #fff; border-bottom: 1px solid var(--line); display: flex; gap: 10px;
  flex-wrap: wrap; align-items: center; }
#filters select, #filters input { font: inherit; padding: 2px 4px; }
#filters input[type=search] { width: 220px; }
#filters .count { color: var(--muted); margin-left: auto; }
#main { display: flex; height: calc(100vh - 78px); }
#list { width: 36%; min-width: 260px; overflow: auto; border-right: 1px solid var(--line); background: #fff; }
.row { padding: 4px 10px; border-bottom: 1px solid #eaeef2; cursor: pointer; display: flex; gap: 6px;
  align-items: baseline; }
.row:hover { background: #f3f4f6; }
.row.sel { background: #ddf4ff; }
.row .q { flex: 1; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.row .idx { color: var(--muted); font-variant-numeric: tabular-nums; min-width: 2.5em; }
.mark { font-weight: 700; }
.mark.ok { color: var(--ok); } .mark.bad { color: var(--bad); } .mark.none { color: var(--muted); }
.badge { font-size: 11px; padding: 0 6px; border-radius: 9px; background: #eaeef2; color: #1f2328;
  white-space: nowrap; }
.badge.rev { background: #fbefff; color: var(--rev); }
.badge.ok { background: #dafbe1; color: var(--ok); } .badge.bad { background: #ffebe9; color: var(--bad); }
.badge.gold { background: var(--gold); color: #7d4e00; }
#detail { flex: 1; overflow: auto; padding: 10px 16px 40px; }
.cols { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 12px; }
.side-title { font-weight: 700; color: var(--accent); margin: 4px 0; }
.qbox { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px; }
.qbox .question { font-size: 15px; font-weight: 600; }
.kv { color: var(--muted); }
.kv span { margin-right: 12px; }
.turn { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 6px 9px; margin: 6px 0; }
.turn.regen { border-left: 4px solid var(--rev); }
.turn.diff { border: 2px solid var(--goldline); background: #fff8c5; }
.turn .head { font-weight: 600; color: var(--muted); }
.thought { color: var(--muted); font-style: italic; white-space: pre-wrap; }
.query { color: var(--accent); font-weight: 600; white-space: pre-wrap; }
.answer { font-weight: 700; white-space: pre-wrap; }
.tool, .error { white-space: pre-wrap; color: var(--bad); }
.passage { margin: 3px 0 3px 8px; padding: 2px 7px; border-left: 3px solid var(--line); white-space: pre-wrap; }
.passage.gold { background: var(--gold); border-left-color: var(--goldline); }
.passage .pid { color: var(--muted); }
details.raw summary { color: var(--muted); cursor: pointer; font-size: 11px; }
details.raw pre { white-space: pre-wrap; margin: 2px 0; font-size: 11px; }
.cut { color: var(--rev); font-weight: 600; margin: 10px 0 4px; border-top: 2px dashed var(--rev);
  padding-top: 2px; }
.decision { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px; margin: 10px 0; }
.decision .title { font-weight: 700; color: var(--rev); }
.bars { display: flex; align-items: flex-end; gap: 4px; height: 96px; margin: 6px 0; }
.barcol { display: flex; flex-direction: column; align-items: center; justify-content: flex-end; height: 100%;
  font-size: 10px; color: var(--muted); min-width: 34px; }
.bar { width: 26px; background: #9ec5fe; border-radius: 2px 2px 0 0; }
.barcol.chosen .bar { background: var(--rev); }
.barcol.accept .bar { background: #8ddb8c; }
.barcol.chosen.accept .bar { background: var(--ok); }
.barcol .j { font-weight: 700; color: #1f2328; font-size: 12px; }
.empty { color: var(--muted); padding: 20px; }
h3 { margin: 14px 0 4px; font-size: 13px; }
"""

JS = r"""
(function () {
'use strict';
var t0 = performance.now();
var DATA = JSON.parse(document.getElementById('viewer-data').textContent);
var A = DATA.a.records, B = DATA.b ? DATA.b.records : null, TABLE = DATA.passages;
var state = {correct: '', revised: '', changed: false, matched: false, status: '', hops: '', q: '', sel: 0};

function el(tag, cls, text) {
  var e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}
function add(parent) {
  for (var i = 1; i < arguments.length; i++) if (arguments[i]) parent.appendChild(arguments[i]);
  return parent;
}
function fmt(x, d) { return x === null || x === undefined ? '\u2014' : Number(x).toFixed(d); }
function correct(r) { return r.em > 0; }
function passageOf(p) { var t = TABLE[p.p]; return {id: p.id, gold: p.gold, title: t[0], text: t[1]}; }

// Dump B's records by question (id, else text); the k-th occurrence in A meets the k-th in B (a GRPO group).
var keyOf = function (r) { return r.id !== null && r.id !== undefined ? 'id:' + r.id : 'q:' + r.question; };
var match = [];
if (B) {
  var byKey = new Map(), seen = new Map();
  B.forEach(function (r) { var k = keyOf(r); if (!byKey.has(k)) byKey.set(k, []); byKey.get(k).push(r); });
  A.forEach(function (r) {
    var k = keyOf(r), n = seen.get(k) || 0, list = byKey.get(k);
    seen.set(k, n + 1);
    match.push(list ? (list[n] || list[0]) : null);
  });
}

// ----------------------------------------------------------------------------------------------- state <-> hash
function readHash() {
  var params = new URLSearchParams(location.hash.replace(/^#/, ''));
  (params.get('filter') || '').split(',').forEach(function (f) {
    f = f.trim();
    if (f === 'correct' || f === 'wrong') state.correct = f;
    else if (f === 'revised' || f === 'unrevised') state.revised = f;
    else if (f === 'changed') state.changed = true;
    else if (f === 'matched') state.matched = true;
  });
  state.status = params.get('status') || '';
  state.hops = params.get('hops') || '';
  state.q = params.get('q') || '';
  var sel = parseInt(params.get('sel') || '', 10);
  state.sel = isNaN(sel) ? -1 : sel;
}
function writeHash() {
  var f = [state.correct, state.revised, state.changed ? 'changed' : '', state.matched ? 'matched' : '']
    .filter(Boolean);
  var params = new URLSearchParams();
  if (f.length) params.set('filter', f.join(','));
  if (state.status) params.set('status', state.status);
  if (state.hops) params.set('hops', state.hops);
  if (state.q) params.set('q', state.q);
  if (state.sel >= 0) params.set('sel', String(state.sel));
  try { history.replaceState(null, '', '#' + params.toString()); } catch (e) { /* a sandboxed frame: no URL */ }
}

// ----------------------------------------------------------------------------------------------- filters
var haystacks = [];
function haystack(i) {
  if (haystacks[i] === undefined) {
    var r = A[i], parts = [r.question, r.answer || '', r.golden_answers.join(' '), r.status, r.id || ''];
    var turns = function (ts) { ts.forEach(function (t) { parts.push(t.text); }); };
    turns(r.turns);
    r.refiner.forEach(function (d) { if (d.draft) turns(d.draft.turns); });
    haystacks[i] = parts.join('\n').toLowerCase();
  }
  return haystacks[i];
}
function visible(i) {
  var r = A[i], s = state;
  if (s.correct && correct(r) !== (s.correct === 'correct')) return false;
  if (s.revised && r.revised !== (s.revised === 'revised')) return false;
  if (s.status && r.status !== s.status) return false;
  if (s.hops && String(r.hops) !== s.hops) return false;
  if (B && s.matched && !match[i]) return false;
  if (B && s.changed && !(match[i] && correct(match[i]) !== correct(r))) return false;
  if (s.q && haystack(i).indexOf(s.q.toLowerCase()) < 0) return false;
  return true;
}

function select(options, value, onchange) {
  var e = el('select');
  options.forEach(function (o) {
    var opt = el('option', null, o[1]);
    opt.value = o[0];
    e.appendChild(opt);
  });
  e.value = value;
  e.addEventListener('change', function () { onchange(e.value); });
  return e;
}
function distinct(key) {
  var seen = {};
  A.forEach(function (r) { if (r[key] !== null && r[key] !== undefined) seen[String(r[key])] = true; });
  return Object.keys(seen).sort();
}
var countEl = el('span', 'count');
function buildFilters() {
  var f = document.getElementById('filters');
  var upd = function (k) { return function (v) { state[k] = v; refresh(); }; };
  add(f,
    select([['', 'correct & wrong'], ['correct', 'correct (EM 1)'], ['wrong', 'wrong']], state.correct,
           upd('correct')),
    select([['', 'revised or not'], ['revised', 'revised'], ['unrevised', 'not revised']], state.revised,
           upd('revised')),
    select([['', 'any status']].concat(distinct('status').map(function (s) { return [s, s]; })), state.status,
           upd('status')),
    select([['', 'any hops']].concat(distinct('hops').map(function (h) { return [h, h + ' hop(s)']; })),
           state.hops, upd('hops')));
  if (B) {
    add(f, select([['', 'all of A'], ['matched', 'in both'], ['changed', 'EM changed']],
                  state.changed ? 'changed' : state.matched ? 'matched' : '',
                  function (v) { state.changed = v === 'changed'; state.matched = v === 'matched'; refresh(); }));
  }
  var q = el('input');
  q.type = 'search';
  q.placeholder = 'search question, answer, turns';
  q.value = state.q;
  q.addEventListener('input', function () { state.q = q.value; refresh(); });
  add(f, q, countEl);
}

// ----------------------------------------------------------------------------------------------- list
var rows = [];
function mark(r) {
  if (!r) return el('span', 'mark none', '\u2014');
  return correct(r) ? el('span', 'mark ok', '\u2713') : el('span', 'mark bad', '\u2717');
}
function rowFor(i) {
  if (!rows[i]) {
    var r = A[i], row = el('div', 'row');
    row.setAttribute('data-i', String(i));
    row.setAttribute('data-revised', r.revised ? '1' : '0');
    row.setAttribute('data-correct', correct(r) ? '1' : '0');
    add(row, el('span', 'idx', '#' + i), mark(r), B ? mark(match[i]) : null,
        r.revised ? el('span', 'badge rev', 'revised') : null, el('span', 'q', r.question),
        el('span', 'badge', r.status), r.hops != null ? el('span', 'badge', r.hops + 'h') : null);
    row.addEventListener('click', function () { state.sel = i; refresh(); });
    rows[i] = row;
  }
  return rows[i];
}
var shown = [];
function refresh() {
  shown = [];
  for (var i = 0; i < A.length; i++) if (visible(i)) shown.push(i);
  if (shown.indexOf(state.sel) < 0) state.sel = shown.length ? shown[0] : -1;
  var list = document.getElementById('list');
  var frag = document.createDocumentFragment();
  shown.forEach(function (i) { frag.appendChild(rowFor(i)); });
  list.replaceChildren(frag);
  shown.forEach(function (i) { rows[i].classList.toggle('sel', i === state.sel); });
  if (!shown.length) list.appendChild(el('div', 'empty', 'no trajectory matches the filters'));
  countEl.textContent = shown.length + ' of ' + A.length + ' shown';
  renderDetail();
  writeHash();
}
document.addEventListener('keydown', function (e) {
  if (e.target && (e.target.tagName === 'INPUT' || e.target.tagName === 'SELECT')) return;
  var k = shown.indexOf(state.sel), next = -1;
  if (e.key === 'ArrowDown' || e.key === 'j') next = Math.min(k + 1, shown.length - 1);
  if (e.key === 'ArrowUp' || e.key === 'k') next = Math.max(k - 1, 0);
  if (next >= 0 && shown.length) {
    state.sel = shown[next];
    refresh();
    rows[state.sel].scrollIntoView({block: 'nearest'});
    e.preventDefault();
  }
});

// ----------------------------------------------------------------------------------------------- trajectory
function turnView(t, cls) {
  var card = el('div', 'turn' + (cls ? ' ' + cls : ''));
  card.setAttribute('data-step', String(t.step));
  add(card, el('div', 'head', 'step ' + t.step + ' \u00b7 ' + t.action));
  if (t.thought != null) add(card, el('div', 'thought', t.thought));
  if (t.query != null) add(card, el('div', 'query', 'search: ' + t.query));
  t.passages.forEach(function (p) {
    p = passageOf(p);
    var e = el('div', 'passage' + (p.gold ? ' gold' : ''));
    add(e, el('span', 'pid', '[' + p.id + '] '), el('b', null, p.title), document.createTextNode(' ' + p.text));
    if (p.gold) add(e, document.createTextNode(' '), el('span', 'badge gold', 'gold'));
    card.appendChild(e);
  });
  if (t.answer != null) add(card, el('div', 'answer', 'answer: ' + t.answer));
  if (t.tool) add(card, el('div', 'tool', t.tool.trim()));
  if (t.error) add(card, el('div', 'error', 'retrieval error: ' + t.error));
  var raw = el('details', 'raw');
  add(raw, el('summary', null, 'text as generated'), el('pre', null, t.text));
  card.appendChild(raw);
  return card;
}
function sameTurn(x, y) { return x.action === y.action && x.text === y.text; }
function firstDiff(xs, ys) {
  var n = Math.max(xs.length, ys.length);
  for (var i = 0; i < n; i++) if (!xs[i] || !ys[i] || !sameTurn(xs[i], ys[i])) return i;
  return -1;
}
function branchView(title, b, diff, role) {
  var col = el('div', 'branch');
  col.setAttribute('data-role', role);
  add(col, el('div', 'side-title', title),
      el('div', 'kv', 'ended ' + b.status + (b.answer != null ? ', answer ' + JSON.stringify(b.answer) : '')));
  b.turns.forEach(function (t, i) { col.appendChild(turnView(t, i === diff ? 'diff' : '')); });
  if (!b.turns.length) col.appendChild(el('div', 'empty', 'no turns'));
  return col;
}
function scoreBars(d) {
  var finite = d.scores.filter(function (s) { return s != null; });
  var top = finite.length ? Math.max.apply(null, finite) : 0;
  var ps = d.scores.map(function (s) { return s == null ? 0 : Math.exp(s - top); });
  var z = ps.reduce(function (a, b) { return a + b; }, 0) || 1;
  var bars = el('div', 'bars');
  bars.title = 'p(j) over the candidates 0..T, renormalized; log p under each bar';
  d.scores.forEach(function (s, j) {
    var col = el('div', 'barcol' + (j === d.choice ? ' chosen' : '') + (j === 0 ? ' accept' : ''));
    var bar = el('div', 'bar');
    bar.style.height = (2 + 60 * ps[j] / z).toFixed(1) + 'px';
    add(col, el('span', null, (100 * ps[j] / z).toFixed(0) + '%'), bar, el('span', 'j', j === 0 ? '0 ok' : j),
        el('span', null, fmt(s, 2)));
    bars.appendChild(col);
  });
  return bars;
}
function decisionView(d, k) {
  var box = el('div', 'decision');
  var what = d.choice ? 'cut at step ' + d.choice + (d.kept_tokens != null ? ' (kept ' + d.kept_tokens +
             ' response tokens)' : '') : 'accept';
  add(box, el('div', 'title', 'Meta-Refiner, judgement ' + (k + 1) + ': ' + what + (d.forced ? ' (forced)' : '')),
      scoreBars(d));
  if (d.draft && d.regeneration) {
    var diff = firstDiff(d.draft.turns, d.regeneration.turns);
    add(box, el('div', 'kv', diff < 0 ? 'the regeneration repeats the draft' :
                'first differing turn: step ' + (d.choice + diff)),
        add(el('div', 'cols'),
            branchView('discarded draft, steps ' + d.choice + '..', d.draft, diff, 'draft'),
            branchView('regeneration, from step ' + d.choice, d.regeneration, diff, 'regeneration')));
  }
  return box;
}
function trajectoryView(r) {
  var box = el('div', 'trajectory');
  var q = el('div', 'qbox');
  add(q, el('div', 'question', r.question),
      add(el('div', 'kv'), el('span', null, 'gold: ' + r.golden_answers.join(' | ')),
          el('span', null, 'answer: ' + (r.answer == null ? '\u2014' : r.answer)),
          el('span', 'badge ' + (correct(r) ? 'ok' : 'bad'), correct(r) ? 'correct' : 'wrong'),
          r.revised ? el('span', 'badge rev', 'revised') : null),
      add(el('div', 'kv'), el('span', null, r.kind + ' step ' + r.step + ', #' + r.index),
          el('span', null, 'group ' + r.group_id), r.source ? el('span', null, r.source) : null,
          r.hops != null ? el('span', null, r.hops + ' hop(s)') : null, el('span', null, 'status ' + r.status)),
      add(el('div', 'kv'), el('span', null, 'EM ' + fmt(r.em, 0)),
          el('span', null, 'useful/M ' + (r.useful == null ? '\u2014' : fmt(r.useful, 1)) + '/' + r.searches),
          el('span', null, 'reward ' + fmt(r.reward, 3)),
          el('span', null, r.generated_tokens + ' generated of ' + r.response_tokens + ' response tokens')),
      r.gold_passage_ids ? el('div', 'kv', 'gold passages: ' + r.gold_passage_ids.join(', ')) : null);
  box.appendChild(q);
  if (r.refiner.length) {
    box.appendChild(el('h3', null, 'Meta-Refiner'));
    r.refiner.forEach(function (d, k) { box.appendChild(decisionView(d, k)); });
  }
  var cuts = r.refiner.filter(function (d) { return d.choice > 0; });
  var lastCut = cuts.length ? cuts[cuts.length - 1].choice : 0;
  box.appendChild(el('h3', null, 'turns'));
  r.turns.forEach(function (t) {
    if (lastCut && t.step === lastCut) {
      box.appendChild(el('div', 'cut', '\u2702 the Meta-Refiner cut here: steps ' + lastCut +
                                       '.. were regenerated'));
    }
    box.appendChild(turnView(t, lastCut && t.step >= lastCut ? 'regen' : ''));
  });
  if (lastCut > r.turns.length) box.appendChild(el('div', 'cut', '\u2702 cut at step ' + lastCut));
  return box;
}
function renderDetail() {
  var detail = document.getElementById('detail');
  if (state.sel < 0) { detail.replaceChildren(el('div', 'empty', 'nothing selected')); return; }
  var r = A[state.sel];
  if (!B) { detail.replaceChildren(trajectoryView(r)); return; }
  var other = match[state.sel];
  var a = add(el('div', 'side-a'), el('div', 'side-title', 'A: ' + DATA.a.label), trajectoryView(r));
  var b = add(el('div', 'side-b'), el('div', 'side-title', 'B: ' + DATA.b.label),
              other ? trajectoryView(other) : el('div', 'empty', 'this question is not in B'));
  detail.replaceChildren(add(el('div', 'cols'), a, b));
}

// ----------------------------------------------------------------------------------------------- summary
function summary(side) {
  var rs = side.records, n = rs.length || 1;
  var em = rs.reduce(function (a, r) { return a + (correct(r) ? 1 : 0); }, 0) / n;
  var rev = rs.reduce(function (a, r) { return a + (r.revised ? 1 : 0); }, 0) / n;
  return rs.length + ' trajectories, EM ' + em.toFixed(3) + ', revised ' + (100 * rev).toFixed(0) + '%';
}
var head = document.getElementById('summary');
add(head, el('h1', null, DATA.title), add(el('span', 'side'), el('b', null, (B ? 'A: ' : '') + DATA.a.label + ' '),
    document.createTextNode(summary(DATA.a))));
if (B) add(head, add(el('span', 'side'), el('b', null, 'B: ' + DATA.b.label + ' '),
                     document.createTextNode(summary(DATA.b))));

readHash();
buildFilters();
refresh();
var status = document.getElementById('viewer-status');
if (status.getAttribute('data-state') !== 'error') {
  status.setAttribute('data-state', 'ok');
  status.setAttribute('data-ms', (performance.now() - t0).toFixed(1));  // this script: parse and first render
  status.setAttribute('data-load-ms', performance.now().toFixed(1));  // since the navigation started
  status.textContent = 'rendered in ' + (performance.now() - t0).toFixed(0) + ' ms';
}
})();
"""
