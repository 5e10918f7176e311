-- The audit log: every security event (signups, logins and failed logins,
-- logouts, session revocations, refresh-token reuse, admin actions) with
-- when, who, from where. Users read their own (GET
-- /v1/users/me/security-events), admins all (GET /v1/admin/security-events).
-- Kept for PARLEY_AUDIT_RETENTION (the api deletes older rows).
create table security_events (
    id          bigint generated always as identity primary key,
    -- the account concerned; NULL for a failed login naming no account
    user_id     bigint references users (id) on delete set null,
    kind        text   not null,
    -- the client's address as the api saw it (behind a trusted proxy, the
    -- forwarded one) and its User-Agent, bounded
    ip          text,
    user_agent  text,
    -- what else identifies the event (a session id, an API key id, the
    -- name a failed login tried), as a JSON object
    detail      text,
    created_at  bigint not null
);
create index security_events_user_idx on security_events (user_id, id);
create index security_events_created_at_idx on security_events (created_at);
