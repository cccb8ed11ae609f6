// Node.js client for bbo. Loads the same proto/bbo/v1 files the server is built from, so it never
// drifts from the API. Promise-based; plain JS objects in and out.
'use strict';

const path = require('path');
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
  };
}

class BboError extends Error {
  constructor(err) {
    super(err.details || err.message);
    this.code = err.code;
    this.codeName = Object.keys(grpc.status).find((k) => grpc.status[k] === err.code);
  }
}

class Client {
  // address: "host:port". options.apiKey is sent as the x-api-key metadata when given.
  constructor(address, options = {}) {
    const Service = loadService();
    const creds = options.credentials || grpc.credentials.createInsecure();
    this.stub = new Service(address, creds);
    this.apiKey = options.apiKey || process.env.BBO_API_KEY || '';
    this.deadlineMs = options.deadlineMs || 120000;
  }

  call(method, request) {
    const md = new grpc.Metadata();
    if (this.apiKey) md.set('x-api-key', this.apiKey);
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
    const res = await this.client.call('Ask', { study: this.name, count, worker_id: workerId });
    return res.trials.map(fromTrial);
  }

  async tell(trialId, metrics) {
    const res = await this.client.call('Tell', { study: this.name, trial_id: trialId, metrics: toMetrics(metrics), state: 'TRIAL_STATE_COMPLETED' });
    return fromTrial(res.trial);
  }

  async fail(trialId, reason) {
    const res = await this.client.call('Tell', { study: this.name, trial_id: trialId, state: 'TRIAL_STATE_FAILED', reason });
    return fromTrial(res.trial);
  }

  async addTrial(parameters, metrics) {
    const res = await this.client.call('AddTrial', { study: this.name, parameters: toParameterValues(parameters), metrics: toMetrics(metrics) });
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
        await this.tell(trial.id, await fn(trial.parameters));
      } catch (e) {
        if (e instanceof BboError) throw e;
        await this.fail(trial.id, String(e && e.message ? e.message : e));
      }
    }
    return this.best();
  }
}

module.exports = { Client, Study, BboError, toParameterValues, fromParameterValues };
