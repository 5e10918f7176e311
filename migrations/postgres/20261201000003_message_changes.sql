-- Message edits, deletes, replies, reactions and mentions.
-- migrations/sqlite/20261201000003_message_changes.sql holds the same
-- tables and columns.

-- On a message.created row: the seq it replies to (same room), when it was
-- last edited (its body is the current one) and when it was deleted (its
-- body is then NULL: a tombstone that keeps the seq).
alter table room_events add column reply_to_seq bigint;
alter table room_events add column edited_at bigint;
alter table room_events add column deleted_at bigint;
-- On message.edited / message.deleted / reaction.* rows: the message's seq;
-- on reaction.* rows also the emoji.
alter table room_events add column target_seq bigint;
alter table room_events add column emoji text;

-- One row per (message, user, emoji): a repeated reaction is the same row.
create table message_reactions (
    room_id    bigint not null,
    seq        bigint not null,
    user_id    bigint not null references users (id) on delete cascade,
    emoji      text   not null,
    created_at bigint not null,
    primary key (room_id, seq, user_id, emoji),
    foreign key (room_id, seq) references room_events (room_id, seq) on delete cascade
);

-- Members named as @username in a message's current body.
create table message_mentions (
    room_id bigint not null,
    seq     bigint not null,
    user_id bigint not null references users (id) on delete cascade,
    primary key (room_id, seq, user_id),
    foreign key (room_id, seq) references room_events (room_id, seq) on delete cascade
);
-- the rooms list counts a member's mentions after their read marker
create index message_mentions_user_idx on message_mentions (room_id, user_id, seq);
