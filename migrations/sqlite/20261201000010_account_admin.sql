-- Admin accounts, suspension and account deletion.
-- migrations/postgres/20261201000010_account_admin.sql holds the same columns.

-- 'admin' accounts may use the /v1/admin endpoints. The first one is made
-- with the CLI (`parley admin grant <username>`); there is no default.
alter table users add column role text not null default 'user'
    check (role in ('user', 'admin'));
-- Set while an admin has suspended the account: no new session starts.
alter table users add column suspended_at integer;
-- Set when the owner deleted the account: the row stays (messages keep
-- their sender id) but holds nothing personal any more.
alter table users add column deleted_at integer;

-- A deleted account's username is not given to anyone else until
-- `reusable_at`, so nobody can pose as the person who left.
create table username_holds (
    username    text    primary key,
    released_at integer not null,
    reusable_at integer not null
);
