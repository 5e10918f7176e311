-- Room management: topics, how members join (added directly or invited),
-- and pending invitations. migrations/sqlite/20261201000007_room_management.sql
-- holds the same tables and columns.

alter table rooms add column topic text not null default '';
-- Set when the owner deleted the room: it has no members from then on (so
-- no read path finds it) and takes no events; its attachments' bytes are
-- purged, then the row goes with everything that cascades from it.
alter table rooms add column deleted_at bigint;
-- An image uploaded into the room (not posted in a message) shown as its
-- avatar; members may download it. Replacing it purges the old one.
alter table rooms add column avatar_attachment_id text references attachments (id) on delete set null;
alter table rooms add column join_policy text not null default 'add'
    check (join_policy in ('add', 'invite'));

-- An invitation waits here until the invited user accepts (they become a
-- member), declines, or an owner or admin revokes it; each of those ends it.
create table room_invitations (
    room_id    bigint not null references rooms (id) on delete cascade,
    user_id    bigint not null references users (id) on delete cascade,
    invited_by bigint not null references users (id) on delete cascade,
    role       text   not null check (role in ('admin', 'member')),
    created_at bigint not null,
    primary key (room_id, user_id)
);
-- a user's pending invitations
create index room_invitations_user_id_idx on room_invitations (user_id);
