//! [`Validity`]: when a certificate may be used, read from its DER (RFC 5280 section
//! 4.1.2.5) with `x509-parser`, and the start-up warning for a certificate chain loaded
//! outside it (rustls and webpki keep the dates to themselves).

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rustls::pki_types::CertificateDer;
use x509_parser::time::ASN1Time;

/// When a certificate may be used: from `not_before` to `not_after`, both included
/// (RFC 5280 section 4.1.2.5). A client refuses the handshake with a server whose
/// certificate (or any certificate of whose chain) is used outside it.
///
/// ```
/// use std::time::SystemTime;
/// use duo_net::tls::Validity;
///
/// let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
/// let validity = Validity::of(cert.cert.der()).expect("an X.509 certificate");
/// assert!(validity.contains(SystemTime::now()));
/// // rcgen's default period, written as the certificate holds it.
/// assert_eq!(validity.to_string(), "from 1975-01-01 00:00:00 UTC to 4096-01-01 00:00:00 UTC");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// The first second it is valid.
    pub not_before: SystemTime,
    /// The last second it is valid.
    pub not_after: SystemTime,
}

impl Validity {
    /// The validity period of an X.509 certificate in DER; `None` if the bytes are not a
    /// certificate whose dates can be read (never a panic, whatever the bytes).
    pub fn of(cert: &CertificateDer<'_>) -> Option<Validity> {
        let (_, cert) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
        let validity = cert.validity();
        Some(Validity {
            not_before: system_time(validity.not_before.timestamp())?,
            not_after: system_time(validity.not_after.timestamp())?,
        })
    }

    /// Whether `t` lies within the period.
    pub fn contains(&self, t: SystemTime) -> bool {
        self.not_before <= t && t <= self.not_after
    }
}

impl fmt::Display for Validity {
    /// `from 2024-01-01 00:00:00 UTC to 2025-01-01 00:00:00 UTC`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "from {} to {}",
            Utc(self.not_before),
            Utc(self.not_after)
        )
    }
}

/// Logs a warning (once per process for the same file and dates) for each certificate of
/// the chain `certs`, read from `path`, that is not valid at `now`: the server starts, but
/// clients will refuse its handshakes until the file is replaced.
pub(crate) fn warn_if_not_valid(path: &Path, certs: &[CertificateDer<'_>], now: SystemTime) {
    static WARNED: parking_lot::Mutex<Vec<(String, usize, Validity)>> =
        parking_lot::Mutex::new(Vec::new());
    let count = certs.len();
    for (i, cert) in certs.iter().enumerate() {
        let Some(validity) = Validity::of(cert) else {
            continue;
        };
        let why = if now < validity.not_before {
            format!("is not valid yet (until {})", Utc(validity.not_before))
        } else if now > validity.not_after {
            format!("expired on {}", Utc(validity.not_after))
        } else {
            continue;
        };
        // Once per file, position and dates: a reload of the same file says nothing new.
        let key = (path.display().to_string(), i, validity);
        let mut warned = WARNED.lock();
        if warned.contains(&key) {
            continue;
        }
        log::warn!(
            "{}: certificate {} of {count} {why}: valid {validity}, now is {}; TLS clients \
             will refuse the handshake",
            path.display(),
            i + 1,
            Utc(now)
        );
        warned.push(key);
    }
}

/// The time `secs` seconds from the Unix epoch (before it if negative).
fn system_time(secs: i64) -> Option<SystemTime> {
    let magnitude = Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(magnitude)
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(magnitude)
    }
}

/// A time shown as `2025-01-01 00:00:00 UTC`.
struct Utc(SystemTime);

impl fmt::Display for Utc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = match self.0.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
        };
        let Ok(t) = ASN1Time::from_timestamp(secs) else {
            return write!(f, "{secs} s from the Unix epoch");
        };
        let t = t.to_datetime();
        write!(
            f,
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_valid(from: (i32, u8, u8), to: (i32, u8, u8)) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
        params.not_after = rcgen::date_time_ymd(to.0, to.1, to.2);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn dates_read_back_in_both_time_forms() {
        // UTCTime before 2050 (and 1950 to 1999), GeneralizedTime from 2050 on.
        for (from, to, shown) in [
            (
                (2001, 2, 28),
                (2049, 12, 31),
                "from 2001-02-28 00:00:00 UTC to 2049-12-31 00:00:00 UTC",
            ),
            (
                (1950, 1, 1),
                (2050, 1, 1),
                "from 1950-01-01 00:00:00 UTC to 2050-01-01 00:00:00 UTC",
            ),
            (
                (2024, 2, 29),
                (9999, 12, 31),
                "from 2024-02-29 00:00:00 UTC to 9999-12-31 00:00:00 UTC",
            ),
        ] {
            let v = Validity::of(&cert_valid(from, to)).unwrap();
            assert_eq!(v.to_string(), shown);
        }
        let v = Validity::of(&cert_valid((1970, 1, 2), (2038, 1, 19))).unwrap();
        assert_eq!(
            v.not_before,
            SystemTime::UNIX_EPOCH + Duration::from_secs(86_400)
        );
        assert_eq!(
            v.not_after,
            SystemTime::UNIX_EPOCH + Duration::from_secs(2_147_472_000)
        );
        assert!(!v.contains(SystemTime::UNIX_EPOCH));
    }

    #[test]
    fn any_bytes_are_read_without_a_panic() {
        let good = cert_valid((2001, 1, 1), (2002, 1, 1)).as_ref().to_vec();
        for cut in 0..good.len() {
            let _ = Validity::of(&CertificateDer::from(&good[..cut]));
            let mut flipped = good.clone();
            flipped[cut] ^= 0xFF;
            let _ = Validity::of(&CertificateDer::from(flipped));
        }
        assert_eq!(
            Validity::of(&CertificateDer::from(&b"\x30\x84\xff"[..])),
            None
        );
    }
}
