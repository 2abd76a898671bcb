//! A guest's failure in its own language's words.
//!
//! When a guest traps, what explains it is on its stderr, wrapped in the
//! runtime noise of its toolchain: componentize-py prints the Python
//! traceback and then panics in its runtime; jco's QuickJS runtime panics
//! with a Rust `Debug` dump of the JS exception; a Rust guest panics with a
//! `RUST_BACKTRACE` hint. A person reading a dead letter, `warren status` or
//! a summary wants the error and where in *their* code it happened:
//!
//! | language | summary |
//! |---|---|
//! | Python | `KeyError: 'user' (app.py:12, in on_message)` |
//! | Python, JS: a value of the wrong type returned | `returned a value of the wrong type: expected list, got 'oops'` |
//! | JavaScript | `cannot read property 'x' of undefined (app.js:9:86, in lookup)` |
//! | Rust | `panicked at src/lib.rs:10:50: the message` |
//!
//! [`explain`] makes that summary from the call's stderr; the whole stderr
//! of the call (the full traceback) is kept as the detail, for the WARN log
//! line and the dead letter's `x-warren-guest-trace` header.

/// Files of warren's own SDKs: a frame in them is not where the user's bug is.
const SDK_FILES: [&str; 3] = ["warren_agent.py", "warren_http.py", "warren_agent.js"];

/// The summary of a trap, from its root cause and the call's stderr lines.
pub fn explain(root: &str, stderr: &[String]) -> String {
    python_traceback(stderr)
        .or_else(|| python_cast_error(stderr))
        .or_else(|| js_exception(stderr))
        .or_else(|| rust_panic(stderr))
        .unwrap_or_else(|| fallback(root, stderr))
}

/// The call's stderr as one text (the detail kept beside the summary).
pub fn detail(stderr: &[String]) -> Option<String> {
    let lines: Vec<&str> = stderr
        .iter()
        .map(String::as_str)
        .filter(|l| !is_noise(l))
        .collect();
    (!lines.is_empty()).then(|| lines.join("\n"))
}

fn is_noise(line: &str) -> bool {
    line.trim().is_empty() || line.starts_with("note: run with `RUST_BACKTRACE")
}

/// `Traceback (most recent call last):` … `KeyError: 'user'`: the exception
/// line, with the deepest frame in the user's own files.
fn python_traceback(lines: &[String]) -> Option<String> {
    let start = lines
        .iter()
        .rposition(|l| l.starts_with("Traceback (most recent call last):"))?;
    let mut frame = None;
    let mut exception = None;
    for line in &lines[start + 1..] {
        if let Some(rest) = line.trim_start().strip_prefix("File \"") {
            // `File "/0/app.py", line 12, in on_message`
            let (path, rest) = rest.split_once('"')?;
            let file = path.rsplit('/').next().unwrap_or(path);
            let number = rest
                .trim_start_matches(", line ")
                .split(',')
                .next()
                .unwrap_or("");
            let function = rest.split(", in ").nth(1).unwrap_or("").trim();
            let user = !SDK_FILES.contains(&file)
                && !path.contains("/lib/python")
                && !path.starts_with('<');
            if user {
                frame = Some(format!("{file}:{number}, in {function}"));
            }
        } else if !line.starts_with(' ') && !line.trim().is_empty() {
            // The first unindented line after the frames is the exception.
            exception = Some(line.trim().to_string());
            break;
        }
    }
    let exception = exception?;
    Some(match frame {
        Some(frame) => format!("{exception} ({frame})"),
        None => exception,
    })
}

/// componentize-py's `CastError { from: 'oops', classinfo: <class 'list'> }`:
/// the agent returned (or put in a record) a value of the wrong type.
fn python_cast_error(lines: &[String]) -> Option<String> {
    let line = lines.iter().find(|l| l.contains("CastError { from: "))?;
    let rest = line.split("CastError { from: ").nth(1)?;
    let (got, rest) = rest.rsplit_once(", classinfo: <class '")?;
    let expected = rest.split('\'').next()?;
    Some(format!(
        "returned a value of the wrong type: expected {expected}, got {got} (see the types in wit/agent.wit)"
    ))
}

/// jco's `Exception { message: Some("…"), stack: Some("    at f (/app.js:4:10)\n…") }`.
fn js_exception(lines: &[String]) -> Option<String> {
    let text = lines.join("\n");
    let rest = text.split("Exception { message: Some(\"").nth(1)?;
    let (message, rest) = debug_string(rest)?;
    let frame = rest
        .split("stack: Some(\"")
        .nth(1)
        .and_then(debug_string)
        .and_then(|(stack, _)| {
            stack.lines().find_map(|l| {
                // `at lookup (/app.js:4:10)` or `at /app.js:4:10`
                let l = l.trim().strip_prefix("at ")?;
                let (function, place) = match l.split_once(" (") {
                    Some((f, p)) => (Some(f), p.trim_end_matches(')')),
                    None => (None, l),
                };
                let file = place.rsplit('/').next().unwrap_or(place);
                let name = file.split(':').next().unwrap_or(file);
                if SDK_FILES.contains(&name) {
                    return None;
                }
                Some(match function {
                    Some(f) => format!("{file}, in {f}"),
                    None => file.to_string(),
                })
            })
        });
    Some(match frame {
        Some(frame) => format!("{message} ({frame})"),
        None => message,
    })
}

/// Reads a Rust `Debug` string body up to its closing quote, unescaping it;
/// returns it and what follows.
fn debug_string(text: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &text[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                '0' => out.push('\0'),
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

/// `thread '<unnamed>' (1) panicked at src/lib.rs:10:50:` then the message.
fn rust_panic(lines: &[String]) -> Option<String> {
    let at = lines
        .iter()
        .rposition(|l| l.starts_with("thread '") && l.contains(" panicked at "))?;
    let place = lines[at]
        .split(" panicked at ")
        .nth(1)?
        .trim_end_matches(':');
    let message: Vec<&str> = lines[at + 1..]
        .iter()
        .map(String::as_str)
        .take_while(|l| !is_noise(l))
        .collect();
    let message = message.join(" / ");
    // A panic inside a toolchain's runtime (jco's `crates/runtime/src/...`)
    // is about what the guest handed it, not a line of the user's code.
    if place.contains("runtime/src/") && !message.is_empty() {
        return Some(if message.starts_with("expected ") {
            format!(
                "returned a value of the wrong type: {message} (see the types in wit/agent.wit)"
            )
        } else {
            message
        });
    }
    Some(if message.is_empty() {
        format!("panicked at {place}")
    } else {
        format!("panicked at {place}: {message}")
    })
}

/// Nothing recognisable: the root cause and the last lines of stderr.
fn fallback(root: &str, lines: &[String]) -> String {
    let last: Vec<&str> = lines
        .iter()
        .map(String::as_str)
        .filter(|l| !is_noise(l))
        .collect();
    let last = &last[last.len().saturating_sub(3)..];
    if last.is_empty() {
        root.to_string()
    } else {
        format!("{root} (guest stderr: {})", last.join(" / "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    const TRAP: &str = "wasm trap: wasm `unreachable` instruction executed";

    #[test]
    fn python_exceptions_name_the_users_line() {
        let stderr = lines(
            "Traceback (most recent call last):
  File \"/0/app.py\", line 11, in on_message
  File \"/0/app.py\", line 6, in lookup
  File \"/1/warren_agent.py\", line 80, in context
KeyError: 'missing_key'

thread '<unnamed>' (1) panicked at runtime/src/lib.rs:1293:29:
Python function threw an unexpected exception
note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace",
        );
        assert_eq!(
            explain(TRAP, &stderr),
            "KeyError: 'missing_key' (app.py:6, in lookup)"
        );
        let d = detail(&stderr).unwrap();
        assert!(
            d.starts_with("Traceback") && !d.contains("RUST_BACKTRACE"),
            "{d}"
        );
    }

    #[test]
    fn a_wrong_return_type_from_python() {
        let stderr = lines(
            "
thread '<unnamed>' (1) panicked at runtime/src/lib.rs:1704:44:
called `Result::unwrap()` on an `Err` value: CastError { from: 'not a list', classinfo: <class 'list'> }
note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace",
        );
        assert_eq!(
            explain(TRAP, &stderr),
            "returned a value of the wrong type: expected list, got 'not a list' (see the types in wit/agent.wit)"
        );
    }

    #[test]
    fn js_exceptions_name_the_users_line() {
        let stderr = lines(
            r#"
thread '<unnamed>' (1) panicked at crates/runtime/src/interpreter.rs:51:31:
Failed to call 'onMessage': Value(Exception(
Exception { message: Some("cannot read property 'first' of undefined"), stack: Some("    at lookup (/app.js:4:10)\n    at onMessage (/app.js:8:37)\n") })
)
note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace"#,
        );
        assert_eq!(
            explain(TRAP, &stderr),
            "cannot read property 'first' of undefined (app.js:4:10, in lookup)"
        );
        let sdk = lines(
            r#"Exception { message: Some("bad \"x\""), stack: Some("    at context (/warren_agent.js:50:3)\n    at /app.js:9:86\n") }"#,
        );
        assert_eq!(explain(TRAP, &sdk), "bad \"x\" (app.js:9:86)");
    }

    #[test]
    fn rust_panics_without_the_backtrace_hint() {
        let stderr = lines(
            "
thread '<unnamed>' (1) panicked at src/lib.rs:96:23:
chaos was told to trap
note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace",
        );
        assert_eq!(
            explain(TRAP, &stderr),
            "panicked at src/lib.rs:96:23: chaos was told to trap"
        );
    }

    #[test]
    fn a_wrong_return_type_from_js() {
        let stderr = lines(
            "thread '<unnamed>' (1) panicked at crates/runtime/src/call.rs:163:38:\nexpected array",
        );
        assert_eq!(
            explain(TRAP, &stderr),
            "returned a value of the wrong type: expected array (see the types in wit/agent.wit)"
        );
    }

    #[test]
    fn anything_else_keeps_the_root_cause() {
        assert_eq!(explain(TRAP, &[]), TRAP);
        assert_eq!(
            explain(TRAP, &lines("one\ntwo\nthree\nfour")),
            format!("{TRAP} (guest stderr: two / three / four)")
        );
    }
}
