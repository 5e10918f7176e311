-- Full-text search over messages (GET /v1/search/messages).
-- migrations/sqlite/20261201000006_search.sql builds the same search with
-- SQLite's FTS5. The two engines tokenise alike: every run of characters
-- that are not letters or digits separates words (here by replacing it with
-- a space before PostgreSQL's parser sees the text, so that URLs, e-mail
-- addresses, hyphenated words and <tags> are split into their words as FTS5's
-- unicode61 tokenizer splits them), words are lowercased and English-stemmed,
-- and no word is dropped as a stop word.

-- English stemming without a stop-word list: pg_catalog.english would drop
-- "the", "not", "to be or not to be" entirely, while FTS5 keeps them.
create text search dictionary parley_english_stem (
    template = snowball,
    language = english
);
create text search configuration parley_search (copy = pg_catalog.english);
alter text search configuration parley_search
    alter mapping for asciiword, asciihword, hword_asciipart, word, hword, hword_part, numword, numhword, hword_numpart
    with parley_english_stem;

-- The words of a message's current body. Kept in step by PostgreSQL
-- itself: an edit rewrites the body and with it this column; a delete sets
-- the body to NULL, and so this. Only message.created rows have one
-- (message.edited rows also carry a body, the edit's text, which is not a
-- message of its own). Stored rather than only indexed, so that ranking
-- and the re-check of a room's candidate rows read it instead of parsing
-- every body again.
alter table room_events add column search_vector tsvector generated always as (
    case when kind = 'message.created'
        then to_tsvector('parley_search', regexp_replace(body, '[^[:alnum:]]+', ' ', 'g'))
    end
) stored;

-- The index searches use (a query of any room set starts from the words).
create index room_events_search_idx on room_events using gin (search_vector)
    where search_vector is not null;
