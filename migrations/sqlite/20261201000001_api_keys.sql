-- The server publish api (single-node mode): the same tables and columns as
-- migrations/postgres/20261201000001_api_keys.sql.

-- A backend's credential. Only a SHA-256 hash of the key is stored: the key
-- is 32 random bytes, so a fast hash cannot be brute-forced and needs no salt.
create table api_keys (
    -- a random UUID, shown to admins (the key itself is shown once)
    id           text    primary key not null,
    name         text    not null,
    -- lowercase hex SHA-256 of the whole key (`pk_...`)
    key_hash     text    not null,
    -- space-separated: rooms:publish users:publish
    scopes       text    not null,
    -- JSON array of the room ids the key may publish into; NULL: any room
    room_ids     text,
    -- the key's own account: the sender of the custom events it publishes
    -- (it has no password and no session; events.sender_id needs a user)
    user_id      integer not null references users (id),
    created_at   integer not null,
    last_used_at integer,
    revoked_at   integer,
    constraint api_keys_key_hash_key unique (key_hash)
);

-- One row per Idempotency-Key used for a room event: a retry with the same
-- key returns the event stored first. Kept at least 24 h (the api's
-- maintenance deletes older rows).
create table api_idempotency (
    api_key_id      text    not null references api_keys (id) on delete cascade,
    idempotency_key text    not null,
    -- SHA-256 of (room, name, payload): the same key with another request is refused
    request_hash    text    not null,
    room_id         integer not null,
    seq             integer not null,
    created_at      integer not null,
    primary key (api_key_id, idempotency_key)
) without rowid;
create index api_idempotency_created_at_idx on api_idempotency (created_at);

-- custom events (kind 'custom'): the application's dotted name, and its
-- JSON payload as text (the same in both dialects; never queried inside)
alter table room_events add column event_name text;
alter table room_events add column payload text;
