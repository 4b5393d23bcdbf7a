//! Where subscriptions live: the subscriptions themselves, what the gateway last knew of each
//! subscribed account's bills, and the outbox of webhook deliveries. One store, two databases:
//! SQLite (embedded, a file created on first open) for one instance, PostgreSQL for a fleet,
//! through sqlx's runtime-chosen driver and one schema (`migrations/`).
//!
//! Times are handed in by the caller (milliseconds since the Unix epoch): the store reads no
//! clock. Every write two gateway instances may race on is one statement or one transaction
//! whose outcome does not depend on which instance wins (said at each).

use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

/// What went wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Database(#[from] sqlx::Error),
    #[error("migrating the store: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the store URL must start with sqlite:// or postgres://; {0:?} does not")]
    Url(String),
    #[error("no randomness for a subscription id: {0}")]
    Random(String),
}

/// One partner's subscription to one account, for one callback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Subscription {
    pub id: String,
    pub partner: String,
    pub account: String,
    pub callback: String,
    pub created_ms: i64,
}

/// What [`Store::subscribe`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subscribed {
    Created(Subscription),
    /// The partner already had this account and callback: the same subscription.
    Existing(Subscription),
    /// The partner holds `max` already.
    LimitReached {
        max: u64,
    },
}

/// One bill as the biller tells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BillState {
    pub bill_id: String,
    pub status: String,
    /// A decimal string, as the biller wrote it.
    pub amount_due: String,
    pub due_date: String,
}

/// How a bill changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ChangeKind {
    /// A bill never seen before (not yet paid).
    Due,
    /// Its amount, due date or status changed (but not to paid).
    Changed,
    /// It is paid now (or first seen paid).
    Paid,
}

/// A bill's change, and the bill's version after it (1 for a new bill).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub kind: ChangeKind,
    pub bill: BillState,
    pub version: i64,
}

/// A delivery to put in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    /// The event's dedup key: the same change to the same subscription has the same id.
    pub id: String,
    pub subscription_id: String,
    pub partner: String,
    pub account: String,
    pub callback: String,
    pub body: String,
}

/// A delivery in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Delivery {
    pub id: String,
    pub subscription_id: String,
    pub partner: String,
    pub account: String,
    pub callback: String,
    pub body: String,
    /// `pending`, `delivered` or `dead`.
    pub state: String,
    pub attempts: u32,
    pub created_ms: i64,
    pub next_attempt_ms: i64,
    pub last_error: Option<String>,
}

/// The outbox by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QueueCounts {
    pub pending: u64,
    pub delivered: u64,
    pub dead: u64,
}

/// The store. Cloning shares its connections.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    kind: &'static str,
}

/// `SELECT` of a subscription's columns, and `$rest` after it.
macro_rules! subscriptions_where {
    ($rest:literal) => {
        concat!(
            "SELECT id, partner, account, callback, created_ms FROM subscriptions ",
            $rest
        )
    };
}

const DELIVERY_COLUMNS: &str = "id, subscription_id, partner, account, callback, body, state, attempts, created_ms, next_attempt_ms, last_error";

impl Store {
    /// Connects to `url` (`sqlite://path` — created when missing — or `postgres://…`) and
    /// brings its schema up to date.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let (url, kind, connections) = if let Some(rest) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            // One writer at a time is SQLite's way; a small pool keeps readers from queueing.
            let url = if rest.contains('?') {
                format!("sqlite://{rest}")
            } else {
                format!("sqlite://{rest}?mode=rwc")
            };
            (url, "sqlite", 4)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (url.to_owned(), "postgres", 8)
        } else {
            return Err(StoreError::Url(url.to_owned()));
        };
        let pool = AnyPoolOptions::new()
            .max_connections(connections)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect(&url)
            .await?;
        if kind == "sqlite" {
            // Readers (the API, the outbox) need not wait for the writer; kept in the file.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await?;
        }
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Store { pool, kind })
    }

    /// `sqlite` or `postgres`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// Subscribes `partner` to `account` for `callback`, unless it holds `max` already. The
    /// same partner, account and callback again is the same subscription.
    ///
    /// Race-safe: the partner's count row is raised only while under `max` (`n < max` in the
    /// `UPDATE`, which two transactions cannot both pass at the last place), in the same
    /// transaction as the insert; an insert that meets the same (partner, account, callback)
    /// inserted meanwhile rolls back and answers that one.
    pub async fn subscribe(
        &self,
        partner: &str,
        account: &str,
        callback: &str,
        max: u64,
        now_ms: i64,
    ) -> Result<Subscribed, StoreError> {
        if let Some(existing) = self.find(partner, account, callback).await? {
            return Ok(Subscribed::Existing(existing));
        }
        let id = new_id(now_ms)?;
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO partner_counts (partner, n) VALUES ($1, 0) ON CONFLICT (partner) DO NOTHING")
            .bind(partner)
            .execute(&mut *tx)
            .await?;
        let raised =
            sqlx::query("UPDATE partner_counts SET n = n + 1 WHERE partner = $1 AND n < $2")
                .bind(partner)
                .bind(i64::try_from(max).unwrap_or(i64::MAX))
                .execute(&mut *tx)
                .await?;
        if raised.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(match self.find(partner, account, callback).await? {
                Some(existing) => Subscribed::Existing(existing),
                None => Subscribed::LimitReached { max },
            });
        }
        let inserted = sqlx::query(
            "INSERT INTO subscriptions (id, partner, account, callback, created_ms) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (partner, account, callback) DO NOTHING",
        )
        .bind(&id)
        .bind(partner)
        .bind(account)
        .bind(callback)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            tx.rollback().await?;
            return match self.find(partner, account, callback).await? {
                Some(existing) => Ok(Subscribed::Existing(existing)),
                None => Err(StoreError::Database(sqlx::Error::RowNotFound)),
            };
        }
        tx.commit().await?;
        Ok(Subscribed::Created(Subscription {
            id,
            partner: partner.to_owned(),
            account: account.to_owned(),
            callback: callback.to_owned(),
            created_ms: now_ms,
        }))
    }

    async fn find(
        &self,
        partner: &str,
        account: &str,
        callback: &str,
    ) -> Result<Option<Subscription>, StoreError> {
        let row = sqlx::query(subscriptions_where!(
            "WHERE partner = $1 AND account = $2 AND callback = $3"
        ))
        .bind(partner)
        .bind(account)
        .bind(callback)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(subscription).transpose()
    }

    /// `partner`'s subscription `id`; another partner's is none of its business (`None`).
    pub async fn subscription(
        &self,
        partner: &str,
        id: &str,
    ) -> Result<Option<Subscription>, StoreError> {
        let row = sqlx::query(subscriptions_where!("WHERE partner = $1 AND id = $2"))
            .bind(partner)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(subscription).transpose()
    }

    /// `partner`'s subscriptions after the id `after`, by id, at most `limit`.
    pub async fn list(
        &self,
        partner: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Subscription>, StoreError> {
        let rows = sqlx::query(subscriptions_where!(
            "WHERE partner = $1 AND id > $2 ORDER BY id LIMIT $3"
        ))
        .bind(partner)
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(subscription).collect()
    }

    /// Deletes `partner`'s subscription `id`: false when it has none by that id. Its pending
    /// deliveries stay, and are delivered (they were owed before the deletion).
    pub async fn unsubscribe(&self, partner: &str, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let deleted = sqlx::query("DELETE FROM subscriptions WHERE partner = $1 AND id = $2")
            .bind(partner)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if deleted.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query("UPDATE partner_counts SET n = n - 1 WHERE partner = $1 AND n > 0")
            .bind(partner)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Every subscription to `account`.
    pub async fn subscribers(&self, account: &str) -> Result<Vec<Subscription>, StoreError> {
        let rows = sqlx::query(subscriptions_where!("WHERE account = $1 ORDER BY id"))
            .bind(account)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(subscription).collect()
    }

    /// The subscribed accounts after `after`, in order, each once, at most `limit`.
    pub async fn accounts(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT DISTINCT account FROM subscriptions WHERE account > $1 ORDER BY account LIMIT $2",
        )
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        account_column(&rows)
    }

    /// How many distinct accounts are subscribed to.
    pub async fn account_count(&self) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT COUNT(DISTINCT account) AS n FROM subscriptions")
            .fetch_one(&self.pool)
            .await?;
        Ok(count(&row, "n")?)
    }

    /// Subscriptions held, by partner.
    pub async fn subscriptions_by_partner(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT partner, COUNT(*) AS n FROM subscriptions GROUP BY partner ORDER BY partner",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get::<String, _>("partner")?, count(row, "n")?)))
            .collect()
    }

    /// Every bill the store knows of `account`, with its version, by bill id.
    pub async fn bills(&self, account: &str) -> Result<Vec<(BillState, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT bill_id, status, amount_due, due_date, version FROM bills WHERE account = $1 ORDER BY bill_id",
        )
        .bind(account)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    BillState {
                        bill_id: row.try_get("bill_id")?,
                        status: row.try_get("status")?,
                        amount_due: row.try_get("amount_due")?,
                        due_date: row.try_get("due_date")?,
                    },
                    row.try_get("version")?,
                ))
            })
            .collect()
    }

    /// Asks for `account` to be refreshed ahead of the schedule; asked again before it was,
    /// the first request stands.
    pub async fn request_refresh(&self, account: &str, now_ms: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO refresh_requests (account, requested_ms) VALUES ($1, $2) ON CONFLICT (account) DO NOTHING",
        )
        .bind(account)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The accounts asked to be refreshed, oldest request first, at most `limit`.
    pub async fn refresh_requests(&self, limit: u32) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT account FROM refresh_requests ORDER BY requested_ms, account LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        account_column(&rows)
    }

    /// `account` was refreshed (or given up on): its request is done.
    pub async fn refresh_done(&self, account: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM refresh_requests WHERE account = $1")
            .bind(account)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records what the biller says `account`'s bills are, and answers what changed against
    /// what the store knew. Bills left out are left as they were.
    ///
    /// Race-safe: a new bill is one `INSERT … ON CONFLICT DO NOTHING` (one of two racing
    /// observers inserts it), a change one `UPDATE … WHERE version = seen` (one of two racing
    /// observers moves it on); the other gets no change, and retries nothing.
    pub async fn observe(
        &self,
        account: &str,
        bills: &[BillState],
        now_ms: i64,
    ) -> Result<Vec<Change>, StoreError> {
        let mut changes = Vec::new();
        for bill in bills {
            let known = sqlx::query(
                "SELECT status, amount_due, due_date, version FROM bills WHERE account = $1 AND bill_id = $2",
            )
            .bind(account)
            .bind(&bill.bill_id)
            .fetch_optional(&self.pool)
            .await?;
            let Some(known) = known else {
                let inserted = sqlx::query(
                    "INSERT INTO bills (account, bill_id, status, amount_due, due_date, version, updated_ms) VALUES ($1, $2, $3, $4, $5, 1, $6) ON CONFLICT (account, bill_id) DO NOTHING",
                )
                .bind(account)
                .bind(&bill.bill_id)
                .bind(&bill.status)
                .bind(&bill.amount_due)
                .bind(&bill.due_date)
                .bind(now_ms)
                .execute(&self.pool)
                .await?;
                if inserted.rows_affected() == 1 {
                    let kind = if is_paid(&bill.status) {
                        ChangeKind::Paid
                    } else {
                        ChangeKind::Due
                    };
                    changes.push(Change {
                        kind,
                        bill: bill.clone(),
                        version: 1,
                    });
                }
                continue;
            };
            let status: String = known.try_get("status")?;
            let amount_due: String = known.try_get("amount_due")?;
            let due_date: String = known.try_get("due_date")?;
            let version: i64 = known.try_get("version")?;
            if status == bill.status && amount_due == bill.amount_due && due_date == bill.due_date {
                continue;
            }
            let moved = sqlx::query(
                "UPDATE bills SET status = $1, amount_due = $2, due_date = $3, version = version + 1, updated_ms = $4 WHERE account = $5 AND bill_id = $6 AND version = $7",
            )
            .bind(&bill.status)
            .bind(&bill.amount_due)
            .bind(&bill.due_date)
            .bind(now_ms)
            .bind(account)
            .bind(&bill.bill_id)
            .bind(version)
            .execute(&self.pool)
            .await?;
            if moved.rows_affected() == 1 {
                let kind = if is_paid(&bill.status) && !is_paid(&status) {
                    ChangeKind::Paid
                } else {
                    ChangeKind::Changed
                };
                changes.push(Change {
                    kind,
                    bill: bill.clone(),
                    version: version + 1,
                });
            }
        }
        Ok(changes)
    }

    /// Puts `deliveries` in the outbox, due at once, in the order given; one whose id is there
    /// already (the same change heard again) is left out. How many were new.
    pub async fn enqueue(
        &self,
        deliveries: &[NewDelivery],
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let mut new = 0;
        let mut tx = self.pool.begin().await?;
        for (i, d) in deliveries.iter().enumerate() {
            // Ordered by when enqueued, then by place in the batch (several changes heard at once).
            let ord = now_ms
                .saturating_mul(4096)
                .saturating_add(i64::try_from(i).unwrap_or(i64::MAX).min(4095));
            let inserted = sqlx::query(
                "INSERT INTO deliveries (id, subscription_id, partner, account, callback, body, state, attempts, ord, created_ms, next_attempt_ms) VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, $8, $8) ON CONFLICT (id) DO NOTHING",
            )
            .bind(&d.id)
            .bind(&d.subscription_id)
            .bind(&d.partner)
            .bind(&d.account)
            .bind(&d.callback)
            .bind(&d.body)
            .bind(ord)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
            new += inserted.rows_affected();
        }
        tx.commit().await?;
        Ok(new)
    }

    /// Pending deliveries due at `now_ms`, each the oldest pending of its subscription (a
    /// subscription's events go out in order, one at a time), soonest first, at most `limit`.
    pub async fn due(&self, now_ms: i64, limit: u32) -> Result<Vec<Delivery>, StoreError> {
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries d WHERE d.state = 'pending' AND d.next_attempt_ms <= $1 \
             AND NOT EXISTS (SELECT 1 FROM deliveries e WHERE e.subscription_id = d.subscription_id AND e.state = 'pending' \
             AND (e.ord < d.ord OR (e.ord = d.ord AND e.id < d.id))) \
             ORDER BY d.next_attempt_ms, d.ord LIMIT $2"
        );
        let rows = sqlx::query(&sql)
            .bind(now_ms)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(delivery).collect()
    }

    /// The delivery was answered 2xx.
    pub async fn delivered(&self, id: &str, now_ms: i64) -> Result<(), StoreError> {
        self.delivered_all(&[(id.to_owned(), now_ms)]).await
    }

    /// Each `(id, at_ms)` delivered, in one transaction: a batch of answers costs one commit.
    pub async fn delivered_all(&self, done: &[(String, i64)]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for (id, at_ms) in done {
            sqlx::query("UPDATE deliveries SET state = 'delivered', finished_ms = $1, last_error = NULL WHERE id = $2 AND state = 'pending'")
                .bind(*at_ms)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The delivery failed its `attempts`-th try: again at `next_attempt_ms`.
    pub async fn retry(
        &self,
        id: &str,
        attempts: u32,
        next_attempt_ms: i64,
        error: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE deliveries SET attempts = $1, next_attempt_ms = $2, last_error = $3 WHERE id = $4 AND state = 'pending'")
            .bind(i64::from(attempts))
            .bind(next_attempt_ms)
            .bind(truncated(error))
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The delivery is given up (past the horizon): a dead letter, and its subscription's next
    /// event goes on.
    pub async fn dead(
        &self,
        id: &str,
        attempts: u32,
        error: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE deliveries SET state = 'dead', attempts = $1, last_error = $2, finished_ms = $3 WHERE id = $4 AND state = 'pending'")
            .bind(i64::from(attempts))
            .bind(truncated(error))
            .bind(now_ms)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The dead letters after the id `after`, by id, at most `limit`.
    pub async fn dead_letters(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError> {
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE state = 'dead' AND id > $1 ORDER BY id LIMIT $2"
        );
        let rows = sqlx::query(&sql)
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(delivery).collect()
    }

    /// A dead letter back in the outbox, due now, its attempts counted from zero: false when
    /// there is no dead delivery by that id.
    pub async fn replay(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let replayed = sqlx::query("UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_ms = $1, finished_ms = NULL WHERE id = $2 AND state = 'dead'")
            .bind(now_ms)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(replayed.rows_affected() == 1)
    }

    /// Deletes up to `limit` deliveries in `state` (`delivered` or `dead`) finished before
    /// `before_ms`: how many. Pending deliveries are never deleted.
    pub async fn prune(&self, state: &str, before_ms: i64, limit: u32) -> Result<u64, StoreError> {
        let deleted = sqlx::query(
            "DELETE FROM deliveries WHERE id IN (SELECT id FROM deliveries WHERE state = $1 AND state <> 'pending' AND finished_ms < $2 ORDER BY finished_ms LIMIT $3)",
        )
        .bind(state)
        .bind(before_ms)
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await?;
        Ok(deleted.rows_affected())
    }

    /// The outbox by state.
    pub async fn queue_counts(&self) -> Result<QueueCounts, StoreError> {
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM deliveries GROUP BY state")
            .fetch_all(&self.pool)
            .await?;
        let mut counts = QueueCounts::default();
        for row in &rows {
            let state: String = row.try_get("state")?;
            let n = count(row, "n")?;
            match state.as_str() {
                "pending" => counts.pending = n,
                "delivered" => counts.delivered = n,
                "dead" => counts.dead = n,
                _ => {}
            }
        }
        Ok(counts)
    }

    /// When the oldest pending delivery was enqueued.
    pub async fn oldest_pending_ms(&self) -> Result<Option<i64>, StoreError> {
        let row =
            sqlx::query("SELECT MIN(created_ms) AS oldest FROM deliveries WHERE state = 'pending'")
                .fetch_one(&self.pool)
                .await?;
        Ok(row.try_get::<Option<i64>, _>("oldest")?)
    }
}

/// Whether a bill's status says it is paid.
pub fn is_paid(status: &str) -> bool {
    status.eq_ignore_ascii_case("paid")
}

/// An error kept with a delivery: its first 500 bytes, cut at a character.
fn truncated(error: &str) -> &str {
    let mut end = error.len().min(500);
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    &error[..end]
}

/// The `account` column of each row.
fn account_column(rows: &[AnyRow]) -> Result<Vec<String>, StoreError> {
    rows.iter()
        .map(|row| {
            row.try_get::<String, _>("account")
                .map_err(StoreError::from)
        })
        .collect()
}

/// A COUNT(…) column: a BIGINT on both databases.
fn count(row: &AnyRow, column: &str) -> Result<u64, sqlx::Error> {
    let n: i64 = row.try_get(column)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

fn subscription(row: &AnyRow) -> Result<Subscription, StoreError> {
    Ok(Subscription {
        id: row.try_get("id")?,
        partner: row.try_get("partner")?,
        account: row.try_get("account")?,
        callback: row.try_get("callback")?,
        created_ms: row.try_get("created_ms")?,
    })
}

fn delivery(row: &AnyRow) -> Result<Delivery, StoreError> {
    let attempts: i64 = row.try_get("attempts")?;
    Ok(Delivery {
        id: row.try_get("id")?,
        subscription_id: row.try_get("subscription_id")?,
        partner: row.try_get("partner")?,
        account: row.try_get("account")?,
        callback: row.try_get("callback")?,
        body: row.try_get("body")?,
        state: row.try_get("state")?,
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        created_ms: row.try_get("created_ms")?,
        next_attempt_ms: row.try_get("next_attempt_ms")?,
        last_error: row.try_get("last_error")?,
    })
}

/// A time-ordered subscription id: `sub_`, the creation time in 13 hex digits of
/// milliseconds, 16 random hex digits.
fn new_id(now_ms: i64) -> Result<String, StoreError> {
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).map_err(|e| StoreError::Random(e.to_string()))?;
    Ok(format!(
        "sub_{:013x}{}",
        u64::try_from(now_ms).unwrap_or(0),
        hex::encode(random)
    ))
}
