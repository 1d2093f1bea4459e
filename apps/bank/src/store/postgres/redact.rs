//! A PostgreSQL URL as messages and logs show it: without its password.

/// The URL with any password replaced by `***` (for messages and logs).
///
/// The password is found where tokio-postgres finds it, not where a URL would have it:
/// the user information is everything before the *first* `@` (a `/` or `?` before it is
/// part of the password, not the end of the host), the password what follows its first
/// `:`; and a query parameter whose name decodes to `password` (`pass%77ord=`).
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (creds, after) = match rest.split_once('@') {
        Some((creds, after)) => match creds.split_once(':') {
            Some((user, _password)) => (format!("{user}:***@"), after),
            None => (format!("{creds}@"), after),
        },
        None => (String::new(), rest),
    };
    let after: String = match after.split_once('?') {
        Some((host_path, query)) => {
            let params: Vec<&str> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((key, _)) if decoded(key) == b"password" => "password=***",
                    _ => p,
                })
                .collect();
            format!("{host_path}?{}", params.join("&"))
        }
        None => after.to_owned(),
    };
    format!("{scheme}://{creds}{after}")
}

/// `key` percent-decoded, as tokio-postgres decodes a parameter's name (a `%` not followed
/// by two hex digits is kept as it is).
fn decoded(key: &str) -> Vec<u8> {
    let bytes = key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}
