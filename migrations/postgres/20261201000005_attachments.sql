-- Message attachments: files uploaded into a room, then posted with a
-- message. migrations/sqlite/20261201000005_attachments.sql holds the same
-- tables and columns.
--
-- The bytes live in the attachment store (the data directory, or an
-- S3-compatible bucket), under keys derived from `id`; this table is the
-- truth about who may read them. A row exists from the first byte of an
-- upload (status 'uploading') so that a crash mid-upload leaves a row the
-- orphan sweep finds, never bytes nobody knows of.
create table attachments (
    -- random (UUID v4, 32 hex digits): unguessable, and no count to learn
    id              text   primary key not null,
    -- the room it was uploaded into: it can only be posted there
    room_id         bigint not null references rooms (id) on delete cascade,
    uploader_id     bigint not null references users (id) on delete cascade,
    -- 'uploading' until the last byte is stored, then 'stored'
    status          text   not null check (status in ('uploading', 'stored')),
    filename        text   not null,
    -- decided by sniffing the bytes against the allow-list, never the client's header
    content_type    text   not null,
    size            bigint not null,
    -- hex SHA-256 of the bytes ('' while uploading)
    sha256          text   not null,
    -- the message (seq of a message.created event of room_id) it was posted
    -- with, and its place among that message's attachments; NULL until posted
    seq             bigint,
    position        bigint,
    -- 'none' (not an image), 'pending', 'ready' or 'failed'
    thumbnail       text   not null check (thumbnail in ('none', 'pending', 'ready', 'failed')),
    -- the image's and the thumbnail's dimensions, once decoded
    width           bigint,
    height          bigint,
    thumb_width     bigint,
    thumb_height    bigint,
    -- what the thumbnail is encoded as (image/jpeg, or image/png for images with alpha)
    thumb_type      text,
    created_at      bigint not null,
    -- set (in the transaction that deletes the message) when its bytes
    -- must go: reads stop at once, the bytes and then the row are purged
    deleted_at      bigint
);
-- history fills in the attachments of a page of messages
create index attachments_message_idx on attachments (room_id, seq, position);
-- the sweep: purges due, and orphans (never posted) by age
create index attachments_sweep_idx on attachments (seq, created_at);
create index attachments_deleted_idx on attachments (deleted_at);

-- attachment.thumbnail_ready events name their attachment.
alter table room_events add column attachment_id text;
