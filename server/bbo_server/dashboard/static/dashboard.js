// bbo dashboard: a read-only view of the tenant's studies, refreshed by polling the JSON API.
// Routes: #/ (studies) and #/study/NAME. Charts are Plotly (served from the plotly package);
// every text from the server goes into the page as text (textContent), never as HTML.
'use strict';

const POLL_MS = 2000;  // at least; a slow answer (a huge study) spaces the polls out more
// A study's trials and curves come in pages (the server caps each in count and bytes); the page
// holds at most this many of them, the newest, and says so where a study has more (the session
// item bbo-max-trials lowers it, for a slow browser).
const MAX_TRIALS = Math.min(10000, Number(sessionStorage.getItem('bbo-max-trials')) || 10000);
const MAX_POINTS = 200000;
const TRIAL_PAGE = 1000;
const POINT_PAGE = 10000;
const STUDY_PAGE = 100;  // studies per /api/studies page
const KEY_ITEM = 'bbo-api-key';
const STATES = ['PENDING', 'COMPLETED', 'FAILED', 'ABANDONED', 'PAUSED', 'PRUNED'];
const PLOT_CONFIG = { displaylogo: false, responsive: true };
const MARGIN = { t: 10, r: 10, b: 40, l: 60 };

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

// A labelled <select> or checkbox whose change calls onChange(value).
function select(id, label, onChange) {
  return el('label', {}, `${label} `,
    el('select', { id, onchange: (e) => onChange(e.target.value) }));
}

function checkbox(id, label, onChange) {
  const box = el('input', { id, type: 'checkbox', onchange: (e) => onChange(e.target.checked) });
  return el('label', {}, box, ` ${label}`);
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

const RATE_RETRIES = 5;  // a 429 (the server's --rate-limit) is retried after its Retry-After

async function api(path) {
  const key = sessionStorage.getItem(KEY_ITEM);
  const headers = key ? { Authorization: `Bearer ${key}` } : {};
  let r = await fetch(path, { headers, cache: 'no-store' });
  for (let i = 0; r.status === 429 && i < RATE_RETRIES; i += 1) {
    // wait as told (a slower tick spaces the next polls out too), then ask again
    const wait = Math.min(60, Math.max(1, Number(r.headers.get('retry-after')) || 1));
    await new Promise((done) => { setTimeout(done, wait * 1000); });
    r = await fetch(path, { headers, cache: 'no-store' });
  }
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
let view = null;  // the current view: {refresh()}
let timer = null;

function schedule(tookMs = 0) {
  clearTimeout(timer);
  timer = setTimeout(tick, Math.max(POLL_MS, 4 * tookMs));
}

async function tick() {
  if (!view) return;
  if (document.hidden) { schedule(); return; }
  const v = view;
  const started = performance.now();
  try {
    await v.refresh();
    if (v === view) status(`updated ${new Date().toLocaleTimeString()}`);
  } catch (e) {
    if (v !== view) return;
    if (e instanceof AuthError) { view = null; askForKey(e.message); return; }
    status(`error: ${e.message}`, true);
  }
  if (v === view) schedule(performance.now() - started);
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
  const study = hash.startsWith('study/') ? hash.slice('study/'.length) : null;
  view = study ? new StudyView(study) : new StudiesView();
  tick();
}

// ---- studies ------------------------------------------------------------------------------
class StudiesView {
  constructor() {
    this.last = null;
    this.pages = 1;  // pages of STUDY_PAGE studies shown: "more studies" adds one
    $('crumb').replaceChildren();
    this.table = el('table', { id: 'studies-table', class: 'grid' });
    this.more = el('button', { id: 'more-studies', type: 'button', text: 'more studies' });
    this.more.hidden = true;
    this.more.addEventListener('click', () => { this.pages += 1; this.refresh(); });
    $('main').replaceChildren(el('h1', { text: 'Studies' }), this.table, this.more);
  }

  async refresh() {
    // a page at a time, as many as shown: a tenant's whole list on every poll read every spec
    const studies = [];
    let after = '';
    let more = false;
    for (let i = 0; i < this.pages; i += 1) {
      const query = `limit=${STUDY_PAGE}&after=${encodeURIComponent(after)}`;
      const { body } = await api(`api/studies?${query}`);
      studies.push(...body.studies);
      more = body.more;
      if (!more) break;
      after = body.next;
    }
    const body = { studies };
    const text = JSON.stringify(studies) + more;
    if (text === this.last) return;
    this.last = text;
    this.more.hidden = !more;
    const head = el('tr', {}, ...['study', 'state', 'objectives', 'trials', 'completed', 'created']
      .map((h) => el('th', { text: h })));
    const goals = (s) => s.objectives
      .map((o) => `${o.goal === 'maximize' ? 'max' : 'min'} ${o.name}`).join(', ');
    const rows = body.studies.map((s) => el('tr', { 'data-study': s.name },
      el('td', {}, el('a', { href: `#/study/${encodeURIComponent(s.name)}`, text: s.name })),
      el('td', { text: s.state }),
      el('td', { text: goals(s) }),
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
    this.data = null;  // the summary: study, counts, best trials
    this.uid = null;
    this.trials = [];  // by id: those before the first open one are kept, the rest read again
    this.curves = new Map();  // trial id -> [[step, value]]
    this.curveSig = null;
    this.sort = { key: 'id', dir: 1 };
    this.filter = { state: '', origin: '' };
    this.objective = 0;
    this.logY = false;
    this.pareto = [0, 1];
    this.llmAfter = 0;
    this.llmRows = [];
    const redraw = (f) => (v) => { f(v); this.draw(); };
    const retable = (f) => (v) => { f(v); this.drawTable(); };
    $('crumb').replaceChildren(el('span', { text: ' / ' }), el('span', { text: name }));
    $('main').replaceChildren(
      el('h1', { id: 'study-name', text: name }),
      el('section', { id: 'summary' }),
      el('section', { class: 'charts' },
        el('div', { class: 'chart-head' },
          el('h2', { text: 'Best so far' }),
          select('objective-select', 'objective', redraw((v) => { this.objective = +v; })),
          checkbox('log-y', 'log scale', redraw((v) => { this.logY = v; }))),
        el('div', { id: 'plot-history', class: 'plot' }),
        el('div', { id: 'pareto-section', hidden: true },
          el('div', { class: 'chart-head' },
            el('h2', { text: 'Pareto front' }),
            select('pareto-x', 'x', redraw((v) => { this.pareto[0] = +v; })),
            select('pareto-y', 'y', redraw((v) => { this.pareto[1] = +v; }))),
          el('div', { id: 'plot-pareto', class: 'plot' })),
        el('h2', { text: 'Parameters vs objective' }),
        el('div', { id: 'plot-params', class: 'plot' }),
        el('div', { id: 'intermediate-section', hidden: true },
          el('h2', { text: 'Intermediate values' }),
          el('p', { id: 'intermediate-note', class: 'note', hidden: true }),
          el('div', { id: 'plot-intermediate', class: 'plot' }))),
      el('section', {},
        el('div', { class: 'chart-head' },
          el('h2', { text: 'Trials' }),
          select('state-filter', 'state', retable((v) => { this.filter.state = v; })),
          select('origin-filter', 'origin', retable((v) => { this.filter.origin = v; })),
          el('span', { id: 'trial-count' })),
        el('p', { id: 'trial-note', class: 'note', hidden: true }),
        el('div', { class: 'scroll' }, el('table', { id: 'trials-table', class: 'grid' }))),
      el('section', {},
        el('h2', { text: 'LLM calls' }),
        el('div', { class: 'scroll' }, el('table', { id: 'llm-table', class: 'grid' }))));
  }

  get base() { return `api/studies/${encodeURIComponent(this.name)}`; }

  async refresh() {
    let got;
    try {
      got = await api(this.base);
    } catch (e) {
      if (!(e instanceof NotFound)) throw e;
      $('main').replaceChildren(el('h1', { text: this.name }),
        el('p', { class: 'bad', text: e.message }));
      view = null;
      return;
    }
    if (got.body.study.uid !== this.uid) {  // first read, or the study was deleted and re-created
      this.uid = got.body.study.uid;
      this.trials = [];
      this.curves = new Map();
      this.curveSig = null;
      // the LLM log too: a re-created study's calls are numbered from 1 again, and the old
      // study's must not stay on its page
      this.llmAfter = 0;
      this.llmRows = [];
      $('llm-table').replaceChildren();
    }
    // the newest MAX_TRIALS trials (ids count 1, 2, ... in a study): a study running for months
    // showed its first 10,000 and never a new one
    const floor = Math.max(1, got.body.study.trial_count - MAX_TRIALS + 1);
    const from = Math.max(this.firstOpen(), floor);
    const trialsChanged = await this.loadTrials(from, floor);
    const curvesChanged = await this.loadCurves(from, floor);
    await this.refreshLlm();
    const summaryChanged = got.text !== this.last;
    this.last = got.text;
    this.data = got.body;
    if (!summaryChanged && !trialsChanged && !curvesChanged) return;
    this.drawSummary();
    this.fillSelects();
    this.draw();
    this.drawTable();
  }

  // The first trial whose state may still change (ids only grow; a finished trial stays as it
  // is): every poll reads the trials and curves from it on, and keeps those before it.
  firstOpen() {
    const open = this.trials.find((t) => t.open);
    if (open) return open.id;
    return this.trials.length ? this.trials[this.trials.length - 1].id + 1 : 1;
  }

  // The trials from `from` on, read again; those held from `floor` up to it are kept. At most
  // MAX_TRIALS, the newest (trials asked while the pages are read can go past the count).
  async loadTrials(from, floor) {
    const kept = this.trials.filter((t) => t.id >= floor && t.id < from);
    const fresh = [];
    let after = from - 1;
    while (kept.length + fresh.length < MAX_TRIALS + TRIAL_PAGE) {
      const { body } = await api(`${this.base}/trials?after=${after}&limit=${TRIAL_PAGE}`);
      fresh.push(...body.trials);
      if (!body.more || !body.trials.length) break;
      after = body.trials[body.trials.length - 1].id;
    }
    const old = this.trials.filter((t) => t.id >= from);
    const all = kept.concat(fresh).slice(-MAX_TRIALS);
    const changed = all.length !== kept.length + fresh.length
      || kept.length + old.length !== this.trials.length
      || JSON.stringify(old) !== JSON.stringify(fresh);
    if (changed) this.trials = all;
    return changed;
  }

  // Curves from trial `from` on (none past the last trial held, none before the first),
  // at most MAX_POINTS in all.
  async loadCurves(from, floor) {
    const last = this.trials.length ? this.trials[this.trials.length - 1].id : 0;
    const first = this.trials.length ? this.trials[0].id : floor;
    for (const id of [...this.curves.keys()]) if (id < first) this.curves.delete(id);
    let room = MAX_POINTS;
    for (const [id, pts] of this.curves) if (id < from) room -= pts.length;
    const points = [];
    let cursor = `after=${from - 1}`;
    let truncated = false;
    for (let more = true; more;) {
      const { body } = await api(`${this.base}/intermediates?${cursor}&limit=${POINT_PAGE}`);
      more = body.more;
      for (const p of body.points) {
        if (p[0] > last) { more = false; break; }
        if (points.length >= room) { truncated = true; more = false; break; }
        points.push(p);
      }
      if (!body.points.length) break;
      const [id, step] = body.points[body.points.length - 1];
      cursor = `after=${id}&after_step=${step}`;
    }
    const sig = `${from}:${truncated}:${JSON.stringify(points)}`;
    if (sig === this.curveSig) return false;
    this.curveSig = sig;
    for (const id of [...this.curves.keys()]) if (id >= from) this.curves.delete(id);
    for (const [id, step, value] of points) {
      if (!this.curves.has(id)) this.curves.set(id, []);
      this.curves.get(id).push([step, value]);
    }
    this.curvesTruncated = truncated;
    return true;
  }

  get objectives() { return this.data.study.objectives; }

  drawSummary() {
    const s = this.data.study;
    const bestTrials = this.data.best;
    const cons = s.spec.outcome_constraints.map((c) => `${c.metric} ${c.op} ${fmt(c.bound)}`);
    const items = [
      ['state', s.state + (s.state_reason ? ` (${s.state_reason})` : '')],
      ['objectives', s.objectives.map((o) => `${o.goal} ${o.name}`).join(', ')],
      ['constraints', cons.join(', ') || 'none'],
      ['trials', `${s.trial_count} (${STATES.filter((k) => this.data.counts[k])
        .map((k) => `${this.data.counts[k]} ${k.toLowerCase()}`).join(', ') || 'none yet'})`],
      ['created', when(s.created)],
    ];
    if (bestTrials.length === 1) {
      const b = bestTrials[0];
      const values = s.objectives.map((o) => `${o.name} = ${fmt(b.metrics[o.name])}`);
      items.push(['best', `trial ${b.id}: ${values.join(', ')}`]);
      // on a noisy objective the model chose it (GetBest's selection) and estimates its value
      if (this.data.selection) items.push(['chosen by', this.data.selection]);
      const e = this.data.estimate;
      if (e) items.push(['model estimate', `${fmt(e.value)} (${fmt(e.lower)} to ${fmt(e.upper)})`]);
    } else if (bestTrials.length > 1) {
      const n = this.data.best_count;
      items.push(['Pareto front', n > bestTrials.length
        ? `${n} trials (the first ${bestTrials.length} marked)` : `${n} trials`]);
    }
    const dl = el('dl', { id: 'study-summary' });
    for (const [k, v] of items) dl.append(el('dt', { text: k }), el('dd', { text: v }));
    const parts = [dl];
    if (s.description) parts.push(el('p', { class: 'description', text: s.description }));
    $('summary').replaceChildren(...parts);
  }

  fillSelects() {
    const fill = (sel, options, value) => {
      const sig = options.map(([v, label]) => `${v}:${label}`).join('|');
      if (sel.dataset.options !== sig) {
        const opts = options.map(([v, label]) => el('option', { value: v, text: label }));
        sel.replaceChildren(...opts);
        sel.dataset.options = sig;
      }
      sel.value = value;
    };
    const names = this.objectives.map((o, i) => [i, o.name]);
    fill($('objective-select'), names, this.objective);
    $('objective-select').parentElement.hidden = names.length < 2;
    fill($('pareto-x'), names, this.pareto[0]);
    fill($('pareto-y'), names, this.pareto[1]);
    const states = STATES.map((s) => [s, s.toLowerCase()]);
    fill($('state-filter'), [['', 'all'], ...states], this.filter.state);
    const origins = [...new Set(this.trials.map((t) => t.origin))].sort();
    fill($('origin-filter'), [['', 'all'], ...origins.map((o) => [o, o])], this.filter.origin);
  }

  completed() {
    return this.trials.filter((t) => t.state === 'COMPLETED');
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
    const points = (ts) => ({
      x: ts.map((t) => t.id), y: ts.map((t) => t.metrics[o.name]),
      text: ts.map((t) => t.origin),
      mode: 'markers', type: 'scatter', hovertemplate: 'trial %{x}<br>%{y}<br>%{text}',
    });
    const traces = [{ name: 'feasible', ...points(feas), marker: { color: '#1f77b4', size: 7 } }];
    if (infeas.length) {
      traces.push({
        name: 'infeasible', ...points(infeas), marker: { color: '#aaa', symbol: 'x', size: 7 },
      });
    }
    traces.push({
      name: 'best so far', x: bx, y: by, mode: 'lines', type: 'scatter',
      line: { shape: 'hv', color: '#d62728', width: 2 },
    });
    const canLog = done.length > 0 && done.every((t) => t.metrics[o.name] > 0);
    $('log-y').disabled = !canLog;
    Plotly.react('plot-history', traces, {
      margin: MARGIN, height: 320, legend: { orientation: 'h', y: 1.12 },
      xaxis: { title: { text: 'trial' } },
      yaxis: { title: { text: o.name }, type: this.logY && canLog ? 'log' : 'linear' },
    }, PLOT_CONFIG);
  }

  drawPareto() {
    const objs = this.objectives;
    $('pareto-section').hidden = objs.length < 2;
    if (objs.length < 2) return;
    const [a, b] = [objs[this.pareto[0]], objs[this.pareto[1]]];
    const front = new Set(this.data.best.map((t) => t.id));
    const done = this.completed().filter((t) => a.name in t.metrics && b.name in t.metrics);
    const on = done.filter((t) => front.has(t.id))
      .sort((p, q) => p.metrics[a.name] - q.metrics[a.name]);
    const off = done.filter((t) => !front.has(t.id));
    const points = (ts) => ({
      x: ts.map((t) => t.metrics[a.name]), y: ts.map((t) => t.metrics[b.name]),
      text: ts.map((t) => `trial ${t.id}`), type: 'scatter',
      hovertemplate: '%{text}<br>%{x}, %{y}<extra></extra>',
    });
    Plotly.react('plot-pareto', [
      { name: 'dominated or infeasible', ...points(off), mode: 'markers',
        marker: { color: '#bbb', size: 7 } },
      { name: 'Pareto front', ...points(on), mode: 'lines+markers',
        line: { shape: 'hv', color: '#d62728' }, marker: { size: 9 } },
    ], {
      margin: MARGIN, height: 360, legend: { orientation: 'h', y: 1.12 },
      xaxis: { title: { text: `${a.name} (${a.goal})` } },
      yaxis: { title: { text: `${b.name} (${b.goal})` } },
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
      margin: { ...MARGIN, t: 20 }, height: Math.max(260, 240 * rows), showlegend: false,
    };
    const traces = params.map((p, i) => {
      const ax = i === 0 ? '' : String(i + 1);
      const type = p.log ? 'log' : (p.type === 'categorical' ? 'category' : '-');
      layout[`xaxis${ax}`] = { title: { text: p.name }, type };
      layout[`yaxis${ax}`] = { title: { text: i % cols === 0 ? o.name : '' } };
      return {
        x: done.map((t) => t.params[p.name]), y: done.map((t) => t.metrics[o.name]),
        text: done.map((t) => `trial ${t.id}`), xaxis: `x${ax}`, yaxis: `y${ax}`,
        mode: 'markers', type: 'scatter', hovertemplate: '%{text}<br>%{x}: %{y}<extra></extra>',
        marker: {
          size: 6, color: done.map((t) => t.id), colorscale: 'Viridis', showscale: i === 0,
          colorbar: { title: { text: 'trial' }, thickness: 10 },
        },
      };
    });
    Plotly.react('plot-params', traces, layout, PLOT_CONFIG);
  }

  drawIntermediates() {
    const curves = this.curves;
    const ids = [...curves.keys()];
    $('intermediate-section').hidden = ids.length === 0;
    if (!ids.length) return;
    const note = $('intermediate-note');
    note.hidden = !this.curvesTruncated;
    note.textContent = `Showing the first ${MAX_POINTS} intermediate values (of trials up to `
      + `${ids[ids.length - 1]}): the page holds no more.`;
    const state = new Map(this.trials.map((t) => [t.id, t.state]));
    const colour = { COMPLETED: '#1f77b4', PENDING: '#2ca02c', FAILED: '#d62728' };
    const traces = ids.map((id) => ({
      name: `trial ${id} (${(state.get(id) || '').toLowerCase()})`,
      x: curves.get(id).map((p) => p[0]), y: curves.get(id).map((p) => p[1]),
      mode: 'lines+markers', type: 'scatter', marker: { size: 4 },
      line: { color: colour[state.get(id)] || '#999', width: 1.5 },
    }));
    Plotly.react('plot-intermediate', traces, {
      margin: MARGIN, height: 320, showlegend: false,
      xaxis: { title: { text: 'step' } }, yaxis: { title: { text: this.objectives[0].name } },
    }, PLOT_CONFIG);
  }

  columns() {
    const spec = this.data.study.spec;
    const metrics = [...new Set([...this.objectives.map((o) => o.name),
      ...spec.outcome_constraints.map((c) => c.metric), ...spec.tracked_metrics])];
    const feasible = (t) => (t.state === 'COMPLETED' ? (t.feasible ? 'yes' : 'no') : '');
    return [
      { key: 'id', label: '#', get: (t) => t.id, num: true },
      { key: 'state', label: 'state', get: (t) => t.state },
      { key: 'origin', label: 'origin', get: (t) => t.origin },
      ...metrics.map((m) => ({ key: `m:${m}`, label: m, get: (t) => t.metrics[m], num: true })),
      ...spec.parameters.map((p) => ({
        key: `p:${p.name}`, label: p.name, get: (t) => t.params[p.name],
        num: p.type !== 'categorical',
      })),
      { key: 'feasible', label: 'feasible', get: feasible },
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
    const rows = this.trials
      .filter((t) => (!state || t.state === state) && (!origin || t.origin === origin));
    const dir = this.sort.dir;
    const empty = (v) => v === undefined || v === null || v === '';
    rows.sort((a, b) => {
      const x = col.get(a);
      const y = col.get(b);
      if (empty(x) || empty(y)) return empty(x) - empty(y) || a.id - b.id;  // empty cells last
      if (x < y) return -dir;
      if (x > y) return dir;
      return a.id - b.id;
    });
    const best = new Set(this.data.best.map((t) => t.id));
    const sortBy = (key) => () => {
      this.sort = { key, dir: this.sort.key === key ? -this.sort.dir : 1 };
      this.drawTable();
    };
    const order = dir > 0 ? 'asc' : 'desc';
    const sorted = (key) => (key === this.sort.key ? `sorted ${order}` : 'sortable');
    const head = el('tr', {}, ...cols.map((c) => el('th', {
      'data-key': c.key, class: sorted(c.key), title: 'sort', onclick: sortBy(c.key),
    }, c.label)));
    const body = rows.map((t) => el('tr', {
      'data-trial-id': t.id, 'data-state': t.state, 'data-origin': t.origin,
      class: best.has(t.id) ? 'best' : null,
    }, ...cols.map((c) => {
      const v = c.get(t);
      return el('td', { class: c.num ? 'num' : null, text: c.show ? c.show(v) : fmt(v) });
    })));
    $('trials-table').replaceChildren(el('thead', {}, head), el('tbody', {}, ...body));
    $('trial-count').textContent = ` ${rows.length} of ${this.trials.length} trials`;
    const total = this.data.study.trial_count;
    const note = $('trial-note');
    note.hidden = this.trials.length < MAX_TRIALS || total <= this.trials.length;
    note.textContent = `Showing the newest ${this.trials.length} of ${total} trials: the page `
      + `holds at most ${MAX_TRIALS} (the API pages through all of them).`;
  }

  // The LLM log only grows: fetch the calls after the last one seen, a page at a time.
  async refreshLlm() {
    const base = `${this.base}/llm_calls`;
    let fresh = false;
    for (let more = true; more;) {
      const { body } = await api(`${base}?after=${this.llmAfter}&limit=200`);
      more = body.more;
      if (!body.calls.length) break;
      this.llmAfter = body.calls[body.calls.length - 1].id;
      this.llmRows.push(...body.calls);
      fresh = true;
    }
    if (fresh || !$('llm-table').firstChild) this.drawLlm();
  }

  drawLlm() {
    const labels = ['#', 'time', 'purpose', 'model', 'outcome', 'tokens in / out', 'seconds',
      'prompt', 'response'];
    const head = el('tr', {}, ...labels.map((h) => el('th', { text: h })));
    const text = (label, s) => el('details', {},
      el('summary', { text: `${label} (${s.length} chars)` }), el('pre', { text: s }));
    const rows = this.llmRows.map((c) => el('tr', { 'data-call-id': c.id },
      el('td', { class: 'num', text: c.id }), el('td', { text: when(c.created) }),
      el('td', { text: c.purpose }), el('td', { text: c.model }), el('td', { text: c.outcome }),
      el('td', { class: 'num', text: `${c.prompt_tokens} / ${c.completion_tokens}` }),
      el('td', { class: 'num', text: fmt(c.latency_seconds) }),
      el('td', {}, text('prompt', c.prompt)), el('td', {}, text('response', c.response))));
    if (!rows.length) {
      rows.push(el('tr', {}, el('td', { colspan: 9, text: 'No LLM calls for this study.' })));
    }
    $('llm-table').replaceChildren(el('thead', {}, head), el('tbody', {}, ...rows));
  }
}

window.addEventListener('hashchange', route);
document.addEventListener('visibilitychange', () => { if (!document.hidden && view) tick(); });
setupKeyForm();
route();
