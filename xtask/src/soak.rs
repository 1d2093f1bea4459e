//! `cargo xtask soak`: long-running mixed load against the echo and bank servers.

use crate::Failure;

pub(crate) fn soak(_args: Vec<String>) -> Result<(), Failure> {
    Err(Failure::Run("soak is being written".into()))
}
