//! AMQP URLs in what we print: the password never appears.
//!
//! Redaction does not parse the URL: a password with an unescaped `/`, `@`,
//! `?` or `#` makes URL parsers see another authority, and whatever they
//! took for a host would be printed. Everything between `://` and the last
//! `@` is credentials, whatever it holds.

/// The URL with everything between `://` and the last `@` replaced by `***`,
/// for every log line and error.
pub fn redact(url: &str) -> String {
    match credentials(url) {
        Some((start, end)) => format!("{}***{}", &url[..start], &url[end..]),
        None => url.to_string(),
    }
}

/// Byte range of the credentials: after `://`, up to (not including) the
/// last `@`. `None` when there are none.
fn credentials(url: &str) -> Option<(usize, usize)> {
    let start = url.find("://")? + 3;
    let at = url[start..].rfind('@')? + start;
    (at > start).then_some((start, at))
}

/// Removes the URL's credentials from a text (a lapin error message): the
/// URL itself, the whole credentials and the password part wherever they
/// appear.
pub(super) fn scrub(text: &str, url: &str) -> String {
    let mut out = text.replace(url, &redact(url));
    if let Some((start, end)) = credentials(url) {
        let userinfo = &url[start..end];
        out = out.replace(userinfo, "***");
        if let Some((_, password)) = userinfo.split_once(':')
            && password.len() >= 3
        {
            out = out.replace(password, "***");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_between_scheme_and_the_last_at_is_printed() {
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqps://u:p@a@host/vh"), "amqps://***@host/vh");
        assert_eq!(redact("amqp://127.0.0.1:5672"), "amqp://127.0.0.1:5672");
        assert_eq!(redact("amqp://user@host"), "amqp://***@host");
        for password in [
            "Se/cret9", "a/b@c", "q?x=1", "h#sh", "p%2Fq", "x:y:z", "/@/",
        ] {
            let url = format!("amqp://probe:{password}@127.0.0.1:5672/%2f");
            let shown = redact(&url);
            assert_eq!(shown, "amqp://***@127.0.0.1:5672/%2f", "{password}");
            let err = format!("invalid port in {url}: `{password}` and probe:{password}");
            let clean = scrub(&err, &url);
            assert!(!clean.contains(password), "{password}: {clean}");
        }
    }
}
