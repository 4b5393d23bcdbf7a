-- Accounts a new subscription named that the gateway knew no bill of: the refresher asks the
-- biller about them ahead of its schedule (within its share of the biller's capacity), so a new
-- subscriber hears of a bill already due without waiting out a refresh period.
CREATE TABLE IF NOT EXISTS refresh_requests (
    account TEXT PRIMARY KEY,
    requested_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS refresh_requests_oldest ON refresh_requests (requested_ms, account);
