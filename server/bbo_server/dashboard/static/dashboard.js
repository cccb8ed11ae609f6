// bbo dashboard: a read-only view of the tenant's studies, refreshed by polling the JSON API.
// Routes: #/ (studies) and #/study/NAME. Charts are Plotly (served from the plotly package);
// every text from the server goes into the page as text (textContent), never as HTML.
'use strict';

const POLL_MS = 2000;
const KEY_ITEM = 'bbo-api-key';
const STATES = ['PENDING', 'COMPLETED', 'FAILED', 'ABANDONED'];
const PLOT_CONFIG = { displaylogo: false, responsive: true };

const $ = (id) => document.getElementById(id);

// ---- small DOM helpers ----------------------------------------------------------------------
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function fmt(v) {
  if (v === null || v === undefined) return '';
  if (typeof v === 'number') {
    if (Number.isInteger(v)) return String(v);
    const a = Math.abs(v);
    return a !== 0 && (a < 1e-3 || a >= 1e6) ? v.toExponential(4) : String(+v.toPrecision(6));
  }
  return String(v);
}

function when(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleString() : '';
}

// ---- API ----------------------------------------------------------------------------------
class AuthError extends Error {}
class NotFound extends Error {}

async function api(path) {
  const key = sessionStorage.getItem(KEY_ITEM);
  const headers = key ? { Authorization: `Bearer ${key}` } : {};
  const r = await fetch(path, { headers, cache: 'no-store' });
  const text = await r.text();
  let body = null;
  try { body = JSON.parse(text); } catch (e) { body = null; }
  const message = (body && body.error) || `${r.status} ${r.statusText}`;
  if (r.status === 401) throw new AuthError(message);
  if (r.status === 404) throw new NotFound(message);
  if (!r.ok) throw new Error(message);
  return { body, text };
}

// ---- key form -------------------------------------------------------------------------------
function askForKey(message) {
  $('main').replaceChildren();
  $('key-form').hidden = false;
  $('key-error').textContent = sessionStorage.getItem(KEY_ITEM) ? message : '';
  $('forget-key').hidden = true;
  $('tenant').textContent = '';
  $('key-input').focus();
}

function setupKeyForm() {
  $('key-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const key = $('key-input').value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY_ITEM, key);
    $('key-input').value = '';
    route();
  });
  $('forget-key').addEventListener('click', () => {
    sessionStorage.removeItem(KEY_ITEM);
    route();
  });
}

// ---- polling --------------------------------------------------------------------------------
let view = null;  // the current view: {refresh(), stop()}
let timer = null;

function schedule() {
  clearTimeout(timer);
  timer = setTimeout(tick, POLL_MS);
}

async function tick() {
  if (!view) return;
  if (document.hidden) { schedule(); return; }
  const v = view;
  try {
    await v.refresh();
    if (v === view) status(`updated ${new Date().toLocaleTimeString()}`);
  } catch (e) {
    if (v !== view) return;
    if (e instanceof AuthError) { view = null; askForKey(e.message); return; }
    status(`error: ${e.message}`, true);
  }
  if (v === view) schedule();
}

function status(text, bad = false) {
  const s = $('status');
  s.textContent = text;
  s.className = bad ? 'bad' : '';
}

async function route() {
  clearTimeout(timer);
  view = null;
  $('key-form').hidden = true;
  const hash = decodeURIComponent(location.hash.replace(/^#\/?/, ''));
  try {
    const { body } = await api('api/session');
    $('tenant').textContent = `tenant ${body.tenant}`;
    $('forget-key').hidden = !body.auth;
  } catch (e) {
    if (e instanceof AuthError) { askForKey(e.message); return; }
    status(`error: ${e.message}`, true);
    return;
  }
  view = hash.startsWith('study/') ? new StudyView(hash.slice('study/'.length)) : new StudiesView();
  tick();
}

// ---- studies ------------------------------------------------------------------------------
class StudiesView {
  constructor() {
    this.last = null;
    $('crumb').replaceChildren();
    this.table = el('table', { id: 'studies-table', class: 'grid' });
    $('main').replaceChildren(el('h1', { text: 'Studies' }), this.table);
  }

  async refresh() {
    const { body, text } = await api('api/studies');
    if (text === this.last) return;
    this.last = text;
    const head = el('tr', {}, ...['study', 'state', 'objectives', 'trials', 'completed', 'created']
      .map((h) => el('th', { text: h })));
    const rows = body.studies.map((s) => el('tr', { 'data-study': s.name },
      el('td', {}, el('a', { href: `#/study/${encodeURIComponent(s.name)}`, text: s.name })),
      el('td', { text: s.state }),
      el('td', { text: s.objectives.map((o) => `${o.goal === 'maximize' ? 'max' : 'min'} ${o.name}`).join(', ') }),
      el('td', { class: 'num', text: s.trial_count }),
      el('td', { class: 'num', text: s.completed_count }),
      el('td', { text: when(s.created) })));
    if (!rows.length) rows.push(el('tr', {}, el('td', { colspan: 6, text: 'No studies yet.' })));
    this.table.replaceChildren(el('thead', {}, head), el('tbody', {}, ...rows));
  }
}

// ---- one study ----------------------------------------------------------------------------
class StudyView {
  constructor(name) {
    this.name = name;
    this.last = null;
    this.data = null;
    this.sort = { key: 'id', dir: 1 };
    this.filter = { state: '', origin: '' };
    this.objective = 0;
    this.pareto = [0, 1];
    this.llmAfter = 0;
    this.llmRows = [];
    $('crumb').replaceChildren(el('span', { text: ' / ' }), el('span', { text: name }));
    const m = $('main');
    m.replaceChildren(
      el('h1', { id: 'study-name', text: name }),
      el('section', { id: 'summary' }),
      el('section', { class: 'charts' },
        el('div', { class: 'chart-head' }, el('h2', { text: 'Best so far' }),
          el('label', {}, 'objective ', el('select', { id: 'objective-select', onchange: (e) => { this.objective = +e.target.value; this.draw(); } }))),
        el('div', { id: 'plot-history', class: 'plot' }),
        el('div', { id: 'pareto-section', hidden: true },
          el('div', { class: 'chart-head' }, el('h2', { text: 'Pareto front' }),
            el('label', {}, 'x ', el('select', { id: 'pareto-x', onchange: (e) => { this.pareto[0] = +e.target.value; this.draw(); } })),
            el('label', {}, ' y ', el('select', { id: 'pareto-y', onchange: (e) => { this.pareto[1] = +e.target.value; this.draw(); } }))),
          el('div', { id: 'plot-pareto', class: 'plot' })),
        el('h2', { text: 'Parameters vs objective' }),
        el('div', { id: 'plot-params', class: 'plot' }),
        el('div', { id: 'intermediate-section', hidden: true },
          el('h2', { text: 'Intermediate values' }),
          el('div', { id: 'plot-intermediate', class: 'plot' }))),
      el('section', {},
        el('div', { class: 'chart-head' }, el('h2', { text: 'Trials' }),
          el('label', {}, 'state ', el('select', { id: 'state-filter', onchange: (e) => { this.filter.state = e.target.value; this.drawTable(); } })),
          el('label', {}, ' origin ', el('select', { id: 'origin-filter', onchange: (e) => { this.filter.origin = e.target.value; this.drawTable(); } })),
          el('span', { id: 'trial-count' })),
        el('div', { class: 'scroll' }, el('table', { id: 'trials-table', class: 'grid' }))),
      el('section', {},
        el('h2', { text: 'LLM calls' }),
        el('div', { class: 'scroll' }, el('table', { id: 'llm-table', class: 'grid' }))));
  }

  async refresh() {
    let got;
    try {
      got = await api(`api/studies/${encodeURIComponent(this.name)}`);
    } catch (e) {
      if (e instanceof NotFound) {
        $('main').replaceChildren(el('h1', { text: this.name }), el('p', { class: 'bad', text: e.message }));
        view = null;
        return;
      }
      throw e;
    }
    await this.refreshLlm();
    if (got.text === this.last) return;
    this.last = got.text;
    this.data = got.body;
    this.drawSummary();
    this.fillSelects();
    this.draw();
    this.drawTable();
  }

  get objectives() { return this.data.study.objectives; }

  drawSummary() {
    const s = this.data.study;
    const spec = s.spec;
    const best = new Set(this.data.best);
    const bestTrials = this.data.trials.filter((t) => best.has(t.id));
    const objs = s.objectives.map((o) => `${o.goal} ${o.name}`).join(', ');
    const cons = spec.outcome_constraints.map((c) => `${c.metric} ${c.op} ${fmt(c.bound)}`).join(', ');
    const items = [
      ['state', s.state + (s.state_reason ? ` (${s.state_reason})` : '')],
      ['objectives', objs],
      ['constraints', cons || 'none'],
      ['trials', `${s.trial_count} (${s.completed_count} completed)`],
      ['created', when(s.created)],
    ];
    if (bestTrials.length === 1) {
      const b = bestTrials[0];
      items.push(['best', `trial ${b.id}: ${s.objectives.map((o) => `${o.name} = ${fmt(b.metrics[o.name])}`).join(', ')}`]);
    } else if (bestTrials.length > 1) {
      items.push(['Pareto front', `${bestTrials.length} trials`]);
    }
    const dl = el('dl', { id: 'study-summary' });
    for (const [k, v] of items) dl.append(el('dt', { text: k }), el('dd', { text: v }));
    const parts = [dl];
    if (s.description) parts.push(el('p', { class: 'description', text: s.description }));
    $('summary').replaceChildren(...parts);
  }

  fillSelects() {
    const names = this.objectives.map((o) => o.name);
    const fill = (sel, options, value) => {
      const cur = options.map(([v, label]) => `${v}:${label}`).join('|');
      if (sel.dataset.options !== cur) {
        sel.replaceChildren(...options.map(([v, label]) => el('option', { value: v, text: label })));
        sel.dataset.options = cur;
      }
      sel.value = value;
    };
    fill($('objective-select'), names.map((n, i) => [i, n]), this.objective);
    $('objective-select').parentElement.hidden = names.length < 2;
    fill($('pareto-x'), names.map((n, i) => [i, n]), this.pareto[0]);
    fill($('pareto-y'), names.map((n, i) => [i, n]), this.pareto[1]);
    fill($('state-filter'), [['', 'all'], ...STATES.map((s) => [s, s.toLowerCase()])], this.filter.state);
    const origins = [...new Set(this.data.trials.map((t) => t.origin))].sort();
    fill($('origin-filter'), [['', 'all'], ...origins.map((o) => [o, o])], this.filter.origin);
  }

  completed() {
    return this.data.trials.filter((t) => t.state === 'COMPLETED');
  }

  draw() {
    this.drawHistory();
    this.drawPareto();
    this.drawParams();
    this.drawIntermediates();
  }

  // Objective values by trial, feasible / infeasible, and the best-so-far line over feasible ones.
  drawHistory() {
    const o = this.objectives[this.objective];
    const sign = o.goal === 'maximize' ? 1 : -1;
    const done = this.completed().filter((t) => o.name in t.metrics);
    const feas = done.filter((t) => t.feasible);
    const infeas = done.filter((t) => !t.feasible);
    const bx = [];
    const by = [];
    let best = null;
    for (const t of feas) {
      const v = t.metrics[o.name];
      if (best === null || sign * v > sign * best) best = v;
      bx.push(t.id);
      by.push(best);
    }
    const traces = [
      { name: 'feasible', x: feas.map((t) => t.id), y: feas.map((t) => t.metrics[o.name]), mode: 'markers', type: 'scatter', marker: { color: '#1f77b4', size: 7 }, text: feas.map((t) => t.origin), hovertemplate: 'trial %{x}<br>%{y}<br>%{text}<extra></extra>' },
      { name: 'best so far', x: bx, y: by, mode: 'lines', type: 'scatter', line: { shape: 'hv', color: '#d62728', width: 2 } },
    ];
    if (infeas.length) {
      traces.splice(1, 0, { name: 'infeasible', x: infeas.map((t) => t.id), y: infeas.map((t) => t.metrics[o.name]), mode: 'markers', type: 'scatter', marker: { color: '#aaa', symbol: 'x', size: 7 } });
    }
    Plotly.react('plot-history', traces, {
      margin: { t: 10, r: 10, b: 40, l: 60 }, height: 320,
      xaxis: { title: { text: 'trial' } }, yaxis: { title: { text: o.name } },
      legend: { orientation: 'h', y: 1.12 },
    }, PLOT_CONFIG);
  }

  drawPareto() {
    const objs = this.objectives;
    $('pareto-section').hidden = objs.length < 2;
    if (objs.length < 2) return;
    const [a, b] = [objs[this.pareto[0]], objs[this.pareto[1]]];
    const front = new Set(this.data.best);
    const done = this.completed().filter((t) => a.name in t.metrics && b.name in t.metrics);
    const on = done.filter((t) => front.has(t.id)).sort((p, q) => p.metrics[a.name] - q.metrics[a.name]);
    const off = done.filter((t) => !front.has(t.id));
    const pt = (ts) => ({ x: ts.map((t) => t.metrics[a.name]), y: ts.map((t) => t.metrics[b.name]), text: ts.map((t) => `trial ${t.id}`) });
    Plotly.react('plot-pareto', [
      { name: 'dominated or infeasible', ...pt(off), mode: 'markers', type: 'scatter', marker: { color: '#bbb', size: 7 }, hovertemplate: '%{text}<br>%{x}, %{y}<extra></extra>' },
      { name: 'Pareto front', ...pt(on), mode: 'lines+markers', type: 'scatter', line: { shape: 'hv', color: '#d62728' }, marker: { size: 9 }, hovertemplate: '%{text}<br>%{x}, %{y}<extra></extra>' },
    ], {
      margin: { t: 10, r: 10, b: 40, l: 60 }, height: 360,
      xaxis: { title: { text: `${a.name} (${a.goal})` } }, yaxis: { title: { text: `${b.name} (${b.goal})` } },
      legend: { orientation: 'h', y: 1.12 },
    }, PLOT_CONFIG);
  }

  // One panel per searched parameter: its value against the chosen objective, coloured by trial.
  drawParams() {
    const o = this.objectives[this.objective];
    const params = this.data.study.spec.parameters.filter((p) => p.type !== 'fixed');
    const done = this.completed().filter((t) => o.name in t.metrics);
    const cols = Math.min(3, Math.max(1, params.length));
    const rows = Math.ceil(params.length / cols);
    const layout = {
      grid: { rows, columns: cols, pattern: 'independent', xgap: 0.12, ygap: 0.35 },
      margin: { t: 20, r: 10, b: 40, l: 60 }, height: Math.max(260, 240 * rows), showlegend: false,
    };
    const traces = params.map((p, i) => {
      const ax = i === 0 ? '' : String(i + 1);
      layout[`xaxis${ax}`] = { title: { text: p.name }, type: p.log ? 'log' : (p.type === 'categorical' ? 'category' : '-') };
      layout[`yaxis${ax}`] = { title: { text: i % cols === 0 ? o.name : '' } };
      return {
        x: done.map((t) => t.params[p.name]), y: done.map((t) => t.metrics[o.name]),
        text: done.map((t) => `trial ${t.id}`), xaxis: `x${ax}`, yaxis: `y${ax}`,
        mode: 'markers', type: 'scatter', hovertemplate: '%{text}<br>%{x}: %{y}<extra></extra>',
        marker: { size: 6, color: done.map((t) => t.id), colorscale: 'Viridis', showscale: i === 0, colorbar: { title: { text: 'trial' }, thickness: 10 } },
      };
    });
    Plotly.react('plot-params', traces, layout, PLOT_CONFIG);
  }

  drawIntermediates() {
    const curves = this.data.intermediates;
    const ids = Object.keys(curves);
    $('intermediate-section').hidden = ids.length === 0;
    if (!ids.length) return;
    const state = new Map(this.data.trials.map((t) => [String(t.id), t.state]));
    const colour = { COMPLETED: '#1f77b4', PENDING: '#2ca02c', FAILED: '#d62728', ABANDONED: '#999' };
    const traces = ids.map((id) => ({
      name: `trial ${id} (${(state.get(id) || '').toLowerCase()})`,
      x: curves[id].map((p) => p[0]), y: curves[id].map((p) => p[1]),
      mode: 'lines+markers', type: 'scatter', line: { color: colour[state.get(id)] || '#999', width: 1.5 }, marker: { size: 4 },
    }));
    Plotly.react('plot-intermediate', traces, {
      margin: { t: 10, r: 10, b: 40, l: 60 }, height: 320, showlegend: false,
      xaxis: { title: { text: 'step' } }, yaxis: { title: { text: this.objectives[0].name } },
    }, PLOT_CONFIG);
  }

  columns() {
    const spec = this.data.study.spec;
    const metrics = [...new Set([...this.objectives.map((o) => o.name),
      ...spec.outcome_constraints.map((c) => c.metric), ...spec.tracked_metrics])];
    return [
      { key: 'id', label: '#', get: (t) => t.id, num: true },
      { key: 'state', label: 'state', get: (t) => t.state },
      { key: 'origin', label: 'origin', get: (t) => t.origin },
      ...metrics.map((m) => ({ key: `m:${m}`, label: m, get: (t) => t.metrics[m], num: true })),
      ...spec.parameters.map((p) => ({ key: `p:${p.name}`, label: p.name, get: (t) => t.params[p.name], num: p.type !== 'categorical' })),
      { key: 'feasible', label: 'feasible', get: (t) => (t.state === 'COMPLETED' ? (t.feasible ? 'yes' : 'no') : '') },
      { key: 'worker', label: 'worker', get: (t) => t.worker },
      { key: 'updated', label: 'updated', get: (t) => t.updated, show: when },
      { key: 'reason', label: 'reason', get: (t) => t.reason },
    ];
  }

  drawTable() {
    if (!this.data) return;
    const cols = this.columns();
    const col = cols.find((c) => c.key === this.sort.key) || cols[0];
    const { state, origin } = this.filter;
    const rows = this.data.trials.filter((t) => (!state || t.state === state) && (!origin || t.origin === origin));
    const dir = this.sort.dir;
    rows.sort((a, b) => {
      const x = col.get(a);
      const y = col.get(b);
      const missing = (x === undefined || x === null || x === '') - (y === undefined || y === null || y === '');
      if (missing) return missing;  // empty cells last in either direction
      if (x < y) return -dir;
      if (x > y) return dir;
      return a.id - b.id;
    });
    const best = new Set(this.data.best);
    const head = el('tr', {}, ...cols.map((c) => el('th', {
      'data-key': c.key, class: c.key === this.sort.key ? (dir > 0 ? 'sorted asc' : 'sorted desc') : 'sortable',
      title: 'sort', onclick: () => { this.sort = { key: c.key, dir: this.sort.key === c.key ? -this.sort.dir : 1 }; this.drawTable(); },
    }, c.label)));
    const body = rows.map((t) => el('tr', { 'data-trial-id': t.id, 'data-state': t.state, 'data-origin': t.origin, class: best.has(t.id) ? 'best' : null },
      ...cols.map((c) => {
        const v = c.get(t);
        return el('td', { class: c.num ? 'num' : null, text: c.show ? c.show(v) : fmt(v) });
      })));
    $('trials-table').replaceChildren(el('thead', {}, head), el('tbody', {}, ...body));
    $('trial-count').textContent = ` ${rows.length} of ${this.data.trials.length} trials`;
  }

  async refreshLlm() {
    for (let more = true; more;) {
      const { body } = await api(`api/studies/${encodeURIComponent(this.name)}/llm_calls?after=${this.llmAfter}&limit=200`);
      more = body.more;
      if (!body.calls.length) break;
      this.llmAfter = body.calls[body.calls.length - 1].id;
      this.llmRows.push(...body.calls);
      this.drawLlm();
    }
    if (!this.llmRows.length) this.drawLlm();
  }

  drawLlm() {
    const head = el('tr', {}, ...['#', 'time', 'purpose', 'model', 'outcome', 'tokens in / out', 'seconds', 'prompt', 'response']
      .map((h) => el('th', { text: h })));
    const text = (label, s) => el('details', {}, el('summary', { text: `${label} (${s.length} chars)` }), el('pre', { text: s }));
    const rows = this.llmRows.map((c) => el('tr', { 'data-call-id': c.id },
      el('td', { class: 'num', text: c.id }), el('td', { text: when(c.created) }),
      el('td', { text: c.purpose }), el('td', { text: c.model }), el('td', { text: c.outcome }),
      el('td', { class: 'num', text: `${c.prompt_tokens} / ${c.completion_tokens}` }),
      el('td', { class: 'num', text: fmt(c.latency_seconds) }),
      el('td', {}, text('prompt', c.prompt)), el('td', {}, text('response', c.response))));
    if (!rows.length) rows.push(el('tr', {}, el('td', { colspan: 9, text: 'No LLM calls for this study.' })));
    $('llm-table').replaceChildren(el('thead', {}, head), el('tbody', {}, ...rows));
  }
}

window.addEventListener('hashchange', route);
document.addEventListener('visibilitychange', () => { if (!document.hidden && view) tick(); });
setupKeyForm();
route();
