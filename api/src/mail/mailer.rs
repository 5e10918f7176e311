//! Mailers: how a finished mail leaves the process.
//!
//! Two implementations behind one trait, chosen at start-up from
//! `PARLEY_MAIL` ([`from_config`]): SMTP (lettre over Tokio and rustls,
//! the production one) and the file mailer (each mail a `.eml` file in
//! `<data dir>/mail/`, its path logged), so a developer's single node needs
//! no mail server and its links are one `cat` away. The queue in
//! `mail/mod.rs` decides when and how often to call them; a mailer sends
//! once or fails.

use crate::config::{MailArgs, MailTls};
use anyhow::Context;
use async_trait::async_trait;
use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Body, Mailbox, Message};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A mail ready to go.
#[derive(Clone, Debug)]
pub struct OutgoingMail {
    pub to: String,
    pub subject: String,
    /// Plain text.
    pub body: String,
}

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// The mail cannot be made (a recipient the mail libraries refuse):
    /// retrying will not help.
    #[error("the mail cannot be built: {0}")]
    Invalid(String),
    /// The server or the disk refused or did not answer: worth retrying.
    #[error("{0}")]
    Transport(String),
}

#[async_trait]
pub trait Mailer: Send + Sync + 'static {
    /// Sends one mail (once: retries are the queue's).
    async fn send(&self, mail: &OutgoingMail) -> Result<(), MailError>;
    /// For logs and the start-up banner: `smtp` or `file`.
    fn kind(&self) -> &'static str;
}

pub type DynMailer = Arc<dyn Mailer>;

/// How long one SMTP conversation may take (connect, TLS, auth, data).
/// Well under the queue's lease, so a slow server cannot make a second
/// node take the same job while this one is still sending it.
pub const SMTP_TIMEOUT: Duration = Duration::from_secs(30);

/// The mailer `PARLEY_MAIL` names.
pub fn from_config(args: &MailArgs, data_dir: &Path) -> anyhow::Result<DynMailer> {
    let from: Mailbox = args.mail_from.parse().with_context(|| {
        format!(
            "PARLEY_MAIL_FROM {:?} is not a mail address",
            args.mail_from
        )
    })?;
    if args.mail.trim() == "file" {
        let dir = data_dir.join("mail");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating the mail directory {}", dir.display()))?;
        return Ok(Arc::new(FileMailer { dir, from }));
    }
    Ok(Arc::new(SmtpMailer::new(&args.mail, args.mail_tls, from)?))
}

/// Builds the RFC 5322 message.
fn message(from: &Mailbox, mail: &OutgoingMail) -> Result<Message, MailError> {
    let to: Mailbox = mail
        .to
        .parse()
        .map_err(|e| MailError::Invalid(format!("recipient: {e}")))?;
    Message::builder()
        .from(from.clone())
        .to(to)
        .subject(mail.subject.as_str())
        .header(ContentType::TEXT_PLAIN)
        .body(body(&mail.body))
        .map_err(|e| MailError::Invalid(e.to_string()))
}

/// Longest line a 7bit body may have (RFC 5322 2.1.1, without the CRLF).
const MAX_7BIT_LINE: usize = 998;

/// The body as written when it is plain ASCII with lines within the limit
/// (ours always are): lettre would otherwise pick quoted-printable for any
/// line over 76 characters, which mangles a link for anyone reading the
/// raw mail (the file mailer's user) and for the tests' Maildir readers.
fn body(text: &str) -> Body {
    let crlf = text.replace("\r\n", "\n").replace('\n', "\r\n");
    let plain = crlf.is_ascii()
        && !crlf.contains('\0')
        && crlf
            .split("\r\n")
            .all(|line| line.len() <= MAX_7BIT_LINE && !line.contains('\r'));
    if plain {
        Body::dangerous_pre_encoded(crlf.into_bytes(), ContentTransferEncoding::SevenBit)
    } else {
        Body::new(text.to_owned())
    }
}

/// Sends through an SMTP server.
pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl SmtpMailer {
    /// `url`: `smtp://[user:password@]host[:port]` or `smtps://...`.
    pub fn new(url: &str, tls: Option<MailTls>, from: Mailbox) -> anyhow::Result<Self> {
        let parsed = url::Url::parse(url.trim())
            .map_err(|e| anyhow::anyhow!("PARLEY_MAIL is neither `file` nor an SMTP URL: {e}"))?;
        let implicit_tls = match parsed.scheme() {
            "smtp" => false,
            "smtps" => true,
            other => anyhow::bail!(
                "PARLEY_MAIL: unsupported scheme {other:?} (use `file`, smtp://host[:port] or smtps://host[:port])"
            ),
        };
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .context("PARLEY_MAIL: the SMTP URL names no host")?
            .to_owned();
        let tls = tls.unwrap_or(if implicit_tls {
            MailTls::Tls
        } else {
            MailTls::Starttls
        });
        let mut builder = match tls {
            MailTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&host)
                .context("PARLEY_MAIL: setting up TLS")?,
            MailTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&host)
                .context("PARLEY_MAIL: setting up STARTTLS")?,
            MailTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&host),
        };
        let port = parsed.port().unwrap_or(match tls {
            MailTls::Tls => 465,
            MailTls::Starttls | MailTls::None => 587,
        });
        builder = builder.port(port).timeout(Some(SMTP_TIMEOUT));
        if !parsed.username().is_empty() {
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8()
                    .map(|s| s.into_owned())
                    .context("PARLEY_MAIL: the user or password is not UTF-8")
            };
            builder = builder.credentials(Credentials::new(
                decode(parsed.username())?,
                decode(parsed.password().unwrap_or(""))?,
            ));
        }
        Ok(Self {
            transport: builder.build(),
            from,
        })
    }
}

#[async_trait]
impl Mailer for SmtpMailer {
    async fn send(&self, mail: &OutgoingMail) -> Result<(), MailError> {
        let message = message(&self.from, mail)?;
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| MailError::Transport(e.to_string()))
    }

    fn kind(&self) -> &'static str {
        "smtp"
    }
}

/// Writes each mail to a file: for a developer's machine.
pub struct FileMailer {
    dir: PathBuf,
    from: Mailbox,
}

#[async_trait]
impl Mailer for FileMailer {
    async fn send(&self, mail: &OutgoingMail) -> Result<(), MailError> {
        let message = message(&self.from, mail)?;
        let name = format!(
            "{}-{}.eml",
            shared::model::now_millis(),
            uuid::Uuid::new_v4().simple()
        );
        let path = self.dir.join(&name);
        // Written aside and renamed, so a reader never sees half a mail.
        let partial = self.dir.join(format!(".{name}.partial"));
        let write = async {
            tokio::fs::write(&partial, message.formatted()).await?;
            tokio::fs::rename(&partial, &path).await
        };
        write
            .await
            .map_err(|e| MailError::Transport(format!("writing {}: {e}", path.display())))?;
        // The path, not the content: the mail holds a token. On a
        // developer's machine the file is where the link is.
        tracing::info!(to = %mail.to, subject = %mail.subject, path = %path.display(),
            "mail written to a file (PARLEY_MAIL=file)");
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from() -> Mailbox {
        "Parley <parley@example.com>".parse().unwrap()
    }

    #[test]
    fn smtp_urls_parse_and_bad_ones_are_refused() {
        assert!(SmtpMailer::new("smtp://mail.example.com", None, from()).is_ok());
        assert!(SmtpMailer::new("smtps://u:p%40ss@mail.example.com:2465", None, from()).is_ok());
        assert!(SmtpMailer::new("smtp://127.0.0.1:2525", Some(MailTls::None), from()).is_ok());
        assert!(SmtpMailer::new("http://mail.example.com", None, from()).is_err());
        assert!(SmtpMailer::new("not a url", None, from()).is_err());
    }

    #[test]
    fn a_long_ascii_line_is_sent_as_written_and_other_text_is_encoded() {
        let link = format!(
            "https://chat.example.com/v1/auth/verify-email?token={}",
            "A".repeat(43)
        );
        let plain = body(&format!("Open\n{link}\n"));
        assert_eq!(plain.encoding(), ContentTransferEncoding::SevenBit);
        assert_eq!(plain.into_vec(), format!("Open\r\n{link}\r\n").into_bytes());
        assert_ne!(
            body("caf\u{e9}").encoding(),
            ContentTransferEncoding::SevenBit
        );
        assert_ne!(
            body(&"a".repeat(1200)).encoding(),
            ContentTransferEncoding::SevenBit
        );
    }

    #[test]
    fn a_recipient_that_is_not_an_address_cannot_be_sent_and_says_so() {
        let mail = OutgoingMail {
            to: "not an address".into(),
            subject: "s".into(),
            body: "b".into(),
        };
        assert!(matches!(
            message(&from(), &mail),
            Err(MailError::Invalid(_))
        ));
    }
}
