//! Access tokens: EdDSA (Ed25519) JWTs.
//!
//! The api holds the private key and signs; gateways hold only the public key
//! and verify, so a compromised gateway cannot mint tokens. Without configured
//! keys, a key pair is generated once into the data directory and reused.

use crate::ids::{SessionId, UserId};
use anyhow::{Context, bail};
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// File names of a generated key pair inside the data directory.
pub const PRIVATE_KEY_FILE: &str = "jwt-ed25519.pem";
pub const PUBLIC_KEY_FILE: &str = "jwt-ed25519.pub.pem";

/// Clock skew tolerated between the api that signs and a gateway that
/// verifies. Small, because access tokens only live minutes.
const LEEWAY_SECS: u64 = 5;

/// The claims of an access token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// The user id, as a decimal string (JWT subjects are strings).
    pub sub: String,
    /// The session the token was issued for; revoking it ends its connections.
    pub sid: SessionId,
    pub iat: u64,
    pub exp: u64,
    /// Unique token id, for audit logs.
    pub jti: String,
    pub iss: String,
}

/// A verified access token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user_id: UserId,
    pub session_id: SessionId,
    /// Expiry, seconds since the Unix epoch.
    pub expires_at: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the access token has expired")]
    Expired,
    #[error("the access token is not valid")]
    Invalid,
}

/// Signs access tokens (api only).
pub struct TokenSigner {
    key: EncodingKey,
    issuer: String,
    ttl: Duration,
}

impl TokenSigner {
    pub fn from_pem(
        private_pem: &SecretString,
        issuer: &str,
        ttl: Duration,
    ) -> anyhow::Result<Self> {
        let key = EncodingKey::from_ed_pem(private_pem.expose_secret().as_bytes())
            .context("the JWT private key is not an Ed25519 PKCS#8 PEM")?;
        Ok(Self {
            key,
            issuer: issuer.to_owned(),
            ttl,
        })
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Issues a token for `user_id` in `session_id`; returns it with its claims.
    pub fn issue(
        &self,
        user_id: UserId,
        session_id: SessionId,
    ) -> anyhow::Result<(String, AccessClaims)> {
        self.issue_for(user_id, session_id, self.ttl)
    }

    /// Like [`TokenSigner::issue`], with a lifetime of its own.
    pub fn issue_for(
        &self,
        user_id: UserId,
        session_id: SessionId,
        ttl: Duration,
    ) -> anyhow::Result<(String, AccessClaims)> {
        let now = unix_now();
        let claims = AccessClaims {
            sub: user_id.to_string(),
            sid: session_id,
            iat: now,
            exp: now + ttl.as_secs(),
            jti: uuid::Uuid::new_v4().to_string(),
            iss: self.issuer.clone(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &self.key)
            .context("signing an access token")?;
        Ok((token, claims))
    }
}

/// Verifies access tokens (api and gateways).
pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl TokenVerifier {
    pub fn from_pem(public_pem: &str, issuer: &str) -> anyhow::Result<Self> {
        let key = DecodingKey::from_ed_pem(public_pem.as_bytes())
            .context("the JWT public key is not an Ed25519 SPKI PEM")?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[issuer]);
        validation.set_required_spec_claims(&["exp", "sub", "iss"]);
        validation.leeway = LEEWAY_SECS;
        Ok(Self { key, validation })
    }

    pub fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<AccessClaims>(token, &self.key, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })?;
        let user_id = data
            .claims
            .sub
            .parse::<UserId>()
            .map_err(|_| TokenError::Invalid)?;
        Ok(Identity {
            user_id,
            session_id: data.claims.sid,
            expires_at: data.claims.exp,
        })
    }
}

/// An Ed25519 key pair in PEM form.
pub struct KeyPair {
    pub private_pem: SecretString,
    pub public_pem: String,
}

impl KeyPair {
    /// A fresh random key pair.
    pub fn generate() -> Self {
        let signing = SigningKey::generate(&mut rand::rngs::OsRng);
        Self::from_signing_key(&signing).expect("encoding a fresh Ed25519 key cannot fail")
    }

    /// The pair whose private half is `private_pem`.
    pub fn from_private_pem(private_pem: &str) -> anyhow::Result<Self> {
        let signing = SigningKey::from_pkcs8_pem(private_pem)
            .context("the JWT private key is not an Ed25519 PKCS#8 PEM")?;
        Self::from_signing_key(&signing)
    }

    fn from_signing_key(signing: &SigningKey) -> anyhow::Result<Self> {
        let private_pem = signing
            .to_pkcs8_pem(LineEnding::LF)
            .context("encoding the private key")?;
        let public_pem = signing
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .context("encoding the public key")?;
        Ok(Self {
            private_pem: SecretString::from(private_pem.to_string()),
            public_pem,
        })
    }

    /// Reads the pair kept in `dir`, generating and saving one on first use.
    /// The private key file is created with mode 0600.
    pub fn load_or_generate(dir: &Path) -> anyhow::Result<Self> {
        let private_path = dir.join(PRIVATE_KEY_FILE);
        if private_path.exists() {
            let pem = std::fs::read_to_string(&private_path)
                .with_context(|| format!("reading {}", private_path.display()))?;
            let pair = Self::from_private_pem(&pem)
                .with_context(|| format!("loading {}", private_path.display()))?;
            write_public(dir, &pair.public_pem)?;
            return Ok(pair);
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let pair = Self::generate();
        write_private(&private_path, pair.private_pem.expose_secret())?;
        write_public(dir, &pair.public_pem)?;
        tracing::info!(path = %private_path.display(), "generated a new JWT signing key pair");
        Ok(pair)
    }
}

/// Where a generated public key lives in a data directory.
pub fn public_key_path(dir: &Path) -> PathBuf {
    dir.join(PUBLIC_KEY_FILE)
}

fn write_private(path: &Path, pem: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(pem.as_bytes())
        .and_then(|_| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

fn write_public(dir: &Path, pem: &str) -> anyhow::Result<()> {
    let path = public_key_path(dir);
    if std::fs::read_to_string(&path).is_ok_and(|existing| existing == pem) {
        return Ok(());
    }
    std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))
}

/// Loads a PEM given inline or as a file path, whichever is set; both set is an error.
pub fn pem_from(
    inline: Option<&str>,
    file: Option<&Path>,
    what: &str,
) -> anyhow::Result<Option<String>> {
    match (inline, file) {
        (Some(_), Some(_)) => bail!("set the {what} inline or as a file, not both"),
        (Some(pem), None) => Ok(Some(pem.to_owned())),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map(Some)
            .with_context(|| format!("reading the {what} from {}", path.display())),
        (None, None) => Ok(None),
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (TokenSigner, TokenVerifier) {
        let keys = KeyPair::generate();
        (
            TokenSigner::from_pem(&keys.private_pem, "parley", Duration::from_secs(60)).unwrap(),
            TokenVerifier::from_pem(&keys.public_pem, "parley").unwrap(),
        )
    }

    #[test]
    fn a_signed_token_verifies_with_the_public_key() {
        let (signer, verifier) = pair();
        let sid = SessionId::new();
        let (token, _) = signer.issue(UserId(42), sid).unwrap();
        let id = verifier.verify(&token).unwrap();
        assert_eq!(id.user_id, UserId(42));
        assert_eq!(id.session_id, sid);
    }

    #[test]
    fn a_token_from_another_key_or_issuer_is_invalid() {
        let (signer, _) = pair();
        let (_, other) = pair();
        let (token, _) = signer.issue(UserId(1), SessionId::new()).unwrap();
        assert_eq!(other.verify(&token), Err(TokenError::Invalid));
        let keys = KeyPair::generate();
        let signer =
            TokenSigner::from_pem(&keys.private_pem, "someone-else", Duration::from_secs(60))
                .unwrap();
        let verifier = TokenVerifier::from_pem(&keys.public_pem, "parley").unwrap();
        let (token, _) = signer.issue(UserId(1), SessionId::new()).unwrap();
        assert_eq!(verifier.verify(&token), Err(TokenError::Invalid));
        assert_eq!(verifier.verify("not.a.token"), Err(TokenError::Invalid));
    }

    #[test]
    fn an_expired_token_is_reported_as_expired() {
        let keys = KeyPair::generate();
        let verifier = TokenVerifier::from_pem(&keys.public_pem, "parley").unwrap();
        let key = EncodingKey::from_ed_pem(keys.private_pem.expose_secret().as_bytes()).unwrap();
        let claims = AccessClaims {
            sub: "1".into(),
            sid: SessionId::new(),
            iat: 1,
            exp: 2,
            jti: "x".into(),
            iss: "parley".into(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &key).unwrap();
        assert_eq!(verifier.verify(&token), Err(TokenError::Expired));
    }

    #[test]
    fn a_generated_pair_is_saved_and_reused() {
        let dir = std::env::temp_dir().join(format!("parley-keys-{}", uuid::Uuid::new_v4()));
        let first = KeyPair::load_or_generate(&dir).unwrap();
        let second = KeyPair::load_or_generate(&dir).unwrap();
        assert_eq!(first.public_pem, second.public_pem);
        assert_eq!(
            std::fs::read_to_string(public_key_path(&dir)).unwrap(),
            first.public_pem
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(PRIVATE_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// Single-use tickets that open a Server-Sent Events stream: a browser's
/// `EventSource` cannot send an `Authorization` header, and an access token
/// in a URL would sit in proxy and access logs for its whole lifetime. A
/// ticket is random, good once and for seconds, and stored only hashed.
pub mod sse_ticket {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use rand::RngCore;
    use sha2::{Digest, Sha256};

    /// Every ticket starts with this, so one is recognisable in a leak scan.
    pub const PREFIX: &str = "st_";
    const SECRET_BYTES: usize = 32;

    /// A new ticket and the hash to store.
    pub fn generate() -> (String, String) {
        let mut secret = [0u8; SECRET_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let ticket = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(secret));
        let hash = digest(&ticket);
        (ticket, hash)
    }

    /// The stored hash of `ticket`, or None when it is not shaped like one
    /// (so garbage never reaches the database).
    pub fn hash(ticket: &str) -> Option<String> {
        let secret = ticket.strip_prefix(PREFIX)?;
        let decoded = URL_SAFE_NO_PAD.decode(secret).ok()?;
        (decoded.len() == SECRET_BYTES).then(|| digest(ticket))
    }

    /// SHA-256, hex: the secret is high-entropy, so a fast hash is enough
    /// (nothing to brute-force), and a database dump holds nothing usable.
    fn digest(ticket: &str) -> String {
        Sha256::digest(ticket.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn a_generated_ticket_hashes_to_what_is_stored_and_garbage_does_not() {
            let (ticket, stored) = super::generate();
            assert_eq!(super::hash(&ticket).as_deref(), Some(stored.as_str()));
            assert_eq!(super::hash("st_short"), None);
            assert_eq!(super::hash(&ticket[3..]), None);
            assert_eq!(super::hash(&format!("{ticket}x")), None);
        }
    }
}
