-- Full-text search over messages (GET /v1/search/messages).
-- migrations/postgres/20261201000006_search.sql builds the same search with
-- a tsvector column and a GIN index. The two engines tokenise alike: every
-- run of characters that are not letters or digits separates words, words
-- are lowercased and English-stemmed (here Porter's stemmer), no word is a
-- stop word, and accents are kept (PostgreSQL's stemmer does not remove
-- them either).
--
-- An FTS5 table with its own copy of each live message's current body.
-- It cannot point at room_events as its external content: that needs a
-- stable integer rowid, and room_events (primary key room_id, seq) has only
-- SQLite's implicit rowid, which VACUUM may renumber. Its rowid here is
-- room_id * 2^32 + seq, which a room can only outgrow past 4 billion
-- events on one node. The schema test leaves this table and FTS5's shadow
-- tables out of its comparison.
create virtual table message_search using fts5(
    body,
    tokenize = 'porter unicode61 remove_diacritics 0'
);

-- Kept in step with room_events in the writer's own transaction, whatever
-- statement changed it (a post, a batch of posts, an edit, a delete, a
-- room's deletion): only live message.created rows are in it, with their
-- current body.
create trigger message_search_insert after insert on room_events
when new.kind = 'message.created' and new.body is not null and new.deleted_at is null
begin
    insert into message_search (rowid, body) values (new.room_id * 4294967296 + new.seq, new.body);
end;

create trigger message_search_update after update of body, deleted_at on room_events
when old.kind = 'message.created'
begin
    delete from message_search where rowid = old.room_id * 4294967296 + old.seq;
    insert into message_search (rowid, body)
        select new.room_id * 4294967296 + new.seq, new.body
        where new.body is not null and new.deleted_at is null;
end;

create trigger message_search_delete after delete on room_events
when old.kind = 'message.created'
begin
    delete from message_search where rowid = old.room_id * 4294967296 + old.seq;
end;

-- Messages posted before this migration.
insert into message_search (rowid, body)
    select room_id * 4294967296 + seq, body from room_events
    where kind = 'message.created' and body is not null and deleted_at is null;
