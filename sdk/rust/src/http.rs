//! Outbound HTTP through `wasi:http` (cargo feature `http`).
//!
//! An agent reaches only the origins its operator granted it
//! (`[agents.NAME.http] allow = [...]` in the host's config, or `[http]` in
//! the plugin's manifest); anything else fails with [`HttpError::NotAllowed`].
//! Calls block the agent (not the host) until the response is in.
//!
//! ```ignore
//! let resp = warren_agent::http::post_json(
//!     "https://api.example.com/v1/things",
//!     &[("authorization", format!("Bearer {key}"))],
//!     &serde_json::json!({"q": "hello"}),
//! ).map_err(|e| e.into_failure())?;
//! ```

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme,
};
use wasip2::io::streams::StreamError;

use crate::{reject, retry, Failure};

/// A response: status and the whole body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value, HttpError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| HttpError::Failed(format!("the response is not JSON: {e}")))
    }
}

/// Why a request got no response.
#[derive(Debug, Clone, PartialEq)]
pub enum HttpError {
    /// The host refused: this origin is not on the agent's allow-list.
    NotAllowed(String),
    /// The URL or a header cannot be sent as given.
    Invalid(String),
    /// Anything on the way: connecting, a timeout, a body over the limit.
    Failed(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::NotAllowed(url) => write!(
                f,
                "request to {url} not allowed (not on this agent's http allow-list)"
            ),
            HttpError::Invalid(why) | HttpError::Failed(why) => f.write_str(why),
        }
    }
}

impl HttpError {
    /// The usual failure: a refusal or a bad request will not get better by
    /// retrying (reject); trouble on the way might (retry).
    pub fn into_failure(self) -> Failure {
        match self {
            HttpError::NotAllowed(_) | HttpError::Invalid(_) => reject(self.to_string()),
            HttpError::Failed(_) => retry(self.to_string()),
        }
    }
}

/// Asks an OpenAI-compatible chat-completions endpoint
/// (`{base_url}/chat/completions`, the key as a bearer token if given) and
/// returns the completion. A refusal (a bad history, a bad key, an origin
/// not granted) will not get better by retrying: reject; a busy or failing
/// endpoint might: retry.
pub fn chat_completion(
    base_url: &str,
    api_key: Option<&str>,
    request: &serde_json::Value,
) -> Result<serde_json::Value, Failure> {
    let url = format!("{}/chat/completions", base_url.trim_end_matches('/'));
    let headers: Vec<(&str, String)> = api_key
        .iter()
        .map(|k| ("authorization", format!("Bearer {k}")))
        .collect();
    let resp = post_json(&url, &headers, request).map_err(HttpError::into_failure)?;
    let status = resp.status;
    let why = || {
        let body = resp.json().unwrap_or_default();
        let message = body["error"]["message"]
            .as_str()
            .unwrap_or("no error message");
        format!("the model endpoint answered {status}: {message}")
    };
    match status {
        200..=299 => resp.json().map_err(|e| retry(e.to_string())),
        408 | 429 | 500..=599 => Err(retry(why())),
        _ => Err(reject(why())),
    }
}

/// `POST url` with a JSON body (`content-type: application/json` is added).
pub fn post_json(
    url: &str,
    headers: &[(&str, String)],
    body: &serde_json::Value,
) -> Result<Response, HttpError> {
    let mut all = vec![("content-type", "application/json".to_string())];
    all.extend(headers.iter().cloned());
    send("POST", url, &all, body.to_string().as_bytes())
}

/// Sends one request and reads the whole response.
pub fn send(
    method: &str,
    url: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Result<Response, HttpError> {
    let (scheme, authority, path) = split(url)?;
    let mut fields: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect();
    // The length is known: say it, rather than send the body chunked (some
    // gateways refuse chunked requests).
    let framed = |k: &str| k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding");
    if !body.is_empty() && !headers.iter().any(|(k, _)| framed(k)) {
        fields.push(("content-length".into(), body.len().to_string().into_bytes()));
    }
    let fields =
        Fields::from_list(&fields).map_err(|e| HttpError::Invalid(format!("bad header: {e:?}")))?;
    let request = OutgoingRequest::new(fields);
    let method = match method {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "PATCH" => Method::Patch,
        other => Method::Other(other.to_string()),
    };
    let invalid = |what: &str| HttpError::Invalid(format!("{what} in {url}"));
    request
        .set_method(&method)
        .map_err(|_| invalid("bad method"))?;
    request
        .set_scheme(Some(&scheme))
        .map_err(|_| invalid("bad scheme"))?;
    request
        .set_authority(Some(authority))
        .map_err(|_| invalid("bad host"))?;
    request
        .set_path_with_query(Some(path))
        .map_err(|_| invalid("bad path"))?;

    // The request goes out first and its body streams after it: the host
    // buffers little of a body that nothing is sending yet.
    let outgoing = request.body().expect("the body is taken once");
    let future = outgoing_handler::handle(request, None).map_err(|e| error(url, e))?;
    {
        let stream = outgoing.write().expect("the stream is taken once");
        // blocking-write-and-flush takes at most 4096 bytes at a time.
        for chunk in body.chunks(4096) {
            if let Err(e) = stream.blocking_write_and_flush(chunk) {
                // A refused or failed request says why on its response.
                drop(stream);
                return Err(
                    response_error(url, &future).unwrap_or_else(|| failed(url, stream_error(e)))
                );
            }
        }
    }
    if let Err(e) = OutgoingBody::finish(outgoing, None) {
        return Err(response_error(url, &future).unwrap_or_else(|| error(url, e)));
    }
    let response = loop {
        match future.get() {
            Some(result) => break result,
            None => future.subscribe().block(),
        }
    };
    let response = response
        .expect("the response is taken once")
        .map_err(|e| error(url, e))?;
    let status = response.status();
    let incoming = response.consume().expect("the body is taken once");
    let mut body = Vec::new();
    {
        let stream = incoming.stream().expect("the stream is taken once");
        loop {
            match stream.blocking_read(64 << 10) {
                Ok(chunk) => body.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(e) => return Err(failed(url, stream_error(e))),
            }
        }
    }
    drop(IncomingBody::finish(incoming));
    Ok(Response { status, body })
}

/// The request's own error, if it has already failed (a refusal does at once).
fn response_error(
    url: &str,
    future: &outgoing_handler::FutureIncomingResponse,
) -> Option<HttpError> {
    future.subscribe().block();
    match future.get()? {
        Ok(Err(code)) => Some(error(url, code)),
        _ => None,
    }
}

/// `scheme://authority/path?query` → its parts.
fn split(url: &str) -> Result<(Scheme, &str, &str), HttpError> {
    let invalid = || HttpError::Invalid(format!("`{url}` is not an http(s) URL"));
    let (scheme, rest) = url.split_once("://").ok_or_else(invalid)?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        _ => return Err(invalid()),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(invalid());
    }
    Ok((scheme, authority, path))
}

fn error(url: &str, code: ErrorCode) -> HttpError {
    match code {
        ErrorCode::HttpRequestDenied => HttpError::NotAllowed(origin(url).to_string()),
        other => failed(url, describe(&other)),
    }
}

/// The common error codes in words, with their WASI names.
fn describe(code: &ErrorCode) -> String {
    let (what, name) = match code {
        ErrorCode::HttpResponseBodySize(_) => (
            "the response body is over this agent's limit",
            "HTTP-response-body-size",
        ),
        ErrorCode::HttpResponseTimeout => (
            "no response within this agent's request deadline",
            "HTTP-response-timeout",
        ),
        ErrorCode::ConnectionReadTimeout => (
            "no response within this agent's request deadline",
            "connection-read-timeout",
        ),
        ErrorCode::ConnectionTimeout => ("could not connect in time", "connection-timeout"),
        ErrorCode::ConnectionRefused => ("connection refused", "connection-refused"),
        ErrorCode::ConnectionTerminated => ("the connection was closed", "connection-terminated"),
        ErrorCode::DnsError(_) => ("the host name did not resolve", "DNS-error"),
        ErrorCode::TlsCertificateError => (
            "the server's certificate was not accepted",
            "TLS-certificate-error",
        ),
        other => return format!("{other:?}"),
    };
    format!("{what} ({name})")
}

fn failed(url: &str, why: String) -> HttpError {
    HttpError::Failed(format!("request to {} failed: {why}", origin(url)))
}

fn stream_error(e: StreamError) -> String {
    match e {
        StreamError::Closed => "the connection closed".to_string(),
        StreamError::LastOperationFailed(e) => match wasip2::http::types::http_error_code(&e) {
            Some(code) => describe(&code),
            None => e.to_debug_string(),
        },
    }
}

/// `scheme://host:port` of a URL: what errors name (never a path or query,
/// which may carry a key).
fn origin(url: &str) -> &str {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let end = scheme.len() + 3 + rest.find(['/', '?']).unwrap_or(rest.len());
            &url[..end]
        }
        None => url,
    }
}
