//! `echo serve` as an operator meets its start-up errors: TLS material that cannot be
//! used (a key that does not belong to the certificate, a chain in the wrong order, an
//! encrypted key, a key type rustls cannot sign with), an IPv6 address without brackets,
//! a `--loops` beyond reason. Each is one clear message naming the bad file or value and
//! exit status 2, at once: never a panic, an abort or a server that starts.

use std::process::Command;
use std::time::Duration;

use duo_testkit::{run_within, Finished, TestCerts};

/// How long a refusal may take (a server that starts instead is killed then).
const STARTUP: Duration = Duration::from_secs(8);

/// An EC P-256 key encrypted with a passphrase, PKCS#8 (`openssl pkcs8 -topk8`).
const ENCRYPTED_PKCS8: &str = "-----BEGIN ENCRYPTED PRIVATE KEY-----
MIHsMFcGCSqGSIb3DQEFDTBKMCkGCSqGSIb3DQEFDDAcBAheubLr7e19PgICCAAw
DAYIKoZIhvcNAgkFADAdBglghkgBZQMEASoEEJjTAZ1va+Z7Df33+EYglfUEgZAE
M9DeRfwLtox4R3z5YWS8E4mmEQ6+oKkzipGQIQb0Kqy1Nueuk9y3qik9eE76grFP
kK2CRLwrH7qUvaJgNj0qc0Q4RIr0t1BqFZbiypHAtBprXibC2hI9mkJUerOqbl8L
iMU1EMPAdRY4IExTzSJsXSjKqurvke/OttmQf3F6vxdsfNzFstY6byo6vC6LXd8=
-----END ENCRYPTED PRIVATE KEY-----
";

/// The same key encrypted the traditional OpenSSL way (SEC1 with PEM headers).
const ENCRYPTED_SEC1: &str = "-----BEGIN EC PRIVATE KEY-----
Proc-Type: 4,ENCRYPTED
DEK-Info: AES-128-CBC,72107BEA6C32F54A7C4FAD30F7A71666

1+piuyARdmLKq7zgcL1CcRGt1d/AVymcS5b6jr011K54BsXR/MqosBqlSPCsLRK/
XITO9zsJ1hHb4AMtAyeu440r7yJX349m/fePf9a4PTYpn+meHUsD1DuIzRLVEYG6
YTZCIrfjBWu5POkL7S13kLmTtNUttQ2SE0f4zc0+BE8=
-----END EC PRIVATE KEY-----
";

/// A DSA key in OpenSSL's traditional form.
const DSA_TRADITIONAL: &str = "-----BEGIN DSA PRIVATE KEY-----
MIIBywIBAAKBgQC+TqZuqCRLC+SR/HvALYU+B8+QR3LAWQcDpsIcE2lJtKuhUtG8
XrKKnDjgCR3fIj4+XT0AqBEQ/wo3jYnYunA3qDwyd3xrmXmUHE899IvFfZoC94+8
vYx5EREElMairp65ZoC7ZpKM4mWArx743xXewdP69gVa4p9oeujDb4TzmwIdAPvC
FexEzKkFoosRRbWoYqSo1XPE0y188C5yV7sCgYBVfjwyUuEK3MgcEfVSg5J9v+t8
oR2WfdjzRmNNJrs6qya69C/FxOckf85fzIt/erAh5pXbP9I0oaRgC/iqGD8xON/h
9HJzz/iZGM9uwdsm5k/zAt/jfv4qLDyBkorXjZ4QeHsEMG7YLAZVfVcWM2fou5Tz
feSNoXMJPeLfUjTJWAKBgG6vEPiK/5tEWGl8RPiwKO2JM2AJDC4vj5NumpvJfn43
saQxEu+f557x1NcgwEbVe7crY+iMhej2MkPvqEe1FoxE+uGVib6sMzzC8GQmLnsB
io8EeXYGrwCTSGhNGJUHvl+eALSGp4TSDreWTVvF7Ll0eLPSAKu9CLOhrT+CMZA+
Ah0A3xqXhmhiZ1qcVjAvSxoxwHVMBPeRhaxT3Qbeog==
-----END DSA PRIVATE KEY-----
";

/// The same DSA key as PKCS#8 (`BEGIN PRIVATE KEY`, which rustls reads but cannot use).
const DSA_PKCS8: &str = "-----BEGIN PRIVATE KEY-----
MIIBWwIBADCCATMGByqGSM44BAEwggEmAoGBAL5Opm6oJEsL5JH8e8AthT4Hz5BH
csBZBwOmwhwTaUm0q6FS0bxesoqcOOAJHd8iPj5dPQCoERD/CjeNidi6cDeoPDJ3
fGuZeZQcTz30i8V9mgL3j7y9jHkREQSUxqKunrlmgLtmkoziZYCvHvjfFd7B0/r2
BVrin2h66MNvhPObAh0A+8IV7ETMqQWiixFFtahipKjVc8TTLXzwLnJXuwKBgFV+
PDJS4QrcyBwR9VKDkn2/63yhHZZ92PNGY00muzqrJrr0L8XE5yR/zl/Mi396sCHm
lds/0jShpGAL+KoYPzE43+H0cnPP+JkYz27B2ybmT/MC3+N+/iosPIGSiteNnhB4
ewQwbtgsBlV9VxYzZ+i7lPN95I2hcwk94t9SNMlYBB8CHQDfGpeGaGJnWpxWMC9L
GjHAdUwE95GFrFPdBt6i
-----END PRIVATE KEY-----
";

/// An Ed448 key (PKCS#8): valid, but not a kind the `ring` provider signs with.
const ED448_PKCS8: &str = "-----BEGIN PRIVATE KEY-----
MEcCAQAwBQYDK2VxBDsEObKwrboYVrvKW5AJdTBiJd8d0SU4/NcAYp5gL/Q7ZhwZ
d+SCKchdOBlycn7DPpTzr+m61qdcQN35sg==
-----END PRIVATE KEY-----
";

/// Runs `echo serve --listen 127.0.0.1:0 --io-threads 1 ARGS..` (or with `listen` as
/// given), expecting a refusal within [`STARTUP`].
fn run(listen: &str, args: &[&str]) -> Finished {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_echo"));
    cmd.args(["serve", "--listen", listen, "--io-threads", "1"])
        .args(args)
        .env("RUST_LOG", "info")
        .env("RUST_BACKTRACE", "1");
    run_within(&mut cmd, STARTUP)
        .unwrap_or_else(|e| panic!("echo serve {args:?} was not refused at start: {e}"))
}

/// The refusal: status 2, nothing announced, no panic or abort, and a message that holds
/// every one of `needles`.
fn assert_refused(done: &Finished, what: &str, needles: &[&str]) {
    for bad in ["panicked", "backtrace", "memory allocation"] {
        assert!(
            !done.stderr.contains(bad),
            "{what}: {bad} on stderr:\n{}",
            done.stderr
        );
    }
    assert_eq!(
        done.status.code(),
        Some(2),
        "{what}: {}\nstderr:\n{}",
        done.status,
        done.stderr
    );
    assert!(done.stdout.is_empty(), "{what}: announced {}", done.stdout);
    for needle in needles {
        assert!(
            done.stderr.contains(needle),
            "{what}: the message names {needle:?}:\n{}",
            done.stderr
        );
    }
}

/// A `--loops` no host could run used to abort the process (a 59 GB allocation) with a
/// backtrace; it is a usage error naming the flag, as `bank serve`'s is.
#[test]
fn loops_beyond_reason_are_a_usage_error() {
    let done = run("127.0.0.1:0", &["--loops", "100000000"]);
    assert_refused(&done, "--loops 100000000", &["--loops", "100000000"]);
}

/// A key that is not the certificate's: the message names both files and says what is
/// wrong (it was `TLS configuration: keys may not be consistent: KeyMismatch`).
#[test]
fn a_key_that_does_not_match_the_certificate_names_both_files() {
    let (mine, other) = (TestCerts::new("cfg-mine"), TestCerts::new("cfg-other"));
    let (cert, key) = (mine.path("cert.pem"), other.path("key.pem"));
    let done = run("127.0.0.1:0", &["--tls-cert", &cert, "--tls-key", &key]);
    assert_refused(&done, "mismatched key", &[&cert, &key, "does not match"]);
}

/// A chain with the CA first: the key matches the second certificate, not the first; the
/// message says the server's own certificate must come first.
#[test]
fn a_chain_in_the_wrong_order_says_which_certificate_comes_first() {
    let certs = TestCerts::new("cfg-order");
    let chain = format!("{}.reversed.pem", certs.path("cert.pem"));
    let reversed = std::fs::read_to_string(certs.path("ca.pem")).unwrap()
        + &std::fs::read_to_string(certs.path("cert.pem")).unwrap();
    std::fs::write(&chain, reversed).unwrap();
    let key = certs.path("key.pem");
    let done = run("127.0.0.1:0", &["--tls-cert", &chain, "--tls-key", &key]);
    assert_refused(&done, "reversed chain", &[&chain, &key, "first"]);
}

/// An encrypted key, PKCS#8 or traditional, is said to be encrypted (it was "no private
/// key found" and "invalid PEM: base64 decode error").
#[test]
fn an_encrypted_key_is_named_as_such() {
    let certs = TestCerts::new("cfg-pass");
    let cert = certs.path("cert.pem");
    for (name, pem) in [("pkcs8", ENCRYPTED_PKCS8), ("sec1", ENCRYPTED_SEC1)] {
        let key = format!("{cert}.{name}.key");
        std::fs::write(&key, pem).unwrap();
        let done = run("127.0.0.1:0", &["--tls-cert", &cert, "--tls-key", &key]);
        assert_refused(&done, name, &[&key, "encrypted"]);
    }
}

/// DSA (either form) and Ed448 keys: the message names the key file and says the kind
/// is not supported (the PKCS#8 ones gave `TLS configuration: unexpected error: failed
/// to parse private key as RSA, ECDSA, or EdDSA`, naming no file; the traditional DSA
/// one, "no private key found").
#[test]
fn an_unsupported_key_type_names_the_key_file() {
    let certs = TestCerts::new("cfg-kinds");
    let cert = certs.path("cert.pem");
    for (name, pem) in [
        ("dsa", DSA_TRADITIONAL),
        ("dsa-pkcs8", DSA_PKCS8),
        ("ed448", ED448_PKCS8),
    ] {
        let key = format!("{cert}.{name}.key");
        std::fs::write(&key, pem).unwrap();
        let done = run("127.0.0.1:0", &["--tls-cert", &cert, "--tls-key", &key]);
        assert_refused(&done, name, &[&key, "unsupported"]);
    }
}

/// An IPv6 address needs brackets before its port: `::1:7000` is itself an IPv6 address
/// (0:0:0:0:0:0:1:7000), and was served as `[::1]:7000` on a guess.
#[test]
fn an_ipv6_address_without_brackets_is_a_usage_error() {
    for listen in ["::1:0", "::1"] {
        let done = run(listen, &[]);
        assert_refused(&done, listen, &[listen, "brackets"]);
    }
    let done = run("127.0.0.1:0", &["--metrics", "::1:0"]);
    assert_refused(&done, "--metrics ::1:0", &["::1:0", "brackets"]);
}
