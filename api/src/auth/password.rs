//! Password hashing with argon2id, off the async runtime.

use crate::domain::Password;
use crate::error::ApiError;
use anyhow::anyhow;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// OWASP's argon2id baseline: 19 MiB of memory, 2 passes, 1 lane.
const MEMORY_KIB: u32 = 19 * 1024;
const PASSES: u32 = 2;
const LANES: u32 = 1;

/// Hashes running at once. Each holds 19 MiB; unbounded, a login storm
/// would hold gigabytes. Beyond this, requests wait their turn.
const MAX_CONCURRENT_HASHES: usize = 8;

pub struct Passwords {
    argon: Argon2<'static>,
    /// Checked against when the account does not exist, so an unknown
    /// login costs as long as a wrong password and answers the same.
    dummy_hash: String,
    permits: Semaphore,
}

impl Default for Passwords {
    fn default() -> Self {
        Self::new()
    }
}

impl Passwords {
    pub fn new() -> Self {
        let params = Params::new(MEMORY_KIB, PASSES, LANES, None)
            .expect("constant argon2 parameters are valid");
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let dummy_hash = argon
            .hash_password(b"not anyone's password, only a timing decoy")
            .expect("hashing a constant cannot fail")
            .to_string();
        Self {
            argon,
            dummy_hash,
            permits: Semaphore::new(MAX_CONCURRENT_HASHES),
        }
    }

    /// The PHC string of a new hash of `password` (random salt).
    pub async fn hash(self: &Arc<Self>, password: Password) -> Result<String, ApiError> {
        self.off_runtime(move |this| {
            this.argon
                .hash_password(password.expose().as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| ApiError::Internal(anyhow!("hashing a password: {e}")))
        })
        .await?
    }

    /// Whether `password` matches `hash`; with no hash (unknown account),
    /// does the same work against a decoy and answers false.
    pub async fn verify(
        self: &Arc<Self>,
        password: String,
        hash: Option<String>,
    ) -> Result<bool, ApiError> {
        self.off_runtime(move |this| {
            let known = hash.is_some();
            let hash = hash.as_deref().unwrap_or(&this.dummy_hash);
            let matches = this
                .argon
                .verify_password(password.as_bytes(), hash)
                .is_ok();
            known && matches
        })
        .await
    }

    /// Runs argon2 work on the blocking pool, at most
    /// `MAX_CONCURRENT_HASHES` at a time.
    async fn off_runtime<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&Passwords) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| ApiError::Internal(e.into()))?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || work(&this))
            .await
            .map_err(|e| ApiError::Internal(e.into()))
    }
}
