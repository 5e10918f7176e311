-- Read and delivery markers per member (receipts and unread counts).
-- The same columns as migrations/postgres/20261130000001_read_markers.sql.
alter table room_members add column read_seq integer not null default 0;
alter table room_members add column delivered_seq integer not null default 0;

create index room_events_messages_idx on room_events (room_id, seq, sender_id)
    where kind = 'message.created';
