// Requests checked against the proto before they are sent. protobufjs encodes what it can of any
// object: an unknown key is dropped, an enum name it does not know becomes 0 (GOAL_MINIMIZE for a
// misspelt 'GOAL_MAXIMISE') and 0.5 in an int64 field becomes 0, so the server would store a study
// other than the one asked for. Here such a request is refused with the field's path in the
// server's own form (spec.objectives[0].goal), and an enum value may be given by the part of its
// name after the enum's prefix, in any case ('maximize', 'log', 'hyperband').
'use strict';

const path = require('path');
const protobuf = require('protobufjs');

class RequestError extends Error {
  constructor(field, message) {
    super(`${field}: ${message}`);
    this.field = field;
    this.detail = message;
  }
}

const INTEGER = new Set(['int32', 'uint32', 'sint32', 'fixed32', 'sfixed32', 'int64', 'uint64', 'sint64', 'fixed64', 'sfixed64']);
const UNSIGNED = new Set(['uint32', 'fixed32', 'uint64', 'fixed64']);

// A value as a message quotes it.
function show(v) {
  if (typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'bigint') return `${v}n`;
  try {
    return JSON.stringify(v) ?? String(v);
  } catch (e) {
    return String(v);
  }
}

function isPlainObject(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v) && !Buffer.isBuffer(v);
}

// The longest prefix ending in '_' that every value name of the enum shares (GOAL_, SCALE_).
function enumPrefix(names) {
  let prefix = names[0] || '';
  for (const n of names) while (!n.startsWith(prefix)) prefix = prefix.slice(0, -1);
  return prefix.slice(0, prefix.lastIndexOf('_') + 1);
}

class RequestChecker {
  // protoDir: the folder holding bbo/v1/*.proto; service: its full name.
  constructor(protoDir, service = 'bbo.v1.BboService') {
    const root = new protobuf.Root();
    // google/protobuf/* resolve to protobufjs's bundled copies
    root.resolvePath = (origin, target) => (target.startsWith('google/protobuf/') ? target : path.join(protoDir, target));
    root.loadSync('bbo/v1/service.proto', { keepCase: true });
    root.resolveAll();
    this.service = root.lookupService(service);
    this.prefixes = new Map();
  }

  // `request` for `method` with enum shorthands spelled out; throws RequestError where protobufjs
  // would drop or change something.
  check(method, request) {
    const m = this.service.methods[method];
    if (!m) throw new RequestError('method', `unknown RPC ${show(method)}`);
    return this.message(m.resolvedRequestType, request, '');
  }

  message(type, obj, where) {
    if (!isPlainObject(obj)) throw new RequestError(where || type.name, `must be an object (${type.name}), got ${show(obj)}`);
    const out = {};
    for (const [key, value] of Object.entries(obj)) {
      const at = where ? `${where}.${key}` : key;
      if (type.oneofs && key in type.oneofs) continue;  // a oneof's name (as replies carry it): no field of its own
      const field = type.fields[key];
      if (!field) {
        throw new RequestError(at, `${type.name} has no field ${show(key)}; its fields: ${Object.keys(type.fields).join(', ')}`);
      }
      if (value == null) continue;  // unset
      if (field.map) {
        if (!isPlainObject(value)) throw new RequestError(at, `must be an object (a map), got ${show(value)}`);
        out[key] = Object.fromEntries(Object.entries(value).map(([k, v]) => [k, this.value(field, v, `${at}['${k}']`)]));
      } else if (field.repeated) {
        if (!Array.isArray(value)) throw new RequestError(at, `must be an array, got ${show(value)}`);
        out[key] = value.map((v, i) => this.value(field, v, `${at}[${i}]`));
      } else {
        out[key] = this.value(field, value, at);
      }
    }
    return out;
  }

  value(field, v, at) {
    const t = field.resolvedType;
    if (t instanceof protobuf.Enum) return this.enumValue(t, v, at);
    if (t instanceof protobuf.Type) return this.message(t, v, at);
    if (field.type === 'double' || field.type === 'float') {
      if (typeof v !== 'number') throw new RequestError(at, `must be a number, got ${show(v)}`);
    } else if (INTEGER.has(field.type)) {
      const n = typeof v === 'string' && /^-?\d+$/.test(v) ? Number(v) : v;  // a 64-bit value may come as a string
      if (!(typeof n === 'number' && Number.isInteger(n)) && typeof v !== 'bigint') {
        throw new RequestError(at, `must be a whole number, got ${show(v)}`);
      }
      // protobufjs wraps a value past the field's range (2**32 + 5 in an int32 is 5): refuse it
      const bits = field.type.endsWith('64') ? 64n : 32n;
      const [lo, hi] = UNSIGNED.has(field.type) ? [0n, 2n ** bits - 1n] : [-(2n ** (bits - 1n)), 2n ** (bits - 1n) - 1n];
      const big = BigInt(v);
      if (big < lo || big > hi) throw new RequestError(at, `must be a whole number from ${lo} to ${hi}, got ${show(v)}`);
    } else if (field.type === 'bool') {
      if (typeof v !== 'boolean') throw new RequestError(at, `must be true or false, got ${show(v)}`);
    } else if (field.type === 'string') {
      if (typeof v !== 'string') throw new RequestError(at, `must be a string, got ${show(v)}`);
    } else if (field.type === 'bytes') {
      if (!(typeof v === 'string' || v instanceof Uint8Array)) throw new RequestError(at, `must be a Buffer, got ${show(v)}`);
    }
    return v;
  }

  enumValue(e, v, at) {
    const names = Object.keys(e.values);
    if (typeof v === 'number' && Object.values(e.values).includes(v)) return v;
    if (typeof v === 'string') {
      if (v in e.values) return v;
      if (!this.prefixes.has(e)) this.prefixes.set(e, enumPrefix(names));
      const full = this.prefixes.get(e) + v.toUpperCase();
      if (full in e.values) return full;
    }
    throw new RequestError(at, `unknown ${e.name} ${show(v)}; one of ${names.join(', ')}`);
  }
}

module.exports = { RequestChecker, RequestError, show };
