-- An address is unique among verified accounts only. Signup and address
-- change accept an address another account holds (the new account gets it
-- unverified and can never verify it while the other keeps it), so neither
-- tells a stranger whether an address has an account (docs/api.md, "Email
-- addresses and enumeration"). Logging in by address needs a verified one.
-- migrations/sqlite/20261201000012_verified_email_unique.sql does the same.
alter table users drop constraint users_email_key;
create unique index users_verified_email_key on users (email) where email_verified_at is not null;
create index users_email_idx on users (email);

-- The account a verification mail is for: several accounts may hold an
-- unverified address, so the address alone no longer names one.
alter table mail_jobs add column user_id bigint references users (id) on delete cascade;
