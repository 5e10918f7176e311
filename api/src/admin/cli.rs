//! `parley admin ...` and `parley-api admin ...`: the operator's way to
//! make the first admin (and any later one) without a default password or
//! a running server. The account signs up as usual; the command, run
//! where the database is reachable, gives it the role.

use clap::Subcommand;
use serde_json::json;
use shared::model::{AccountRole, now_millis};
use shared::rest::{AccountStatus, SecurityEventKind};
use store::{AdminUserFilter, NewSecurityEvent, Store};

#[derive(Clone, Debug, Subcommand)]
pub enum AdminCommand {
    /// Give an account the admin role.
    Grant {
        /// The account's username.
        username: String,
    },
    /// Take the admin role from an account.
    Revoke {
        /// The account's username.
        username: String,
    },
    /// List the admin accounts.
    List,
}

/// Runs `command` against `store`; what to print.
pub async fn run(store: &Store, command: AdminCommand) -> anyhow::Result<String> {
    let (username, role) = match command {
        AdminCommand::Grant { username } => (username, AccountRole::Admin),
        AdminCommand::Revoke { username } => (username, AccountRole::User),
        AdminCommand::List => {
            let mut out = String::new();
            let mut after_id = 0;
            loop {
                let page = store
                    .admin_users(&AdminUserFilter {
                        prefix: None,
                        status: AccountStatus::Any,
                        role: Some(AccountRole::Admin),
                        after_id,
                        limit: 100,
                    })
                    .await?;
                for user in &page {
                    let state = if user.suspended_at.is_some() {
                        " (suspended)"
                    } else {
                        ""
                    };
                    out.push_str(&format!("{}\t{}{state}\n", user.id, user.username));
                }
                match page.last() {
                    Some(last) if page.len() == 100 => after_id = last.id.0,
                    _ => break,
                }
            }
            if out.is_empty() {
                out.push_str("no admin accounts\n");
            }
            return Ok(out);
        }
    };
    let username = username.trim().to_lowercase();
    let user = store
        .live_user_id(&username)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no account named {username:?}"))?;
    if !store.set_account_role(user, role).await? {
        anyhow::bail!("no account named {username:?}");
    }
    let detail = json!({"role": role, "by": "cli"}).to_string();
    store
        .record_security_event(NewSecurityEvent {
            user_id: Some(user),
            kind: SecurityEventKind::AccountRoleChanged.as_str(),
            ip: None,
            user_agent: None,
            detail: Some(&detail),
            created_at: now_millis(),
        })
        .await?;
    tracing::warn!(target: "security", user_id = %user, role = role.as_str(), "account role changed from the command line");
    Ok(format!("{username} (id {user}) is now {}\n", role.as_str()))
}
