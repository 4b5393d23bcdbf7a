//! The guardrails: changes a reload refuses unless the operator forces it. The rules are
//! described in the [module docs](super).

use super::{show, Commitment, ConfigDiff, Guardrail, PartnerChange, PartnerDiff};
use super::{OVERCOMMIT_LIMIT, RAISE_LIMIT};
use crate::config::model::Class;
use crate::config::rate::Rate;

impl ConfigDiff {
    /// The changes a reload refuses unless forced: partners by id (within one, classes in
    /// [`Class::ALL`] order, then keys), then all quotas together. Empty when none is hit.
    pub fn guardrails(&self) -> Vec<Guardrail> {
        let capacity = self.after.capacity;
        let mut hits = Vec::new();
        for partner in &self.partners {
            let id = partner.id();
            let quota = |class: Class| format!("partner[{id}].quota.{}", class.as_str());
            match partner {
                PartnerDiff::Removed(_) => {}
                PartnerDiff::Added(p) => {
                    for class in Class::ALL {
                        hits.extend(
                            opened(p.quota.get(class), capacity).map(|m| hit(quota(class), m)),
                        );
                    }
                }
                PartnerDiff::Changed { changes, .. } => {
                    for change in changes {
                        let message = match change {
                            PartnerChange::Quota {
                                class,
                                old: Some(old),
                                new: Some(new),
                            } => raised(*old, *new).map(|m| hit(quota(*class), m)),
                            PartnerChange::Quota {
                                class,
                                old: None,
                                new,
                            } => opened(*new, capacity).map(|m| hit(quota(*class), m)),
                            _ => None,
                        };
                        hits.extend(message);
                    }
                }
            }
        }
        if overcommitted(&self.after) && !overcommitted(&self.before) {
            hits.push(hit(
                "partner".to_owned(),
                overcommit(&self.before, &self.after),
            ));
        }
        hits
    }
}

fn hit(key_path: String, message: String) -> Guardrail {
    Guardrail { key_path, message }
}

/// A class's rate or burst raised more than [`RAISE_LIMIT`] times.
fn raised(old: Rate, new: Rate) -> Option<String> {
    let rate = new.per_second() / old.per_second();
    let burst = f64::from(new.burst.get()) / f64::from(old.burst.get());
    if rate > RAISE_LIMIT {
        Some(format!(
            "quota raised ×{}, more than {RAISE_LIMIT}×: {old} → {new}",
            show::factor(rate)
        ))
    } else if burst > RAISE_LIMIT {
        Some(format!(
            "burst raised ×{}, more than {RAISE_LIMIT}×: {old} → {new} (up to {} requests at once)",
            show::factor(burst),
            new.burst
        ))
    } else {
        None
    }
}

/// A class opened with a rate above the biller's whole capacity.
fn opened(new: Option<Rate>, capacity: Rate) -> Option<String> {
    let new = new?;
    let share = new.per_second() / capacity.per_second();
    (share > 1.0).then(|| {
        format!(
            "class opened at {new}, more than the biller's whole capacity {capacity} ({}×)",
            show::factor(share)
        )
    })
}

fn overcommitted(c: &Commitment) -> bool {
    c.quota_per_second > OVERCOMMIT_LIMIT * c.capacity.per_second()
}

fn overcommit(before: &Commitment, after: &Commitment) -> String {
    let ratio = |c: &Commitment| show::factor(c.quota_per_second / c.capacity.per_second());
    format!(
        "all partners' quotas add up to {}/s, {}× the biller's capacity {}, more than {OVERCOMMIT_LIMIT}× (before: {}/s, {}× of {})",
        show::number(after.quota_per_second),
        ratio(after),
        after.capacity,
        show::number(before.quota_per_second),
        ratio(before),
        before.capacity,
    )
}
