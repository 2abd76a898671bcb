// Outbound HTTP for warren agents in JavaScript (wasi:http), beside
// warren_agent.js.
//
// The agent is built against the world `agent-http` (wit/http.wit): it is
// `agent` plus `wasi:http/outgoing-handler`. A request reaches only the
// origins the operator granted the agent (`[agents.NAME.http] allow`);
// anything else throws an HttpError with `notAllowed` set.
//
// Build it with build_http_agent.mjs (beside this file), not with `jco
// componentize -n agent-http`, which componentize-qjs 0.4.5 (jco 1.35) cannot
// build ("instance export `input-stream` has the wrong type"); see
// docs/agents-js.md:
//
//   node build_http_agent.mjs app.js --wit wit -o my_agent.wasm
//
//   import { reply } from "./warren_agent.js";
//   import { HttpError, postJson } from "./warren_http.js";
//   let resp;
//   try {
//     resp = postJson("https://api.example.com/v1/x", { authorization: `Bearer ${key}` }, { q: 1 });
//   } catch (e) {
//     if (e instanceof HttpError) throw e.intoFailure();
//     throw e;
//   }
//   if (resp.status !== 200) ...; const answer = resp.json();

import outgoingHandler from "wasi:http/outgoing-handler@0.2.12";
import http from "wasi:http/types@0.2.12";

/**
 * No response. `notAllowed`: the host refused the origin; `invalid`: the URL
 * (or a header) cannot be sent as given.
 */
export class HttpError extends Error {
  constructor(message, { notAllowed = false, invalid = false } = {}) {
    super(message);
    this.name = "HttpError";
    this.notAllowed = notAllowed;
    this.invalid = invalid;
  }

  /**
   * The usual failure, to throw: a refusal or a bad URL will not get better
   * by retrying (reject); trouble on the way might (retry).
   */
  intoFailure() {
    return { tag: this.notAllowed || this.invalid ? "reject" : "retry", val: this.message };
  }
}

export class Response {
  constructor(status, body) {
    /** The status code. */
    this.status = status;
    /** The body, as a Uint8Array. */
    this.body = body;
  }

  /** The body as text (UTF-8). */
  text() {
    return utf8Decode(this.body);
  }

  /** The body parsed as JSON (an HttpError if it is not JSON). */
  json() {
    try {
      return JSON.parse(utf8Decode(this.body));
    } catch (e) {
      throw new HttpError(`the response is not JSON: ${e && e.message ? e.message : e}`);
    }
  }
}

/** `POST url` with a JSON body (`content-type: application/json` added). */
export function postJson(url, headers, body) {
  const all = { "content-type": "application/json", ...(headers ?? {}) };
  return send("POST", url, all, utf8Encode(JSON.stringify(body)));
}

/**
 * Send a request: `headers` an object of name -> value, `body` a Uint8Array
 * (or a string, sent as UTF-8). Returns a Response or throws an HttpError.
 */
export function send(method, url, headers, body = new Uint8Array(0)) {
  const bytes = typeof body === "string" ? utf8Encode(body) : body instanceof Uint8Array ? body : Uint8Array.from(body ?? []);
  const [scheme, authority, path] = split(url);
  // The length is known: say it, rather than send the body chunked (some
  // gateways refuse chunked requests).
  const all = { ...(headers ?? {}) };
  const framed = Object.keys(all).some((k) => ["content-length", "transfer-encoding"].includes(k.toLowerCase()));
  if (bytes.length > 0 && !framed) all["content-length"] = String(bytes.length);
  let fields;
  try {
    fields = http.Fields.fromList(Object.entries(all).map(([k, v]) => [k, utf8Encode(String(v))]));
  } catch (e) {
    throw new HttpError(`bad header: ${camel(payloadOf(e)?.tag ?? "unknown")}`, { invalid: true });
  }
  const request = new http.OutgoingRequest(fields);
  try {
    request.setMethod(methodOf(method));
    request.setScheme(scheme);
    request.setAuthority(authority);
    request.setPathWithQuery(path);
  } catch (e) {
    payloadOf(e);
    throw new HttpError(`\`${url}\` cannot be sent as given`, { invalid: true });
  }
  // The request goes out first and its body streams after it: the host
  // buffers little of a body that nothing is sending yet.
  //
  // Every resource is dropped here, a child before its parent (a stream
  // before its body, a body before its response): one the garbage collector
  // dropped after its parent would trap the agent ("resource has children").
  const outgoing = request.body();
  let future;
  try {
    future = outgoingHandler.handle(request, null);
  } catch (e) {
    dispose(outgoing);
    throw error(url, payloadOf(e));
  }
  // A refused or failed request says why on its response.
  try {
    const stream = outgoing.write();
    try {
      for (let i = 0; i < bytes.length; i += 4096) {
        stream.blockingWriteAndFlush(bytes.subarray(i, i + 4096)); // at most 4096 bytes a call
      }
    } finally {
      dispose(stream);
    }
  } catch (e) {
    dispose(outgoing); // not finished: the request fails, if it has not yet
    const p = payloadOf(e);
    throw responseError(url, future) ?? failed(url, streamError(p));
  }
  try {
    http.OutgoingBody.finish(outgoing, null);
  } catch (e) {
    const p = payloadOf(e);
    throw responseError(url, future) ?? error(url, p);
  }
  const response = wait(url, future);
  dispose(future);
  const status = response.status();
  const chunks = [];
  let total = 0;
  let incoming = null;
  let reader = null;
  try {
    incoming = response.consume();
    reader = incoming.stream();
    for (;;) {
      let chunk;
      try {
        chunk = reader.blockingRead(64 << 10);
      } catch (e) {
        const p = payloadOf(e);
        if (p && p.tag === "closed") break;
        throw failed(url, streamError(p));
      }
      chunks.push(chunk);
      total += chunk.length;
    }
  } finally {
    dispose(reader);
    dispose(incoming);
    dispose(response);
  }
  const data = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    data.set(c, at);
    at += c.length;
  }
  return new Response(status, data);
}

// An error thrown by an import returning result<_, E> carries E as
// `payload`; anything else is not ours to translate.
function payloadOf(e) {
  if (e instanceof Error && "payload" in e) return e.payload;
  throw e;
}

// Drop an imported resource now (children before their parents).
function dispose(resource) {
  if (!resource) return;
  for (const key of [Symbol.dispose, Symbol.for("dispose")]) {
    if (key !== undefined && typeof resource[key] === "function") {
      resource[key]();
      return;
    }
  }
}

function block(future) {
  const pollable = future.subscribe();
  pollable.block();
  dispose(pollable);
}

function wait(url, future) {
  let outer;
  for (;;) {
    outer = future.get(); // ok(ok(response)) | ok(err(error-code)) | err: taken twice
    if (outer != null) break;
    block(future);
  }
  if (outer.tag === "err") throw failed(url, "the response was already taken");
  if (outer.val.tag === "err") throw error(url, outer.val.val);
  return outer.val.val;
}

// The request's own error, if it has already failed (a refusal does at once).
function responseError(url, future) {
  block(future);
  const outer = future.get();
  if (outer == null || outer.tag === "err" || outer.val.tag !== "err") return null;
  return error(url, outer.val.val);
}

function split(url) {
  const sep = url.indexOf("://");
  const scheme = sep < 0 ? "" : url.slice(0, sep).toLowerCase();
  const schemes = { http: { tag: "HTTP" }, https: { tag: "HTTPS" } };
  if (sep < 0 || !Object.prototype.hasOwnProperty.call(schemes, scheme)) {
    throw new HttpError(`\`${url}\` is not an http(s) URL`, { invalid: true });
  }
  const rest = url.slice(sep + 3);
  const slash = rest.indexOf("/");
  const [authority, path] = slash < 0 ? [rest, "/"] : [rest.slice(0, slash), rest.slice(slash)];
  if (!authority) throw new HttpError(`\`${url}\` is not an http(s) URL`, { invalid: true });
  return [schemes[scheme], authority, path];
}

function methodOf(name) {
  const known = { GET: "get", POST: "post", PUT: "put", DELETE: "delete", PATCH: "patch" };
  return Object.prototype.hasOwnProperty.call(known, name) ? { tag: known[name] } : { tag: "other", val: name };
}

function origin(url) {
  const sep = url.indexOf("://");
  const scheme = sep < 0 ? url : url.slice(0, sep);
  const rest = sep < 0 ? "" : url.slice(sep + 3);
  const ends = [rest.indexOf("/"), rest.indexOf("?")].filter((i) => i >= 0);
  const end = ends.length ? Math.min(...ends) : rest.length;
  return `${scheme}://${rest.slice(0, end)}`;
}

function error(url, code) {
  if (code && code.tag === "HTTP-request-denied") {
    return new HttpError(`request to ${origin(url)} not allowed (not on this agent's http allow-list)`, {
      notAllowed: true,
    });
  }
  return failed(url, describe(code));
}

// The common error codes in words, with their WASI names (as the Rust SDK says them).
const DESCRIBED = {
  "HTTP-response-body-size": "the response body is over this agent's limit",
  "HTTP-response-timeout": "no response within this agent's request deadline",
  "connection-read-timeout": "no response within this agent's request deadline",
  "connection-timeout": "could not connect in time",
  "connection-refused": "connection refused",
  "connection-terminated": "the connection was closed",
  "DNS-error": "the host name did not resolve",
  "TLS-certificate-error": "the server's certificate was not accepted",
};

// "HTTP-request-URI-invalid" -> "HttpRequestUriInvalid" (the name Python gives it).
function camel(tag) {
  return tag
    .split("-")
    .map((w) => w.charAt(0).toUpperCase() + w.slice(1).toLowerCase())
    .join("");
}

function describe(code) {
  const tag = code && typeof code.tag === "string" ? code.tag : "unknown";
  return Object.prototype.hasOwnProperty.call(DESCRIBED, tag) ? `${DESCRIBED[tag]} (${tag})` : camel(tag);
}

function failed(url, why) {
  return new HttpError(`request to ${origin(url)} failed: ${why}`);
}

function streamError(e) {
  if (e && e.tag === "last-operation-failed") {
    const code = http.httpErrorCode(e.val);
    return code != null ? describe(code) : e.val.toDebugString();
  }
  return "the connection closed";
}

// UTF-8 by hand: QuickJS has no TextEncoder / TextDecoder.
function utf8Encode(text) {
  const out = [];
  for (let i = 0; i < text.length; i++) {
    let c = text.charCodeAt(i);
    if (c >= 0xd800 && c < 0xdc00 && i + 1 < text.length) {
      const d = text.charCodeAt(i + 1);
      if (d >= 0xdc00 && d < 0xe000) {
        c = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00);
        i++;
      }
    }
    if (c >= 0xd800 && c < 0xe000) c = 0xfffd; // a lone surrogate
    if (c < 0x80) out.push(c);
    else if (c < 0x800) out.push(0xc0 | (c >> 6), 0x80 | (c & 63));
    else if (c < 0x10000) out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
    else out.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 63), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
  }
  return Uint8Array.from(out);
}

function utf8Decode(bytes) {
  let out = "";
  for (let i = 0; i < bytes.length; ) {
    const b = bytes[i];
    let c = 0xfffd;
    let n = 1;
    const cont = (k) => i + k < bytes.length && (bytes[i + k] & 0xc0) === 0x80;
    if (b < 0x80) c = b;
    else if (b >= 0xc2 && b < 0xe0 && cont(1)) {
      c = ((b & 31) << 6) | (bytes[i + 1] & 63);
      n = 2;
    } else if (b >= 0xe0 && b < 0xf0 && cont(1) && cont(2)) {
      c = ((b & 15) << 12) | ((bytes[i + 1] & 63) << 6) | (bytes[i + 2] & 63);
      n = 3;
      if (c < 0x800 || (c >= 0xd800 && c < 0xe000)) c = 0xfffd;
    } else if (b >= 0xf0 && b < 0xf5 && cont(1) && cont(2) && cont(3)) {
      c = ((b & 7) << 18) | ((bytes[i + 1] & 63) << 12) | ((bytes[i + 2] & 63) << 6) | (bytes[i + 3] & 63);
      n = 4;
      if (c < 0x10000 || c > 0x10ffff) c = 0xfffd;
    }
    out += String.fromCodePoint(c);
    i += n;
  }
  return out;
}
