-- Finished deliveries leave the outbox after `[subscriptions] keep_delivered` (delivered) or
-- `keep_dead` (dead letters): found by state and the time they finished.
CREATE INDEX IF NOT EXISTS deliveries_finished ON deliveries (state, finished_ms);
