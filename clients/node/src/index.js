// Node.js client for bbo. Loads the same proto/bbo/v1 files the server is built from, so it never
// drifts from the API. Promise-based; plain JS objects in and out.
'use strict';

const path = require('path');
const crypto = require('crypto');
const fs = require('fs');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const { Reader } = require('protobufjs');
const cliProgress = require('cli-progress');
const { RequestChecker, RequestError, show } = require('./check');

const BEST_EVERY_MS = 2000; // at least this long between the progress bar's reads of the best
const MAX_TIMER_MS = 2 ** 31 - 1;  // the longest delay setInterval keeps
// characters of fn's error kept as its trial's reason (the Python client's cut): a message past the
// server's 4 MiB a request would refuse the Tell, the trial left PENDING
const MAX_REASON = 2000;

function protoRoot() {
  const candidates = [
    process.env.BBO_PROTO_DIR,
    path.resolve(__dirname, '..', '..', '..', 'proto'),
    path.resolve(__dirname, '..', 'proto'),
  ].filter(Boolean);
  for (const c of candidates) {
    if (fs.existsSync(path.join(c, 'bbo', 'v1', 'service.proto'))) return c;
  }
  throw new Error('bbo protos not found: set BBO_PROTO_DIR to the folder holding bbo/v1/*.proto');
}

function loadService() {
  const root = protoRoot();
  const def = protoLoader.loadSync(path.join(root, 'bbo', 'v1', 'service.proto'), {
    includeDirs: [root],
    keepCase: true,
    longs: Number,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(def).bbo.v1.BboService;
}

let checker = null;  // one per process: the protos do not change under it

// `request` checked against the proto and with enum shorthands spelled out (see check.js); a
// request protobufjs would silently change is refused as the server would refuse it.
function checkedRequest(method, request) {
  checker = checker || new RequestChecker(protoRoot());
  try {
    return checker.check(method, request);
  } catch (e) {
    if (e instanceof RequestError) throw invalidArgument(e.field, e.detail);
    throw e;
  }
}

// {lr: 0.1, layers: 3, opt: 'adam'} <-> map<string, ParameterValue>
// {x: 0.5, k: 3, opt: 'adam'} -> map<string, ParameterValue>. A value that is neither a number nor
// a string is refused here: protobufjs would encode true as 1 and [0.5] as 0.5, a point never meant.
function toParameterValues(params) {
  if (params == null || typeof params !== 'object' || Array.isArray(params)) {
    throw invalidArgument('parameters', `must be an object of parameter values, e.g. {x: 0.5}, got ${show(params)}`);
  }
  const out = {};
  for (const [k, v] of Object.entries(params)) {
    if (typeof v === 'string') out[k] = { category: v };
    else if (typeof v !== 'number') {
      throw invalidArgument(`parameters['${k}']`, `a parameter value is a number or a choice's string, got ${show(v)}`);
    } else if (Number.isSafeInteger(v)) out[k] = { integer: v };
    else out[k] = { number: v };  // past 2**53 as a double: int64 would clip 1e20 to 2**63 - 1
  }
  return out;
}

function fromParameterValues(values) {
  const out = {};
  for (const [k, v] of Object.entries(values || {})) out[k] = v[v.kind];
  return out;
}

// {loss: 0.42} or {loss: {value, sem}} -> map<string, MetricValue> (none: {}). Anything else is
// refused here, INVALID_ARGUMENT as the server refuses NaN: protobufjs would encode a string, a
// boolean or an array as 0, a COMPLETED trial with a value never measured.
function toMetrics(metrics) {
  if (metrics == null) return {};
  if (typeof metrics !== 'object' || Array.isArray(metrics)) {
    throw invalidArgument('metrics', `must be an object of metric values, e.g. {loss: 0.42}, got ${show(metrics)}`);
  }
  const out = {};
  for (const [k, v] of Object.entries(metrics)) {
    const split = v !== null && typeof v === 'object' && !Array.isArray(v);
    const [value, sem] = split ? [v.value, v.sem] : [v, undefined];
    if (typeof value !== 'number' || (sem != null && typeof sem !== 'number')) {
      throw invalidArgument(`metrics['${k}']`, `metric value must be a number (or {value, sem} of numbers), got ${show(v)}`);
    }
    out[k] = sem == null ? { value } : { value, sem };
  }
  return out;
}

// A trial's reason from any text: at most MAX_REASON characters, half a surrogate pair (in the text,
// or where the cut falls) as U+FFFD: protobufjs sends it as bytes that are not UTF-8, and the server
// refuses the Tell.
function reasonText(text) {
  return String(text).slice(0, MAX_REASON).replace(/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g, '\ufffd');
}

// google.protobuf.Timestamp -> seconds since the epoch (null when unset)
function seconds(ts) {
  return ts && (Number(ts.seconds) || ts.nanos) ? Number(ts.seconds) + (ts.nanos || 0) / 1e9 : null;
}

function fromTrial(t) {
  const metrics = {};
  const sems = {};  // the standard errors told with the metrics that had one
  for (const [k, m] of Object.entries(t.metrics || {})) {
    metrics[k] = m.value;
    if (m.sem != null) sems[k] = m.sem;
  }
  return {
    id: Number(t.id),
    parameters: fromParameterValues(t.parameters),
    state: String(t.state).replace('TRIAL_STATE_', ''),
    metrics,
    sems,
    origin: t.origin,
    reason: t.reason,
    rationale: t.rationale,
    workerId: t.worker_id,
    studyUid: t.study_uid || '',
    created: seconds(t.create_time),
    updated: seconds(t.update_time),
    leaseExpires: seconds(t.lease_expire_time),
    // studies with a fidelity: the budget to run to (or measured at), the Hyperband bracket, and
    // for a continued trial the budget it already reached (resume from there); null without one
    budget: t.budget || null,
    bracket: Number(t.bracket || 0),
    resumeBudget: t.resume_budget || null,
  };
}

// A bbo.v1.Study -> the study's info: name, uid (this incarnation), spec (the stored StudySpec),
// state ('ACTIVE' or 'LIKELY_INFEASIBLE'), stateReason, trialCount, completedCount, created
// (seconds since the epoch), transfer (sources and weights, or null); the Python StudyInfo's.
function fromStudy(s) {
  return {
    name: s.name,
    uid: s.uid,
    spec: s.spec,
    state: String(s.state).replace('STUDY_STATE_', ''),
    stateReason: s.state_reason,
    trialCount: Number(s.trial_count),
    completedCount: Number(s.completed_count),
    created: seconds(s.create_time),
    transfer: s.transfer || null,
  };
}

// Thrown by the report function optimize() hands an objective when the study's pruning policy
// says to stop the trial; optimize then tells it PRUNED with its last value.
class TrialPruned extends Error {
  constructor(reason, step, value) {
    super(reason || 'pruned');
    this.reason = reason || '';
    this.step = step;
    this.value = value;
  }
}

function fromLlmCall(c) {
  return {
    purpose: c.purpose, model: c.model, prompt: c.prompt, response: c.response, outcome: c.outcome,
    promptTokens: c.prompt_tokens, completionTokens: c.completion_tokens, latencySeconds: c.latency_seconds,
    created: seconds(c.create_time),
  };
}

// The lease the server granted a trial (its own clock on both ends), else 600 s; from its last
// update (its ask): a paused trial continued by promotion was created rungs earlier.
function leaseSeconds(trial) {
  const from = trial.updated != null ? trial.updated : trial.created;
  const granted = trial.leaseExpires != null && from != null ? trial.leaseExpires - from : 0;
  return granted > 0 ? granted : 600;
}

// Seconds a refusal asks the caller to wait (google.rpc.RetryInfo in the grpc-status-details-bin
// trailer, as the server sends with a rate-limit refusal), or null when it carries none.
function retryDelay(err) {
  const raw = err && err.metadata ? err.metadata.get('grpc-status-details-bin') : [];
  if (!raw || !raw.length) return null;
  try {
    const status = new Reader(Buffer.from(raw[0]));
    while (status.pos < status.len) {  // google.rpc.Status: details = 3 (google.protobuf.Any)
      const tag = status.uint32();
      if (tag >>> 3 !== 3) { status.skipType(tag & 7); continue; }
      const any = new Reader(status.bytes());
      let typeUrl = '';
      let value = null;
      while (any.pos < any.len) {
        const t = any.uint32();
        if (t >>> 3 === 1) typeUrl = any.string();
        else if (t >>> 3 === 2) value = any.bytes();
        else any.skipType(t & 7);
      }
      if (!typeUrl.endsWith('/google.rpc.RetryInfo') || !value) continue;
      const info = new Reader(value);
      while (info.pos < info.len) {
        const t = info.uint32();
        if (t >>> 3 !== 1) { info.skipType(t & 7); continue; }
        const d = new Reader(info.bytes());  // google.protobuf.Duration
        let secs = 0;
        let nanos = 0;
        while (d.pos < d.len) {
          const u = d.uint32();
          if (u >>> 3 === 1) secs = Number(d.int64());
          else if (u >>> 3 === 2) nanos = d.int32();
          else d.skipType(u & 7);
        }
        return secs + nanos / 1e9;
      }
    }
  } catch (e) {
    return null;  // a malformed trailer: treat the refusal as carrying no advice
  }
  return null;
}

// Resolves after ms, or as soon as signal (an AbortSignal, optional) aborts.
function sleep(ms, signal = null) {
  return new Promise((resolve) => {
    if (signal && signal.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      if (signal) signal.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    if (signal) signal.addEventListener('abort', done, { once: true });
  });
}

// The error a call or optimize() rejects with once its AbortSignal aborts: CANCELLED, as a call
// after close(), with the signal's reason as its cause.
function aborted(signal) {
  const reason = signal.reason;
  const why = reason && reason.message ? reason.message : String(reason ?? 'aborted');
  const err = new BboError({ code: grpc.status.CANCELLED, details: `aborted: ${why}` });
  err.cause = reason;
  return err;
}

// gRPC's own refusal past a server's maximum_concurrent_rpcs (bbo's backstop behind
// --max-concurrent-rpcs) carries no RetryInfo, yet the same call passes once the burst is over.
const GRPC_CONCURRENCY_REFUSAL = 'Concurrent RPC limit exceeded!';

// A failure retried with backoff though the server named no delay: the server is away (restarting,
// not up yet), or gRPC refused the call past the server's concurrent calls.
function retryableWithoutDelay(e) {
  return e.code === grpc.status.UNAVAILABLE
    || (e.code === grpc.status.RESOURCE_EXHAUSTED && e.message === GRPC_CONCURRENCY_REFUSAL);
}

// The same call may pass later (the Python client's retryable): as above, or the server said when
// to come back (a RetryInfo: --rate-limit, --max-concurrent-rpcs).
function retryable(e) {
  return e.retryAfter != null || retryableWithoutDelay(e);
}

// A failure after which the call may have run on the server with its answer lost: the connection
// broke (UNAVAILABLE; also when the call never left, which cannot be told apart) or its deadline
// passed. A retry's answer then says what became of it (see Client.deleteStudy).
function answerLost(e) {
  return e.code === grpc.status.UNAVAILABLE || e.code === grpc.status.DEADLINE_EXCEEDED;
}

// A trial (as ask returns it) or a bare trial id -> the request fields naming it. A trial carries
// its study's uid, so a tell never reaches a study deleted and created again under the same name.
function trialRef(trial) {
  if (typeof trial === 'object' && trial !== null) return { trial_id: trial.id, study_uid: trial.studyUid || '' };
  return { trial_id: trial };
}

class BboError extends Error {
  constructor(err) {
    super(err.details || err.message);
    this.code = err.code;
    this.codeName = Object.keys(grpc.status).find((k) => grpc.status[k] === err.code);
    this.retryAfter = retryDelay(err);  // seconds the server asked to wait before retrying, or null
  }
}

// A call after close(): grpc-js throws a plain Error ("Channel has been shut down"); give a code.
function closedError() {
  return new BboError({ code: grpc.status.CANCELLED, details: 'the client is closed: make a new Client' });
}

// A request refused before it is sent, as the server would refuse it ("field: what to fix").
function invalidArgument(field, message) {
  return new BboError({ code: grpc.status.INVALID_ARGUMENT, details: `${field}: ${message}` });
}

// A PEM option: a file path (string) or the PEM itself (Buffer, or a string holding '-----BEGIN').
function readPem(value, what) {
  if (value == null || value === '') return null;
  if (Buffer.isBuffer(value)) return value;
  if (typeof value === 'string') return value.includes('-----BEGIN') ? Buffer.from(value) : fs.readFileSync(value);
  throw new TypeError(`${what} must be a file path, a PEM string or a Buffer`);
}

// TLS channel credentials from the options (and the env variables the Python client reads), or
// null for plaintext. Same rules as bbo_client: a client certificate needs both cert and key.
function tlsCredentials(options) {
  const env = process.env;
  const ca = options.tlsCa || env.BBO_TLS_CA || null;
  const cert = options.tlsCert || env.BBO_CLIENT_CERT || null;
  const key = options.tlsKey || env.BBO_CLIENT_KEY || null;
  if (!(options.tls || ca || cert || key)) return null;
  if (Boolean(cert) !== Boolean(key)) throw new Error('a client certificate needs both tlsCert and tlsKey');
  return grpc.credentials.createSsl(readPem(ca, 'tlsCa'), readPem(key, 'tlsKey'), readPem(cert, 'tlsCert'));
}

// A duration option in ms: a finite number from `low` (0 or undefined: the default). Infinity or a
// string ('5000') made every call's deadline an invalid date, so each failed DEADLINE_EXCEEDED.
function timeOption(options, name, fallback, low = 1) {
  const v = options[name];
  if (v === undefined || v === null || (v === 0 && low > 0)) return fallback;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < low) {
    throw new TypeError(`${name} must be a finite number of milliseconds >= ${low}, got ${String(v)}`);
  }
  return v;
}

class Client {
  // address: "host:port". Options (each also read from the env variable the Python client uses):
  //   apiKey (BBO_API_KEY): sent as "authorization: Bearer <key>" metadata on every call;
  //   tls: true for TLS with the system's root certificates;
  //   tlsCa (BBO_TLS_CA): root certificate(s) to trust (path or PEM; implies TLS);
  //   tlsCert, tlsKey (BBO_CLIENT_CERT, BBO_CLIENT_KEY): client certificate and key for mutual TLS;
  //   tlsServerName: check the server certificate against this name instead of the address's host;
  //   credentials: ready grpc-js ChannelCredentials (overrides the TLS options);
  //   deadlineMs (120000) per call, askDeadlineMs (600000) per Ask (a large batch or a wide mixed
  //   space takes minutes to fit and optimize; the Python client's ask_timeout);
  //   retries (8), backoffMs (100), maxBackoffMs (5000): a call failing with UNAVAILABLE (the server
  //   restarting) is retried with jittered exponential backoff; asks carry a request id, so a
  //   retry never creates trials twice, and a repeated tell is recorded once;
  //   ratePatienceMs (120000): a refusal carrying a RetryInfo (the server's --rate-limit,
  //   --max-concurrent-rpcs) is retried after the delay it names, and one by gRPC past the
  //   server's concurrent calls with backoff, for up to this long.
  constructor(address, options = {}) {
    const Service = loadService();
    const creds = options.credentials || tlsCredentials(options) || grpc.credentials.createInsecure();
    const channelOptions = {};
    if (options.tlsServerName) {
      channelOptions['grpc.ssl_target_name_override'] = options.tlsServerName;
      channelOptions['grpc.default_authority'] = options.tlsServerName;
    }
    this.address = address;
    this.stub = new Service(address, creds, channelOptions);
    this.apiKey = String(options.apiKey || process.env.BBO_API_KEY || '').trim();  // a key read from a file ends in a newline
    this.deadlineMs = timeOption(options, 'deadlineMs', 120000);
    this.askDeadlineMs = timeOption(options, 'askDeadlineMs', 600000);
    this.retries = options.retries ?? 8;
    this.backoffMs = timeOption(options, 'backoffMs', 100, 0);
    this.maxBackoffMs = timeOption(options, 'maxBackoffMs', 5000, 0);
    this.ratePatienceMs = timeOption(options, 'ratePatienceMs', 120000, 0);
  }

  // One RPC with the client's retries, as the Python client's: UNAVAILABLE `retries` times, a
  // refusal for load (a RetryInfo's, waited out as it names, or gRPC's own past the server's
  // concurrent calls) for ratePatienceMs; with patienceMs (ms), either for that long. signal (an
  // AbortSignal, optional) cancels the call under way and any retry still to come: the call then
  // rejects CANCELLED (see aborted()). lost (an array, optional): for a call that may be sent again
  // after its answer was lost (its retry's answer says what became of the first),
  // DEADLINE_EXCEEDED is retried as UNAVAILABLE is, and each attempt that may have run unanswered
  // (answerLost) is pushed to it.
  async call(method, request, signal = null, patienceMs = null, lost = null) {
    signal = checkedSignal(signal);
    request = checkedRequest(method, request);
    const patience = patienceMs == null ? null : timeOption({ patienceMs }, 'patienceMs', null, 0);
    let delay = this.backoffMs;
    const start = Date.now();
    for (let attempt = 0; ; attempt += 1) {
      if (signal && signal.aborted) throw aborted(signal);
      try {
        return await this.callOnce(method, request, signal);
      } catch (e) {
        if (!(e instanceof BboError)) throw e;
        if (signal && signal.aborted) throw aborted(signal);
        const unanswered = lost !== null && answerLost(e);
        if (unanswered) lost.push(e);
        if (!(retryable(e) || unanswered)) throw e;
        const told = e.retryAfter != null;  // told when to come back: wait that long (jittered)
        const waitMs = told ? Math.max(1, 1000 * e.retryAfter * (1 + 0.2 * Math.random())) : delay * (0.5 + Math.random());
        const limit = patience ?? (told || e.message === GRPC_CONCURRENCY_REFUSAL ? this.ratePatienceMs : null);
        if (limit == null ? attempt >= this.retries : Date.now() + waitMs - start > limit) throw e;
        await sleep(waitMs, signal);
        if (!told) delay = Math.min(2 * delay, this.maxBackoffMs);
      }
    }
  }

  // Every page of a List call: the repeated field `key` of each reply, in order.
  async pages(method, request, key) {
    const out = [];
    let token = '';
    do {
      const res = await this.call(method, { ...request, page_token: token });
      out.push(...res[key]);
      token = res.next_page_token;
    } while (token);
    return out;
  }

  callOnce(method, request, signal = null) {
    if (this.closed) return Promise.reject(closedError());
    const md = new grpc.Metadata();
    if (this.apiKey) md.set('authorization', `Bearer ${this.apiKey}`);
    const deadline = new Date(Date.now() + (method === 'Ask' ? this.askDeadlineMs : this.deadlineMs));
    return new Promise((resolve, reject) => {
      const cancel = () => call.cancel();
      const call = this.stub[method](request, md, { deadline }, (err, res) => {
        if (signal) signal.removeEventListener('abort', cancel);
        return err ? reject(new BboError(err)) : resolve(res);
      });
      if (signal) signal.addEventListener('abort', cancel, { once: true });
    });
  }

  // spec: a bbo.v1.StudySpec as a plain object; for multi-fidelity add
  //   fidelity: {name: 'epochs', min: 1, max: 27, integer: true},
  //   pruning: {policy: 'PRUNING_POLICY_ASHA' | 'PRUNING_POLICY_HYPERBAND' | ..., eta: 3, promote: false}
  async createStudy(name, spec) {
    const res = await this.call('CreateStudy', { name, spec });
    const study = new Study(this, res.study.name, res.created);
    study._info = fromStudy(res.study);
    study.spec = res.study.spec;
    return study;
  }

  // Every study of the API key's tenant, all pages (pageSize per page; 0: the server's), each its
  // info as getStudy gives it, as the Python client's list_studies.
  async listStudies(pageSize = 0) {
    return (await this.pages('ListStudies', { page_size: pageSize }, 'studies')).map(fromStudy);
  }

  // A handle on an existing study (NOT_FOUND if there is none), its info read (study.info(true)).
  async study(name) {
    const study = new Study(this, name, false);
    await study.info();
    return study;
  }

  // The study's info (see fromStudy); NOT_FOUND if there is none.
  async getStudy(name) {
    return fromStudy(await this.call('GetStudy', { name }));
  }

  // Deletes the study `name` and everything of it; true once it is gone, NOT_FOUND where no study
  // has that name (as the Python and Go clients). Retried as every call is, and past a deadline
  // too: an attempt that failed UNAVAILABLE or DEADLINE_EXCEEDED may have deleted the study with
  // its answer lost, so a NOT_FOUND answering a retry after one means it did (true), not an error
  // (docs/operations.md, "Retried calls"). options.signal: as ask's.
  async deleteStudy(name, options = {}) {
    const lost = [];
    try {
      return (await this.call('DeleteStudy', { name }, abortSignal(options), null, lost)).deleted;
    } catch (e) {
      if (e instanceof BboError && e.code === grpc.status.NOT_FOUND && lost.length) return true;
      throw e;
    }
  }

  // Resolves once the server accepts connections; rejects UNAVAILABLE after timeoutMs (30000).
  waitReady(timeoutMs = 30000) {
    const ms = timeOption({ timeoutMs }, 'timeoutMs', 30000, 0);
    if (this.closed) return Promise.reject(closedError());
    return new Promise((resolve, reject) => {
      this.stub.waitForReady(new Date(Date.now() + ms), (err) => (err ? reject(new BboError({
        code: grpc.status.UNAVAILABLE, details: `no bbo server answered at ${this.address} within ${ms / 1000}s`,
      })) : resolve()));
    });
  }

  close() {
    this.closed = true;
    this.stub.close();
  }
}

class Study {
  constructor(client, name, created) {
    this.client = client;
    this.name = name;
    this.created = created;
    this.spec = null;  // the stored spec, read on first need
    this._info = null;  // the study's info as last read (info())
  }

  // The study's info (Client.getStudy), read again unless cached and read before.
  async info(cached = false, patienceMs = null) {
    if (!(cached && this._info)) {
      this._info = fromStudy(await this.client.call('GetStudy', { name: this.name }, null, patienceMs));
      this.spec = this._info.spec;
    }
    return this._info;
  }

  // The study's spec, read once. patienceMs: as call()'s.
  async studySpec(patienceMs = null) {
    if (!this.spec) await this.info(false, patienceMs);
    return this.spec;
  }

  // Delete the study and its trials (Client.deleteStudy).
  async delete() {
    return this.client.deleteStudy(this.name);
  }

  // One trial by id (NOT_FOUND if the study has none such).
  async trial(trialId) {
    return fromTrial(await this.client.call('GetTrial', { study: this.name, trial_id: trialId }));
  }

  async objectiveName(patienceMs = null) {
    return (await this.studySpec(patienceMs)).objectives[0].name;
  }

  // options.signal (an AbortSignal) cancels the ask: it then rejects CANCELLED, and a trial the
  // server made meanwhile stays PENDING until its lease ends. options.requestId: the same on an
  // ask repeated after a failure, so the server replays its trials. options.patienceMs: retry a
  // failure that may pass later (server away, rate limit) for this long instead of the client's
  // retries (see call()). options.leaseSeconds (0: the server's default): how long each trial may
  // go without a heartbeat before it is ABANDONED, as the Python client's lease_seconds.
  async ask(count = 1, workerId = '', options = {}) {
    const requestId = options.requestId || crypto.randomUUID();  // the same on every retry: the server replays, never asks twice
    const lease = options.leaseSeconds ?? 0;
    const res = await this.client.call(
      'Ask',
      { study: this.name, count, worker_id: workerId, lease_seconds: lease, request_id: requestId },
      ...callOptions(options),
    );
    return res.trials.map(fromTrial);
  }

  // trial: a trial from ask() (preferred: in a study with promotion, a continued trial's result
  // equal to the one that paused it is told apart by the trial's budget) or its id. options.budget
  // (studies with a fidelity): what the metrics were measured at; default the trial's budget as
  // asked. options.signal, options.patienceMs: as ask's. options.requestId (default: a new one per
  // call, the same on its retries): the server answers a retry under it as the tell it repeats;
  // every tell (abandon, prune, fail) takes it. Each resolves to the trial as stored, with
  // duplicate (true: this tell had already been recorded, the answer to a repeat), as the Python
  // client's TellResult(trial, duplicate).
  async tell(trial, metrics, options = {}) {
    const budget = options.budget ?? (typeof trial === 'object' && trial ? trial.budget : 0) ?? 0;
    const told = await this._metrics(metrics, options.patienceMs);
    return this._tell(trial, 'COMPLETED', { metrics: told, budget: budget || 0 }, options);
  }

  // A trial that will not be evaluated (its worker stopped): ABANDONED, so it neither waits out its
  // lease nor counts as a failure of its point. options: as tell's.
  async abandon(trial, reason = '', options = {}) {
    return this._tell(trial, 'ABANDONED', { reason }, options);
  }

  // A trial stopped early (the pruning policy said so): PRUNED, with its last values if given, at
  // budget (0: the largest budget it reported). options: as tell's.
  async prune(trial, reason = '', metrics = {}, budget = 0, options = {}) {
    const told = await this._metrics(metrics, options.patienceMs);
    return this._tell(trial, 'PRUNED', { reason, metrics: told, budget }, options);
  }

  // A trial whose evaluation failed, with why. options: as tell's.
  async fail(trial, reason, options = {}) {
    return this._tell(trial, 'FAILED', { reason }, options);
  }

  // metrics as the request's map: an object of metrics, or a bare number for a study with exactly
  // one objective (its value), as the Python client takes; a number for several is refused naming them.
  async _metrics(metrics, patienceMs = null) {
    if (typeof metrics !== 'number') return toMetrics(metrics);
    const { objectives } = await this.studySpec(patienceMs);
    if (objectives.length !== 1) {
      const names = objectives.map((o) => o.name).join(', ');
      throw invalidArgument('metrics', 'a bare number is only accepted for a single-objective study: pass an object '
        + `{name: value} with each of the ${objectives.length} objectives (${names}), got ${show(metrics)}`);
    }
    return toMetrics({ [objectives[0].name]: metrics });
  }

  // One Tell of trial in state (COMPLETED, FAILED, ...) with the request's other fields, under
  // options.requestId (or a new id, kept by its retries).
  async _tell(trial, state, fields, options) {
    const request = {
      study: this.name, ...trialRef(trial), state: `TRIAL_STATE_${state}`, ...fields,
      request_id: options.requestId || crypto.randomUUID(),
    };
    const res = await this.client.call('Tell', request, ...callOptions(options));
    return { ...fromTrial(res.trial), duplicate: Boolean(res.duplicate) };
  }

  // Attach a point evaluated elsewhere (origin 'user'), COMPLETED with metrics, or FAILED with
  // options.failed, as the Python client's add_trial. options.requestId (default: a new one, the
  // same on its retries): a repeat under it is answered with the trial the first added.
  async addTrial(parameters, metrics, options = {}) {
    const res = await this.client.call('AddTrial', {
      study: this.name, parameters: toParameterValues(parameters), metrics: await this._metrics(metrics),
      state: options.failed ? 'TRIAL_STATE_FAILED' : 'TRIAL_STATE_COMPLETED',
      request_id: options.requestId || crypto.randomUUID(),
    });
    return fromTrial(res);
  }

  // Deletes the study (Client.deleteStudy).
  async delete(options = {}) {
    return this.client.deleteStudy(this.name, options);
  }

  // Every trial, or those in states (e.g. ['COMPLETED']), all pages.
  async trials(states = []) {
    const st = states.map(String);  // 'COMPLETED' or 'TRIAL_STATE_COMPLETED' (see check.js)
    return (await this.client.pages('ListTrials', { study: this.name, states: st }, 'trials')).map(fromTrial);
  }

  // The study's LLM exchanges, oldest first (purpose: '' for all, 'warmstart', 'priors', 'proposal',
  // 'related').
  async llmCalls(purpose = '') {
    return (await this.client.pages('ListLlmCalls', { study: this.name, purpose }, 'calls')).map(fromLlmCall);
  }

  // Extend a pending trial's lease from now (leaseSeconds 0: as long as the lease it holds).
  async heartbeat(trial, leaseSeconds = 0) {
    const res = await this.client.call('Heartbeat', { study: this.name, ...trialRef(trial), lease_seconds: leaseSeconds });
    return fromTrial(res.trial);
  }

  // Report the first objective's value at a step (measured at budget; 0: the step, in a study with a
  // fidelity); true means: stop this trial early.
  async reportIntermediate(trial, step, value, budget = 0) {
    return (await this.report(trial, step, value, budget)).shouldStop;
  }

  // As reportIntermediate, with the pruning policy's reason: {shouldStop, reason}. options: as tell's.
  async report(trial, step, value, budget = 0, options = {}) {
    const res = await this.client.call(
      'ReportIntermediate', { study: this.name, ...trialRef(trial), step, value, budget }, ...callOptions(options),
    );
    return { shouldStop: res.should_stop, reason: res.reason };
  }

  // The best feasible trial (one objective) or the Pareto front.
  async best() {
    return (await this.bestResult()).trials;
  }

  // GetBest in full: {trials, trial, state, stateReason, selection, estimate, count} (trial: the
  // first of trials, or null, as the Python client's Best.trial). On a noisy
  // objective the trial is the server's best posterior mean, selection says so, and estimate
  // ({value, lower, upper}, the objective's units) is its model's value for that trial; else both
  // are empty. count: the answer's size; a front too large for one response (about 2 MiB) holds
  // its first count-or-fewer trials by id.
  async bestResult() {
    const res = await this.client.call('GetBest', { study: this.name });
    const e = res.estimate;
    const trials = res.trials.map(fromTrial);
    return {
      count: Number(res.best_count) || res.trials.length,
      trials,
      trial: trials.length ? trials[0] : null,
      state: String(res.state).replace('STUDY_STATE_', ''),
      stateReason: res.state_reason,
      selection: res.selection,
      estimate: e ? { value: e.value, lower: e.lower, upper: e.upper } : null,
    };
  }

  // Ask, evaluate with fn(parameters, trial, report) -> {metric: value}, or a number in a study with
  // one objective (may be async), tell; n times.
  // report(step, value, budget?) records the learning curve and throws TrialPruned once the study's
  // pruning policy says to stop: the trial is then told PRUNED with its last value (also when fn
  // catches it, or returns nothing after reporting). In a study with a fidelity, trial.budget is the
  // budget to run to (with promotion, trial.resumeBudget the one a continued trial already reached).
  // While fn runs, the trial's lease is renewed at a third of the lease the server granted, so a
  // long evaluation is not taken for a dead worker's. fn throwing fails the trial with its message;
  // metrics refused (a missing objective, NaN, a value that is not a number, a bare number in a study
  // with several objectives, nothing returned) fail it with the reason.
  //
  // options: {workerId ('node'), leaseSeconds, progress, tellPatienceMs (600000), signal} or the
  // worker id alone. leaseSeconds: each trial's lease, as ask's (0: the server's default).
  // tellPatienceMs: how long an ask, a result, a report or a failure is retried while the server is
  // away or a rate limit refuses it (the Python client's tell_patience). progress (default: standard error
  // is a terminal) draws a progress bar there with the study's best (cli-progress), read from the
  // server at most every BEST_EVERY_MS and once at the end. signal (an AbortSignal): once it
  // aborts no new trial starts, the evaluation under way finishes and is told (a trial whose Ask
  // was in flight is told ABANDONED, as is one whose fn throws after the abort: pass fn the same
  // signal to stop it early), and optimize rejects CANCELLED with the signal's reason as cause.
  // Resolves to the study's best as bestResult() reads it once the loop is done, as the Python
  // client's optimize returns best(): on a noisy objective the model's pick and its estimate.
  async optimize(fn, nTrials, options = {}) {
    // refused before any call: a fraction ran one trial more, a non-number or a negative none, in silence
    if (!Number.isSafeInteger(nTrials) || nTrials < 0) throw invalidArgument('nTrials', `must be a whole number >= 0, got ${show(nTrials)}`);
    if (typeof fn !== 'function') throw new TypeError(`fn must be a function (the objective), got ${show(fn)}`);
    const opts = typeof options === 'string' ? { workerId: options } : options;
    const workerId = opts.workerId || 'node';
    const patienceMs = timeOption(opts, 'tellPatienceMs', 600000, 0);
    const lease = opts.leaseSeconds ?? 0;
    const signal = abortSignal(opts);
    const progress = opts.progress ?? Boolean(process.stderr.isTTY);
    const bar = progress ? this._progressBar(nTrials) : null;
    try {
      for (let i = 0; i < nTrials; i += 1) {
        if (signal && signal.aborted) throw aborted(signal);
        await this._optimizeOne(fn, workerId, patienceMs, signal, lease);
        if (signal && signal.aborted) throw aborted(signal);
        if (bar) {
          bar.increment();
          await bar.showBest();
        }
      }
      const best = await this.bestResult();
      if (bar) await bar.showBest(best);
      return best;
    } finally {
      if (bar) bar.stop();
    }
  }

  // A cli-progress bar on standard error whose note is the study's best (see bestNote).
  _progressBar(total) {
    const bar = new cliProgress.SingleBar(
      {
        format: `${this.name} |{bar}| {value}/{total} trials | {best}`,
        stream: process.stderr,
        noTTYOutput: !process.stderr.isTTY,
        hideCursor: true,
      },
      cliProgress.Presets.shades_classic,
    );
    bar.start(total, 0, { best: 'no feasible trial yet' });
    let shown = -Infinity;
    // best: GetBest's answer to show now; without it, read one unless the last is recent
    bar.showBest = async (best = null) => {
      if (!best && Date.now() - shown < BEST_EVERY_MS) return;
      shown = Date.now();
      try {
        const { objectives } = await this.studySpec();
        bar.update({ best: bestNote(best || (await this.bestResult()), objectives) });
      } catch (e) {
        // the bar's note is a courtesy: the loop's own calls report errors
      }
    };
    return bar;
  }

  // One trial of optimize: ask, evaluate, tell (or fail, or prune).
  // The ask, a result and a report are retried for up to patienceMs while the server is away or a
  // rate limit refuses them, as the Python client's tell_patience: a restart longer than the call's
  // own retries (~15 s) must neither end the loop nor lose an evaluation that may have taken hours.
  // signal (the ask's only: a result under way is still told) stops the waiting. lease: the ask's
  // leaseSeconds (0: the server's default).
  async _optimizeOne(fn, workerId, patienceMs = 600000, signal = null, lease = 0) {
    const patient = { patienceMs };
    const requestId = crypto.randomUUID();  // one Ask however often it is retried: never two trials
    const [trial] = await this.ask(1, workerId, { requestId, signal, patienceMs, leaseSeconds: lease });
    if (signal && signal.aborted) {  // aborted while the Ask was in flight: the trial never starts
      await this.abandon(trial, 'optimize stopped before it started').catch(() => {});
      return;
    }
    // each tell under one request id however often it is retried: a retry whose first answer was
    // lost is answered as the tell it repeats, whatever became of the trial since
    const once = { requestId: crypto.randomUUID(), patienceMs };
    let metrics;
    let last = null;
    let stop = null;
    const report = async (step, value, budget = 0) => {
      last = { step, value, budget };
      const advice = await this.report(trial, step, value, budget, patient);
      if (advice.shouldStop) {
        stop = advice.reason;
        throw new TrialPruned(advice.reason, step, value);
      }
    };
    // setInterval runs a delay past 2**31 - 1 ms (a lease over ~74 days) every 1 ms instead
    const every = Math.min((1000 * leaseSeconds(trial)) / 3, MAX_TIMER_MS);
    const timer = setInterval(() => this.heartbeat(trial).catch(() => {}), every);
    try {
      metrics = await fn(trial.parameters, trial, report);
    } catch (e) {
      if (!(e instanceof TrialPruned)) {
        const why = reasonText(e && e.message ? e.message : e);
        // fn stopped by the abort says nothing about its point: not a failure
        await (signal && signal.aborted ? this.abandon(trial, `optimize aborted: ${why}`, once) : this.fail(trial, why, once));
        return;
      }
    } finally {
      clearInterval(timer);
    }
    try {
      if (stop !== null || (metrics == null && last !== null)) {
        const told = metrics ?? (last ? { [await this.objectiveName(patienceMs)]: last.value } : {});
        await this.prune(trial, stop || 'stopped by the objective', told, last ? last.budget : 0, once);
      } else {
        await this.tell(trial, metrics, once);
      }
    } catch (e) {
      if (!(e instanceof BboError) || e.code !== grpc.status.INVALID_ARGUMENT) throw e;
      const refused = { requestId: crypto.randomUUID(), patienceMs };
      await this.fail(trial, reasonText(`metrics refused: ${e.message}`), refused);
    }
  }
}

// The progress bar's note of a study's best (GetBest as bestResult returns it): the trial and its
// objective's value (with the model's estimate where the model chose it), or the Pareto front's size.
function bestNote(best, objectives) {
  if (!best.trials.length) return 'no feasible trial yet';
  if (objectives.length !== 1) return `Pareto front: ${best.count || best.trials.length} trials`;
  const t = best.trials[0];
  const name = objectives[0].name;
  let note = `best ${name}=${sig6(t.metrics[name])} (trial ${t.id})`;
  if (best.estimate) note += `, model estimate ${sig6(best.estimate.value)}`;
  return note;
}

// [signal, patienceMs] of a call's options, as Client.call takes them.
function callOptions(options) {
  return [abortSignal(options), options && typeof options === 'object' ? options.patienceMs ?? null : null];
}

// options.signal, checked to be an AbortSignal (null when absent).
function abortSignal(options) {
  return checkedSignal(options && typeof options === 'object' ? options.signal : null);
}

// signal itself if it is an AbortSignal, null when absent; else a TypeError, before any call is
// sent (grpc-js would throw it from its callback: uncaught, the call made).
function checkedSignal(signal) {
  if (signal == null) return null;
  if (typeof signal.aborted !== 'boolean' || typeof signal.addEventListener !== 'function'
    || typeof signal.removeEventListener !== 'function') {
    throw new TypeError(`signal must be an AbortSignal, got ${show(signal)}`);
  }
  return signal;
}

function sig6(x) {
  return String(Number(Number(x).toPrecision(6)));
}

module.exports = {
  Client, Study, BboError, TrialPruned, toParameterValues, fromParameterValues, retryDelay, retryable, retryableWithoutDelay,
};
