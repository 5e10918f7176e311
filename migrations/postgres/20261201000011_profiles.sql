-- Profiles: what users who share a room with someone see of them.
-- migrations/sqlite/20261201000011_profiles.sql holds the same columns.

-- Shown instead of the username where set; at most 64 characters.
alter table users add column display_name text;
-- A line of free text ("on holiday"); at most 140 characters.
alter table users add column status_text text;
-- The avatar's object in the attachment store is avatars/<user id>/<avatar_id>;
-- a new upload gets a new id, so the id is also the avatar's version.
alter table users add column avatar_id text;
-- image/png or image/jpeg: avatars are re-encoded, never served as uploaded.
alter table users add column avatar_type text;
-- When the profile last changed (milliseconds since the epoch).
alter table users add column profile_updated_at bigint;
