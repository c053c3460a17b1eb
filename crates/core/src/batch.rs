//! A batch of received messages to what the store writes: for each
//! message, its ledger key and its pipeline's rows (with the vault's
//! pairs), or the reason it was refused. Pure: the extension records the
//! keys in the ledger, turns the rows of the new ones into SQL arrays
//! ([`crate::pipeline::engine::Columns`]) and runs the statements.

use std::collections::HashSet;

use crate::contract::RejectReason;
use crate::mask::Masker;
use crate::message::Message;
use crate::pipeline::engine::{self, Limits, Loaded};
use crate::pipeline::plan::Plan;
use crate::pipeline::router::Router;

/// The pipelines one drain runs: one, or those of a router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pipelines {
    /// What the drain was given (a pipeline's name, or a router's).
    pub name: String,
    /// Its catalog id (dead letters record it: a replay runs it again).
    pub id: i64,
    pub plans: Vec<Plan>,
    pub router: Option<Router>,
}

impl Pipelines {
    pub fn single(plan: Plan) -> Pipelines {
        Pipelines {
            name: plan.pipeline.clone(),
            id: plan.pipeline_id,
            plans: vec![plan],
            router: None,
        }
    }

    /// Whether a pipeline, or the router, reads message attributes (the
    /// drain asks SQS for them then).
    pub fn wants_message_attributes(&self) -> bool {
        self.plans.iter().any(|p| p.wants_message_attributes)
            || self
                .router
                .as_ref()
                .is_some_and(|r| r.discriminator.needs_message_attributes())
    }
}

/// A message that was not loaded: its index in the input, the pipeline it
/// went to (None: refused before one was chosen), its reason and the full
/// text stored in the dead letter (`<reason>: <detail>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub index: usize,
    pub plan: Option<usize>,
    pub reason: RejectReason,
    pub text: String,
}

impl Refusal {
    pub fn new(index: usize, reason: RejectReason, detail: impl std::fmt::Display) -> Self {
        Refusal {
            index,
            plan: None,
            reason,
            text: format!("{reason}: {detail}"),
        }
    }
}

/// What a message became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Made {
    /// Rows of `plans[plan]`.
    Rows {
        plan: usize,
        loaded: Loaded,
    },
    Refused(Refusal),
}

/// One message, ready for the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// What the ledger records (the message id, or the pipeline's key).
    pub key: String,
    pub made: Made,
}

/// Opens, routes and builds every message of a batch. `between` runs
/// before each message (the extension checks for query cancellation there);
/// a message SQS sent no timestamp for is dated `now_ms`.
pub fn prepare(
    msgs: &[&Message],
    pipelines: &Pipelines,
    masker: &Masker,
    limits: &Limits,
    now_ms: i64,
    between: &mut dyn FnMut(),
) -> Vec<Prepared> {
    prepare_part(msgs, pipelines, masker, limits, now_ms, usize::MAX, between)
}

/// [`prepare`] for the first messages of `msgs` whose rows take about
/// `budget` bytes: it stops after the message whose rows reach it (at least
/// one message). The store writes a batch in such parts, so a pipeline that
/// makes many rows of each body never holds more than that in memory.
pub fn prepare_part(
    msgs: &[&Message],
    pipelines: &Pipelines,
    masker: &Masker,
    limits: &Limits,
    now_ms: i64,
    budget: usize,
    between: &mut dyn FnMut(),
) -> Vec<Prepared> {
    let mut out = Vec::with_capacity(msgs.len());
    let mut bytes = 0usize;
    for (i, m) in msgs.iter().enumerate() {
        if bytes >= budget {
            break;
        }
        between();
        let p = prepare_one(i, m, pipelines, masker, limits, now_ms);
        if let Made::Rows { loaded, .. } = &p.made {
            bytes = bytes.saturating_add(loaded.bytes());
        }
        out.push(p);
    }
    out
}

fn prepare_one(
    index: usize,
    m: &Message,
    pipelines: &Pipelines,
    masker: &Masker,
    limits: &Limits,
    now_ms: i64,
) -> Prepared {
    let refused = |plan: Option<usize>, r: crate::reject::Reject, key: String| Prepared {
        key,
        made: Made::Refused(Refusal {
            plan,
            ..Refusal::new(index, r.reason, r.detail)
        }),
    };
    let event = match engine::open(m, limits) {
        Ok(e) => e,
        Err(mut r) => {
            // With one pipeline, "not this pipeline's event" is its reason
            if r.reason == RejectReason::UnrecognizedEvent && pipelines.router.is_none() {
                r.reason = pipelines.plans[0].unrecognized;
            }
            let plan = pipelines.router.is_none().then_some(0);
            return refused(plan, r, m.message_id.clone());
        }
    };
    let plan = match &pipelines.router {
        None => 0,
        Some(router) => match router.route(m, &event) {
            Ok(i) => i,
            Err(r) => return refused(None, r, m.message_id.clone()),
        },
    };
    let p = &pipelines.plans[plan];
    let key = match engine::ledger_key(p, m, Some(&event)) {
        Ok(k) => k,
        Err(r) => return refused(Some(plan), r, m.message_id.clone()),
    };
    match engine::build(p, m, &event, masker, limits, now_ms) {
        Ok(loaded) => Prepared {
            key,
            made: Made::Rows { plan, loaded },
        },
        // Said where it was, as 0.4.0 did: "in the SNS notification's
        // Message: ...", outermost envelope first
        Err(r) => {
            let r = event
                .envelopes
                .iter()
                .rev()
                .fold(r, |r, &kind| crate::envelope::inside(kind, r));
            refused(Some(plan), r, key)
        }
    }
}

/// On a FIFO queue, the ids of `fresh` messages that SQS delivered after a
/// `deferred` message of the same group (in `msgs`' order, the order SQS
/// delivered them). Loading them now would put them before the message
/// still to come: they are left in the queue with it.
pub fn behind_deferred(
    msgs: &[&Message],
    fresh: &HashSet<String>,
    deferred: &HashSet<String>,
) -> Vec<String> {
    let mut blocked: HashSet<&str> = HashSet::new();
    let mut out = Vec::new();
    for m in msgs {
        let Some(group) = m.group_id() else { continue };
        if deferred.contains(&m.message_id) {
            blocked.insert(group);
        } else if blocked.contains(group) && fresh.contains(&m.message_id) {
            out.push(m.message_id.clone());
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests;
