-- Two-factor login with TOTP (RFC 6238) and recovery codes.
-- migrations/sqlite/20261201000009_totp.sql holds the same tables and columns.

-- One authenticator per account. Until `confirmed_at` is set (the user
-- proved they can produce codes) it does not guard the login.
create table user_totp (
    user_id        bigint primary key references users (id) on delete cascade,
    -- base32, as the authenticator app got it; never leaves the api again
    secret         text   not null,
    confirmed_at   bigint,
    -- newest 30 s step a code was accepted for: a code works once
    last_used_step bigint not null default 0,
    created_at     bigint not null
);

-- Ten single-use codes for a lost authenticator. Only SHA-256 hashes are
-- kept: the codes are random (60 bits), so a fast hash is enough.
create table recovery_codes (
    user_id   bigint not null references users (id) on delete cascade,
    code_hash text   not null,
    used_at   bigint,
    primary key (user_id, code_hash)
);

-- A login that passed the password and waits for the second factor. The
-- client holds the challenge; only its SHA-256 is stored.
create table login_challenges (
    challenge_hash text   primary key,
    user_id        bigint not null references users (id) on delete cascade,
    attempts       bigint not null default 0,
    user_agent     text,
    created_at     bigint not null,
    expires_at     bigint not null
);
create index login_challenges_expires_at_idx on login_challenges (expires_at);
