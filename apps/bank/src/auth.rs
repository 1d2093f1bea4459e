//! Password hashing: argon2id, stored as PHC strings (`$argon2id$v=19$m=...$salt$hash`).
//!
//! Hashing and checking are deliberately slow (that is their point), so they run on the
//! worker pool, never on an I/O thread. The parameters are stored inside each PHC string,
//! so a database written with one [`HashCost`] is checked correctly under another.

use std::io::Read;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

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
    /// such a login takes as long as a wrong password for a real one.
    dummy: String,
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
        };
        let mut pw = [0u8; 16];
        random(&mut pw)?;
        hasher.dummy = hasher.hash(&format!("{pw:02x?}"))?;
        Ok(hasher)
    }

    /// A new salted hash of `password`, as a PHC string.
    pub(crate) fn hash(&self, password: &str) -> Result<String, HashError> {
        let mut salt = [0u8; 16];
        random(&mut salt)?;
        let salt = SaltString::encode_b64(&salt).map_err(|e| HashError::Argon(e.to_string()))?;
        self.argon
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| HashError::Argon(e.to_string()))
    }

    /// Whether `password` matches the PHC string `stored`. With `None` (no such user) it
    /// checks against a dummy hash, taking as long, and answers false.
    pub(crate) fn verify(&self, password: &str, stored: Option<&str>) -> bool {
        let phc = stored.unwrap_or(&self.dummy);
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
        ok && stored.is_some()
    }
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
        };
        assert!(other.verify("password1", Some(&stored)));
    }
}
