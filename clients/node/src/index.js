// Node.js client for bbo. Loads the same proto/bbo/v1 files the server is built from, so it never
// drifts from the API. Promise-based; plain JS objects in and out.
'use strict';

const path = require('path');
const crypto = require('crypto');
const fs = require('fs');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

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

// {lr: 0.1, layers: 3, opt: 'adam'} <-> map<string, ParameterValue>
function toParameterValues(params) {
  const out = {};
  for (const [k, v] of Object.entries(params)) {
    if (typeof v === 'string') out[k] = { category: v };
    else if (Number.isInteger(v)) out[k] = { integer: v };
    else out[k] = { number: v };
  }
  return out;
}

function fromParameterValues(values) {
  const out = {};
  for (const [k, v] of Object.entries(values || {})) out[k] = v[v.kind];
  return out;
}

function toMetrics(metrics) {
  const out = {};
  for (const [k, v] of Object.entries(metrics)) {
    out[k] = typeof v === 'number' ? { value: v } : { value: v.value, sem: v.sem };
  }
  return out;
}

function fromTrial(t) {
  const metrics = {};
  for (const [k, m] of Object.entries(t.metrics || {})) metrics[k] = m.value;
  return {
    id: Number(t.id),
    parameters: fromParameterValues(t.parameters),
    state: String(t.state).replace('TRIAL_STATE_', ''),
    metrics,
    origin: t.origin,
    reason: t.reason,
    studyUid: t.study_uid || '',
  };
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
  }
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

class Client {
  // address: "host:port". Options (each also read from the env variable the Python client uses):
  //   apiKey (BBO_API_KEY): sent as "authorization: Bearer <key>" metadata on every call;
  //   tls: true for TLS with the system's root certificates;
  //   tlsCa (BBO_TLS_CA): root certificate(s) to trust (path or PEM; implies TLS);
  //   tlsCert, tlsKey (BBO_CLIENT_CERT, BBO_CLIENT_KEY): client certificate and key for mutual TLS;
  //   tlsServerName: check the server certificate against this name instead of the address's host;
  //   credentials: ready grpc-js ChannelCredentials (overrides the TLS options); deadlineMs;
  //   retries (8), backoffMs (100), maxBackoffMs (5000): a call failing with UNAVAILABLE (the server
  //   restarting) is retried with jittered exponential backoff; asks carry a request id, so a retry
  //   never creates trials twice, and a repeated tell is recorded once.
  constructor(address, options = {}) {
    const Service = loadService();
    const creds = options.credentials || tlsCredentials(options) || grpc.credentials.createInsecure();
    const channelOptions = {};
    if (options.tlsServerName) {
      channelOptions['grpc.ssl_target_name_override'] = options.tlsServerName;
      channelOptions['grpc.default_authority'] = options.tlsServerName;
    }
    this.stub = new Service(address, creds, channelOptions);
    this.apiKey = options.apiKey || process.env.BBO_API_KEY || '';
    this.deadlineMs = options.deadlineMs || 120000;
    this.retries = options.retries ?? 8;
    this.backoffMs = options.backoffMs ?? 100;
    this.maxBackoffMs = options.maxBackoffMs ?? 5000;
  }

  async call(method, request) {
    let delay = this.backoffMs;
    for (let attempt = 0; ; attempt += 1) {
      try {
        return await this.callOnce(method, request);
      } catch (e) {
        if (!(e instanceof BboError) || e.code !== grpc.status.UNAVAILABLE || attempt >= this.retries) throw e;
        await new Promise((r) => setTimeout(r, delay * (0.5 + Math.random())));
        delay = Math.min(2 * delay, this.maxBackoffMs);
      }
    }
  }

  callOnce(method, request) {
    const md = new grpc.Metadata();
    if (this.apiKey) md.set('authorization', `Bearer ${this.apiKey}`);
    const deadline = new Date(Date.now() + this.deadlineMs);
    return new Promise((resolve, reject) => {
      this.stub[method](request, md, { deadline }, (err, res) => (err ? reject(new BboError(err)) : resolve(res)));
    });
  }

  async createStudy(name, spec) {
    const res = await this.call('CreateStudy', { name, spec });
    return new Study(this, res.study.name, res.created);
  }

  async listStudies() {
    const res = await this.call('ListStudies', {});
    return res.studies.map((s) => s.name);
  }

  close() {
    this.stub.close();
  }
}

class Study {
  constructor(client, name, created) {
    this.client = client;
    this.name = name;
    this.created = created;
  }

  async ask(count = 1, workerId = '') {
    const requestId = crypto.randomUUID();  // the same on every retry: the server replays, never asks twice
    const res = await this.client.call('Ask', { study: this.name, count, worker_id: workerId, request_id: requestId });
    return res.trials.map(fromTrial);
  }

  // trial: a trial from ask() (preferred) or its id
  async tell(trial, metrics) {
    const res = await this.client.call('Tell', { study: this.name, ...trialRef(trial), metrics: toMetrics(metrics), state: 'TRIAL_STATE_COMPLETED' });
    return fromTrial(res.trial);
  }

  async fail(trial, reason) {
    const res = await this.client.call('Tell', { study: this.name, ...trialRef(trial), state: 'TRIAL_STATE_FAILED', reason });
    return fromTrial(res.trial);
  }

  async addTrial(parameters, metrics) {
    const res = await this.client.call('AddTrial', {
      study: this.name, parameters: toParameterValues(parameters), metrics: toMetrics(metrics), request_id: crypto.randomUUID(),
    });
    return fromTrial(res);
  }

  async trials() {
    const res = await this.client.call('ListTrials', { study: this.name });
    return res.trials.map(fromTrial);
  }

  async best() {
    const res = await this.client.call('GetBest', { study: this.name });
    return res.trials.map(fromTrial);
  }

  // Ask, evaluate with fn(parameters) -> {metric: value} (may be async), tell; n times.
  async optimize(fn, nTrials, workerId = 'node') {
    for (let i = 0; i < nTrials; i += 1) {
      const [trial] = await this.ask(1, workerId);
      try {
        await this.tell(trial, await fn(trial.parameters));
      } catch (e) {
        if (e instanceof BboError) throw e;
        await this.fail(trial, String(e && e.message ? e.message : e));
      }
    }
    return this.best();
  }
}

module.exports = { Client, Study, BboError, toParameterValues, fromParameterValues };
