-- no-transaction
-- An address is unique among verified accounts only: see
-- migrations/postgres/20261201000012_verified_email_unique.sql.
--
-- SQLite cannot drop a table's UNIQUE constraint, so `users` is rebuilt
-- the way https://www.sqlite.org/lang_altertable.html#otheralter says:
-- with foreign keys off (dropping the old table must not cascade to the
-- tables that reference it, and the pragma is a no-op inside a
-- transaction, hence `no-transaction` above), in one transaction of our
-- own. Ids are kept, and so is the autoincrement counter (an id is never
-- given twice).
pragma foreign_keys = off;
begin;
create table users_rebuilt (
    id                 integer primary key autoincrement,
    username           text    not null,
    email              text    not null,
    password_hash      text    not null,
    created_at         integer not null,
    email_verified_at  integer,
    role               text    not null default 'user' check (role in ('user', 'admin')),
    suspended_at       integer,
    deleted_at         integer,
    display_name       text,
    status_text        text,
    avatar_id          text,
    avatar_type        text,
    profile_updated_at integer,
    constraint users_username_key unique (username)
);
insert into users_rebuilt (id, username, email, password_hash, created_at, email_verified_at, role,
    suspended_at, deleted_at, display_name, status_text, avatar_id, avatar_type, profile_updated_at)
select id, username, email, password_hash, created_at, email_verified_at, role,
    suspended_at, deleted_at, display_name, status_text, avatar_id, avatar_type, profile_updated_at
from users;
update sqlite_sequence set seq = coalesce((select seq from sqlite_sequence where name = 'users'), 0)
    where name = 'users_rebuilt';
drop table users;
alter table users_rebuilt rename to users;
create unique index users_verified_email_key on users (email) where email_verified_at is not null;
create index users_email_idx on users (email);

-- The account a verification mail is for (see the PostgreSQL migration).
alter table mail_jobs add column user_id integer references users (id) on delete cascade;
commit;
pragma foreign_keys = on;
