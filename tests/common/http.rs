//! A plain HTTP client for the host's endpoint.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;

/// A plain HTTP/1.1 GET; returns the status code and the body.
pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    exchange(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
}

/// Sends one request, reads the whole answer: (status code, body).
fn exchange(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or("");
    (status, body.to_string())
}

/// A plain HTTP/1.1 POST with a JSON body and extra header lines
/// (`Name: value`); returns the status code and the body.
pub fn post(addr: SocketAddr, path: &str, headers: &[&str], json: &str) -> (u16, String) {
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    exchange(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n{json}",
            json.len()
        ),
    )
}
