-- Parley's schema for PostgreSQL (cluster mode).
-- migrations/sqlite holds the same tables and columns for single-node mode;
-- a test compares the two, so change both together.
-- Times are milliseconds since the Unix epoch (bigint) in both dialects.

create table users (
    id            bigint generated always as identity primary key,
    -- lowercase a-z 0-9 _, validated by the api
    username      text   not null,
    -- lowercased by the api, so uniqueness is case-insensitive
    email         text   not null,
    -- argon2id PHC string
    password_hash text   not null,
    created_at    bigint not null,
    constraint users_username_key unique (username),
    constraint users_email_key unique (email)
);

-- A login session is a family of rotating refresh tokens. Only hashes are
-- stored; previous_hash lets us spot a stolen, already-rotated token being
-- replayed and revoke the whole session.
create table sessions (
    id            text   primary key,
    user_id       bigint not null references users (id) on delete cascade,
    refresh_hash  text   not null,
    previous_hash text,
    created_at    bigint not null,
    last_used_at  bigint not null,
    expires_at    bigint not null,
    revoked_at    bigint,
    user_agent    text
);
create index sessions_user_id_idx on sessions (user_id);

create table rooms (
    id         bigint generated always as identity primary key,
    kind       text   not null check (kind in ('group', 'direct')),
    name       text   not null,
    -- "small_id:large_id" for direct rooms, so each pair has at most one
    direct_key text,
    created_by bigint not null references users (id),
    created_at bigint not null,
    -- seq of the newest timeline event; bumped in the same transaction that
    -- inserts the event, which is what makes seq gap-free
    last_seq   bigint not null default 0,
    constraint rooms_direct_key_key unique (direct_key)
);

create table room_members (
    room_id   bigint not null references rooms (id) on delete cascade,
    user_id   bigint not null references users (id) on delete cascade,
    role      text   not null check (role in ('owner', 'admin', 'member')),
    joined_at bigint not null,
    primary key (room_id, user_id)
);
create index room_members_user_id_idx on room_members (user_id);

-- Each room's timeline: messages and membership changes in one numbering.
create table room_events (
    room_id        bigint not null references rooms (id) on delete cascade,
    seq            bigint not null,
    kind           text   not null,
    sender_id      bigint not null references users (id),
    -- message.created
    body           text,
    client_msg_id  text,
    -- member.added / member.removed
    target_user_id bigint references users (id),
    role           text,
    -- room.created
    room_name      text,
    created_at     bigint not null,
    primary key (room_id, seq),
    -- a retried post with the same client_msg_id hits this and returns the
    -- original; NULL client_msg_ids never collide
    constraint room_events_idempotency_key unique (room_id, sender_id, client_msg_id)
);
