-- Read and delivery markers per member (receipts and unread counts).
-- migrations/sqlite/20261130000001_read_markers.sql adds the same columns.
-- Both only move forward and never past the room's last_seq; the store's
-- marker writes enforce that (greatest/least in one statement per batch).
alter table room_members add column read_seq bigint not null default 0;
alter table room_members add column delivered_seq bigint not null default 0;

-- Unread counts scan a member's messages after read_seq in one room:
-- (room_id, seq) restricted to messages keeps that a short index range.
create index room_events_messages_idx on room_events (room_id, seq, sender_id)
    where kind = 'message.created';
