-- The same table as migrations/postgres/20261201000004_security_events.sql.
create table security_events (
    id          integer primary key autoincrement,
    user_id     integer references users (id) on delete set null,
    kind        text    not null,
    ip          text,
    user_agent  text,
    detail      text,
    created_at  integer not null
);
create index security_events_user_idx on security_events (user_id, id);
create index security_events_created_at_idx on security_events (created_at);
