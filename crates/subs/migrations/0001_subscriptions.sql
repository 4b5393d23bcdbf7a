-- One schema for SQLite and PostgreSQL alike (sqlx's Any driver runs it on either): TEXT,
-- BIGINT and composite keys only, times as milliseconds since the Unix epoch.

CREATE TABLE IF NOT EXISTS subscriptions (
    id TEXT PRIMARY KEY,
    partner TEXT NOT NULL,
    account TEXT NOT NULL,
    callback TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    UNIQUE (partner, account, callback)
);
CREATE INDEX IF NOT EXISTS subscriptions_by_account ON subscriptions (account);
CREATE INDEX IF NOT EXISTS subscriptions_by_partner ON subscriptions (partner, id);

-- How many subscriptions each partner holds: the row its limit is enforced on, one writer at a
-- time.
CREATE TABLE IF NOT EXISTS partner_counts (
    partner TEXT PRIMARY KEY,
    n BIGINT NOT NULL
);

-- What the gateway last knew of each bill: a change against it is an event.
CREATE TABLE IF NOT EXISTS bills (
    account TEXT NOT NULL,
    bill_id TEXT NOT NULL,
    status TEXT NOT NULL,
    amount_due TEXT NOT NULL,
    due_date TEXT NOT NULL,
    version BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (account, bill_id)
);

-- The outbox: one row per event and subscription, its id the event's dedup key.
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    subscription_id TEXT NOT NULL,
    partner TEXT NOT NULL,
    account TEXT NOT NULL,
    callback TEXT NOT NULL,
    body TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    ord BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    next_attempt_ms BIGINT NOT NULL,
    last_error TEXT,
    finished_ms BIGINT
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, next_attempt_ms);
CREATE INDEX IF NOT EXISTS deliveries_in_order ON deliveries (subscription_id, state, ord);
