-- The same tables as migrations/postgres/20261201000008_mail.sql.
alter table users add column email_verified_at integer;
update users set email_verified_at = created_at;

create table account_tokens (
    token_hash  text    primary key,
    user_id     integer not null references users (id) on delete cascade,
    purpose     text    not null,
    email       text    not null,
    created_at  integer not null,
    expires_at  integer not null,
    used_at     integer
);
create index account_tokens_user_idx on account_tokens (user_id, purpose, created_at);
create index account_tokens_expires_at_idx on account_tokens (expires_at);

create table mail_jobs (
    id           integer primary key autoincrement,
    kind         text    not null,
    recipient    text    not null,
    payload      text    not null,
    state        text    not null,
    attempts     integer not null,
    run_after    integer not null,
    locked_until integer,
    lease        text,
    last_error   text,
    created_at   integer not null,
    updated_at   integer not null
);
create index mail_jobs_due_idx on mail_jobs (state, run_after);
