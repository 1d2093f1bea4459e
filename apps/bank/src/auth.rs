//! Password hashing: argon2id, stored as PHC strings (`$argon2id$v=19$m=...$salt$hash`).
//!
//! Hashing and checking are deliberately slow (that is their point), so they run on the
//! worker pool, never on an I/O thread. The parameters are stored inside each PHC string,
//! so a database written with one [`HashCost`] is checked correctly under another.
//!
//! A login that names no user is checked against a dummy hash, so that it takes as long
//! as a wrong password for a real user. The dummy has the parameters of the last stored
//! hash checked, not of the current [`HashCost`]: stored hashes keep the cost they were
//! made with (another `--hash-cost` before, argon2's defaults of an older build), and a
//! dummy at another cost would tell by its timing which names exist.

use std::io::Read;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use parking_lot::Mutex;

/// How many dummy hashes (one for each set of parameters met) are kept.
const DUMMIES: usize = 4;

/// How expensive new password hashes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HashCost {
    /// argon2's recommended parameters (argon2id, 19 MiB, 2 passes).
    Default,
    /// Minimal parameters (8 KiB, 1 pass), for tests only: debug builds hash slowly.
    Low,
}

/// Hashes and checks passwords.
pub(crate) struct Hasher {
    argon: Argon2<'static>,
    /// A hash of a random password, checked when a login names an unknown user, so that
    /// such a login takes as long as a wrong password for a real one; at this hasher's
    /// cost, until a stored hash has been checked.
    dummy: String,
    /// Dummy hashes at the parameters of stored hashes checked (keyed by the PHC string's
    /// algorithm, version and parameters), the last one used first.
    dummies: Mutex<Vec<(String, String)>>,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hasher")
            .field("params", self.argon.params())
            .finish()
    }
}

/// Hashing failed (a bad parameter or no randomness).
#[derive(Debug, thiserror::Error)]
pub(crate) enum HashError {
    /// Reading the salt from `/dev/urandom`.
    #[error("reading /dev/urandom: {0}")]
    Random(#[from] std::io::Error),
    /// The argon2 library refused.
    #[error("argon2: {0}")]
    Argon(String),
}

impl Hasher {
    /// A hasher making hashes of the given cost.
    pub(crate) fn new(cost: HashCost) -> Result<Hasher, HashError> {
        let params = match cost {
            HashCost::Default => Params::default(),
            HashCost::Low => Params::new(Params::MIN_M_COST, 1, 1, None)
                .map_err(|e| HashError::Argon(e.to_string()))?,
        };
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let mut hasher = Hasher {
            argon,
            dummy: String::new(),
            dummies: Mutex::new(Vec::new()),
        };
        let mut pw = [0u8; 16];
        random(&mut pw)?;
        hasher.dummy = hasher.hash(&format!("{pw:02x?}"))?;
        Ok(hasher)
    }

    /// A new salted hash of `password`, as a PHC string.
    pub(crate) fn hash(&self, password: &str) -> Result<String, HashError> {
        hash_with(&self.argon, password)
    }

    /// The dummy hash a login naming no user is checked against: at the parameters of
    /// the last stored hash checked, or at this hasher's own before any.
    fn dummy(&self) -> String {
        match self.dummies.lock().first() {
            Some((_, dummy)) => dummy.clone(),
            None => self.dummy.clone(),
        }
    }

    /// Makes the dummy hash follow `stored`'s parameters (a new dummy the first time
    /// they are met).
    fn follow(&self, stored: &PasswordHash<'_>) {
        let key = format!(
            "{}${:?}${}",
            stored.algorithm, stored.version, stored.params
        );
        {
            let mut dummies = self.dummies.lock();
            if let Some(at) = dummies.iter().position(|(k, _)| *k == key) {
                let hit = dummies.remove(at);
                dummies.insert(0, hit);
                return;
            }
        }
        let argon = (|| {
            let algorithm = Algorithm::try_from(stored.algorithm).ok()?;
            let version = match stored.version {
                Some(v) => Version::try_from(v).ok()?,
                None => Version::V0x10,
            };
            let params = Params::try_from(stored).ok()?;
            Some(Argon2::new(algorithm, version, params))
        })();
        let Some(dummy) = argon.and_then(|argon| {
            let mut pw = [0u8; 16];
            random(&mut pw).ok()?;
            hash_with(&argon, &format!("{pw:02x?}")).ok()
        }) else {
            return;
        };
        let mut dummies = self.dummies.lock();
        dummies.retain(|(k, _)| *k != key);
        dummies.insert(0, (key, dummy));
        dummies.truncate(DUMMIES);
    }

    /// Whether `password` matches the PHC string `stored`. With `None` (no such user) it
    /// checks against a dummy hash, taking as long, and answers false.
    pub(crate) fn verify(&self, password: &str, stored: Option<&str>) -> bool {
        let dummy;
        let phc = match stored {
            Some(stored) => stored,
            None => {
                dummy = self.dummy();
                &dummy
            }
        };
        let Ok(parsed) = PasswordHash::new(phc) else {
            duo_net::log_limited!(
                log::Level::Error,
                "a stored password hash is not a valid PHC string"
            );
            return false;
        };
        let ok = self
            .argon
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        if stored.is_some() {
            self.follow(&parsed);
        }
        ok && stored.is_some()
    }
}

/// A new salted hash of `password` by `argon`, as a PHC string.
fn hash_with(argon: &Argon2<'_>, password: &str) -> Result<String, HashError> {
    let mut salt = [0u8; 16];
    random(&mut salt)?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| HashError::Argon(e.to_string()))?;
    argon
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError::Argon(e.to_string()))
}

/// Fills `buf` from the kernel's random source.
fn random(buf: &mut [u8]) -> std::io::Result<()> {
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_are_salted() {
        let h = Hasher::new(HashCost::Low).unwrap();
        let a = h.hash("correct horse").unwrap();
        let b = h.hash("correct horse").unwrap();
        assert_ne!(a, b, "salted");
        assert!(a.starts_with("$argon2id$"));
        assert!(!a.contains("correct"));
        assert!(h.verify("correct horse", Some(&a)));
        assert!(!h.verify("wrong horse", Some(&a)));
        assert!(!h.verify("correct horse", None));
        assert!(!h.verify("correct horse", Some("not a hash")));
    }

    #[test]
    fn parameters_travel_with_the_hash() {
        let low = Hasher::new(HashCost::Low).unwrap();
        let stored = low.hash("password1").unwrap();
        // A hasher configured differently still checks it with the stored parameters.
        let other = Hasher {
            argon: Argon2::new(
                Algorithm::Argon2id,
                Version::V0x13,
                Params::new(16, 2, 1, None).unwrap(),
            ),
            dummy: low.dummy.clone(),
            dummies: Mutex::new(Vec::new()),
        };
        assert!(other.verify("password1", Some(&stored)));
    }

    /// Review round 12 of the bank: a login naming no user was checked against a dummy
    /// at the current `--hash-cost`, while stored hashes keep the cost they were made
    /// with; an unknown name then answered in another time than a known one (a database
    /// written at `default`, served at `low`: microseconds against tens of milliseconds).
    #[test]
    fn the_dummy_follows_the_stored_hashes_parameters() {
        let params = |phc: &str| {
            let parsed = PasswordHash::new(phc).unwrap();
            format!(
                "{} {:?} {}",
                parsed.algorithm, parsed.version, parsed.params
            )
        };
        let low = Hasher::new(HashCost::Low).unwrap();
        let other = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(16, 2, 1, None).unwrap(),
        );
        let stored = hash_with(&other, "password1").unwrap();
        assert_ne!(params(&low.dummy()), params(&stored));
        assert!(!low.verify("wrong", Some(&stored)));
        assert_eq!(params(&low.dummy()), params(&stored));
        assert!(!low.verify("password1", None));
        // Another stored cost met later: the dummy follows again (from the cache when
        // met before).
        let own = low.hash("password2").unwrap();
        assert!(low.verify("password2", Some(&own)));
        assert_eq!(params(&low.dummy()), params(&own));
        assert!(low.verify("password1", Some(&stored)));
        assert_eq!(params(&low.dummy()), params(&stored));
        assert_eq!(low.dummies.lock().len(), 2);
    }
}
