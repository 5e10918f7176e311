-- Parley's schema for SQLite (single-node mode).
-- The same tables and columns as migrations/postgres (a test compares them).
-- Times are milliseconds since the Unix epoch in both dialects.

create table users (
    id            integer primary key autoincrement,
    username      text    not null,
    email         text    not null,
    password_hash text    not null,
    created_at    integer not null,
    constraint users_username_key unique (username),
    constraint users_email_key unique (email)
);

create table sessions (
    id            text    primary key not null,
    user_id       integer not null references users (id) on delete cascade,
    refresh_hash  text    not null,
    previous_hash text,
    created_at    integer not null,
    last_used_at  integer not null,
    expires_at    integer not null,
    revoked_at    integer,
    user_agent    text
);
create index sessions_user_id_idx on sessions (user_id);

create table rooms (
    id         integer primary key autoincrement,
    kind       text    not null check (kind in ('group', 'direct')),
    name       text    not null,
    direct_key text,
    created_by integer not null references users (id),
    created_at integer not null,
    last_seq   integer not null default 0,
    constraint rooms_direct_key_key unique (direct_key)
);

create table room_members (
    room_id   integer not null references rooms (id) on delete cascade,
    user_id   integer not null references users (id) on delete cascade,
    role      text    not null check (role in ('owner', 'admin', 'member')),
    joined_at integer not null,
    primary key (room_id, user_id)
) without rowid;
create index room_members_user_id_idx on room_members (user_id);

create table room_events (
    room_id        integer not null references rooms (id) on delete cascade,
    seq            integer not null,
    kind           text    not null,
    sender_id      integer not null references users (id),
    body           text,
    client_msg_id  text,
    target_user_id integer references users (id),
    role           text,
    room_name      text,
    created_at     integer not null,
    primary key (room_id, seq),
    constraint room_events_idempotency_key unique (room_id, sender_id, client_msg_id)
) without rowid;
