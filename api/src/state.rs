//! What every handler can reach.

use crate::auth::password::Passwords;
use crate::config::PolicyArgs;
use crate::events::Events;
use crate::limits::Limits;
use broker::DynBroker;
use dashmap::DashMap;
use shared::SessionId;
use shared::auth::{Identity, TokenError, TokenSigner, TokenVerifier};
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::{MessageAppender, Store};

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    /// Message posts go through here: concurrent posts share a commit.
    pub appender: Arc<MessageAppender>,
    pub broker: DynBroker,
    /// Who is online and in which room (kept by the gateways).
    pub presence: broker::presence::DynPresence,
    pub events: Events,
    pub tokens: Arc<Tokens>,
    pub sessions: Arc<SessionCache>,
    pub passwords: Arc<Passwords>,
    pub limits: Arc<Limits>,
    /// Enables `/v1/admin/...` when set.
    pub admin_token: Option<secrecy::SecretString>,
    /// The client address of a request is the forwarded one (audit log).
    pub trust_proxy_headers: bool,
    /// Security events older than this are deleted.
    pub audit_retention: Duration,
    /// How long a deleted account's username is held.
    pub username_hold: Duration,
    /// The attachment store, its limits and the thumbnail worker.
    pub attachments: Arc<crate::attachments::Attachments>,
    /// Outgoing mail: the mailer, its queue's settings, the sender's wake-up.
    pub mail: Arc<crate::mail::Mail>,
    /// Accounts recently found verified (see `crate::accounts`).
    pub verified: Arc<crate::accounts::VerifiedCache>,
}

/// Signing and verifying access tokens; minting refresh tokens.
pub struct Tokens {
    pub signer: TokenSigner,
    pub verifier: Arc<TokenVerifier>,
    pub refresh_ttl: Duration,
    /// Makes and checks the CSRF tokens of cookie sessions (`auth::cookies`).
    pub csrf_key: [u8; 32],
    /// Tokens already verified, until they expire: an Ed25519 verification
    /// was about a sixth of the api's CPU per post (perf, docs/benchmarks.md),
    /// and a client sends the same token for minutes.
    verified: DashMap<Box<str>, Identity>,
}

/// Verified tokens remembered at most (a few MB); beyond it new ones are
/// verified every time until expired entries are evicted.
const VERIFIED_TOKENS_CAPACITY: usize = 100_000;

impl Tokens {
    /// Keys from the configuration, or the pair generated (once) into
    /// `data_dir`. The public key is derived from the private one, so the
    /// two cannot disagree; a configured public key must match it.
    pub fn from_config(
        jwt: &shared::config::JwtArgs,
        data_dir: &std::path::Path,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let pair = match jwt.private_pem()? {
            Some(pem) => {
                use secrecy::ExposeSecret;
                shared::auth::KeyPair::from_private_pem(pem.expose_secret())?
            }
            None => {
                tracing::info!(
                    data_dir = %data_dir.display(),
                    "no JWT key configured: using the pair kept in the data directory (generated on first start); \
                     with several api replicas, give them all the same key (PARLEY_JWT_PRIVATE_KEY_FILE)"
                );
                shared::auth::KeyPair::load_or_generate(data_dir)
                    .context("loading or generating the JWT key pair in the data directory")?
            }
        };
        if let Some(public) = jwt.public_pem()?
            && public.trim() != pair.public_pem.trim()
        {
            anyhow::bail!("the configured JWT public key does not match the private key");
        }
        Ok(Self {
            signer: TokenSigner::from_pem(
                &pair.private_pem,
                &jwt.verify.jwt_issuer,
                jwt.access_token_ttl,
            )?,
            verifier: Arc::new(TokenVerifier::from_pem(
                &pair.public_pem,
                &jwt.verify.jwt_issuer,
            )?),
            refresh_ttl: jwt.refresh_token_ttl,
            csrf_key: {
                use secrecy::ExposeSecret;
                crate::auth::cookies::csrf_key(pair.private_pem.expose_secret())
            },
            verified: DashMap::new(),
        })
    }

    /// Verifies an access token, from memory when this exact token was
    /// verified before and has not expired.
    pub fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        let now = unix_now();
        if let Some(identity) = self.verified.get(token)
            && identity.expires_at > now
        {
            return Ok(*identity);
        }
        let identity = self.verifier.verify(token)?;
        if self.verified.len() < VERIFIED_TOKENS_CAPACITY {
            self.verified.insert(token.into(), identity);
        }
        Ok(identity)
    }

    /// Forgets expired tokens (called periodically).
    pub fn evict_expired(&self) {
        let now = unix_now();
        self.verified
            .retain(|_, identity| identity.expires_at > now);
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl AppState {
    /// Also starts the message appender and the thumbnail worker (so it
    /// needs a Tokio runtime) and opens the attachment store; the host
    /// closes `appender` and `attachments` after serving and before closing
    /// the store.
    pub fn new(
        store: Store,
        broker: DynBroker,
        tokens: Tokens,
        limits: &PolicyArgs,
        attachments: &crate::config::AttachmentArgs,
        data_dir: &std::path::Path,
        mail: crate::mail::Mail,
    ) -> anyhow::Result<Self> {
        let events = Events::new(broker.clone(), limits.receipt_room_limit);
        let attachments = Arc::new(crate::attachments::Attachments::start(
            attachments,
            data_dir,
            store.clone(),
            events.clone(),
        )?);
        Ok(Self {
            events,
            attachments,
            appender: Arc::new(MessageAppender::start(
                store.clone(),
                limits.commit_interval,
            )),
            store,
            presence: broker.presence(),
            broker,
            tokens: Arc::new(tokens),
            sessions: Arc::new(SessionCache::default()),
            passwords: Arc::new(Passwords::new()),
            limits: Arc::new(Limits::new(limits)),
            admin_token: limits.admin_token.clone(),
            trust_proxy_headers: limits.trust_proxy_headers,
            audit_retention: limits.audit_retention,
            username_hold: limits.username_hold,
            mail: Arc::new(mail),
            verified: Arc::default(),
        })
    }
}

/// How long an api node trusts its answer to "is this session still
/// active?". Revoking a session reaches the revoking node at once and every
/// other api node within this time (gateways close its connections at once);
/// it saves a database read on nearly every request.
pub const SESSION_CACHE_TTL: Duration = Duration::from_secs(10);

/// Recently checked sessions and whether they were active.
#[derive(Default)]
pub struct SessionCache {
    entries: DashMap<SessionId, (bool, Instant)>,
}

impl SessionCache {
    /// Whether `id` is active, from the cache when fresh, else from the store.
    pub async fn is_active(&self, store: &Store, id: SessionId) -> Result<bool, store::StoreError> {
        if let Some(entry) = self.entries.get(&id)
            && entry.1.elapsed() < SESSION_CACHE_TTL
        {
            return Ok(entry.0);
        }
        let active = store
            .session_active(id, shared::model::now_millis())
            .await?;
        self.entries.insert(id, (active, Instant::now()));
        Ok(active)
    }

    /// Records a revocation made on this node.
    pub fn revoked(&self, id: SessionId) {
        self.entries.insert(id, (false, Instant::now()));
    }

    /// Drops stale entries (called periodically so the map stays bounded
    /// by the sessions active in the last TTL).
    pub fn evict_stale(&self) {
        self.entries
            .retain(|_, (_, at)| at.elapsed() < SESSION_CACHE_TTL);
    }
}
