-- Email verification, password reset, and the outgoing mail queue.

-- When the account's current address was last proved reachable (a link
-- from a mail to it was followed); NULL: not verified. Changing the
-- address clears it.
alter table users add column email_verified_at bigint;
-- Accounts that existed before verification did keep working as they
-- did: they are treated as verified (docs/operations.md, "Mail").
update users set email_verified_at = created_at;

-- Single-use secrets mailed to a user: an email verification link or a
-- password reset. Only the SHA-256 of a token is stored (the token is
-- random and high-entropy); a used one keeps its row (used_at) until it
-- is a day past its expiry, so the per-account mail limits can count it.
create table account_tokens (
    token_hash  text   primary key,
    user_id     bigint not null references users (id) on delete cascade,
    -- 'verify_email' or 'reset_password': a token works for its purpose only
    purpose     text   not null,
    -- the address the mail went to: a verification token proves this
    -- address, and no longer verifies once the account's address changed
    email       text   not null,
    created_at  bigint not null,
    expires_at  bigint not null,
    used_at     bigint
);
create index account_tokens_user_idx on account_tokens (user_id, purpose, created_at);
create index account_tokens_expires_at_idx on account_tokens (expires_at);

-- Mail waiting to leave (api/src/mail). Any api node takes a due job by
-- setting a lease (locked_until, lease); a node that dies mid-send loses
-- the lease and another takes the job once it runs out. A failed attempt
-- is retried with exponential backoff; after the configured number of
-- attempts the job is parked for an admin (GET /v1/admin/mail-jobs).
-- Rows hold what the mail is about (payload), never a token: the token is
-- minted when the mail is sent. A sent job's row is deleted.
create table mail_jobs (
    id           bigint generated always as identity primary key,
    -- 'verify_email', 'password_reset', 'email_changed'
    kind         text   not null,
    -- the address the mail goes to (a reset request: the address given,
    -- which may name no account)
    recipient    text   not null,
    -- what the mail needs, as a JSON object (user id, the requester's ip)
    payload      text   not null,
    -- 'pending' or 'parked'
    state        text   not null,
    attempts     bigint not null,
    -- not taken before this time (the backoff after a failure)
    run_after    bigint not null,
    -- the lease of the node sending it: another node may take the job
    -- only after locked_until; `lease` names the holder, so a node whose
    -- lease ran out cannot settle a job someone else now holds
    locked_until bigint,
    lease        text,
    last_error   text,
    created_at   bigint not null,
    updated_at   bigint not null
);
create index mail_jobs_due_idx on mail_jobs (state, run_after);
