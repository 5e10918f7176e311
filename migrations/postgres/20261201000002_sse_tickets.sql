-- Single-use tickets that open a Server-Sent Events stream (POST
-- /v1/sse/tickets): a browser's EventSource cannot send an Authorization
-- header, and an access token in a URL ends up in proxy and server logs.
-- A ticket is good once, for seconds; only its SHA-256 is stored.
create table sse_tickets (
    ticket_hash      text   primary key,
    user_id          bigint not null references users (id) on delete cascade,
    session_id       text   not null references sessions (id) on delete cascade,
    -- when the access token that asked for the ticket expires (ms): the
    -- stream ends then, as a WebSocket connection does without a refresh
    token_expires_at bigint not null,
    expires_at       bigint not null
);
create index sse_tickets_expires_at_idx on sse_tickets (expires_at);
