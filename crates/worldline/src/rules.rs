//! The rules between an outcome and the commitment it answers (L4). Pure
//! functions: the server calls them before appending, the replay fold calls
//! them again on what was stored.

use crate::{Decision, Outcome, OutcomeStatus, Receipt, ReceiptBody, WorldlineError, WorldlineId};

/// Whether an outcome with `status` may answer a commitment that decided
/// `decision`: `Succeeded` and `Failed` only for an accepted commitment,
/// `Rejection` only for a rejected one. Otherwise
/// [`WorldlineError::DecisionMismatch`].
pub fn check_decision(decision: &Decision, status: &OutcomeStatus) -> Result<(), WorldlineError> {
    check_status(decision.is_accepted(), status)
}

/// [`check_decision`] for a commitment known only by whether it was
/// accepted (all the replay fold remembers).
pub fn check_status(accepted: bool, status: &OutcomeStatus) -> Result<(), WorldlineError> {
    let fits = match status {
        OutcomeStatus::Succeeded | OutcomeStatus::Failed { .. } => accepted,
        OutcomeStatus::Rejection => !accepted,
    };
    if fits {
        return Ok(());
    }
    let (decided, allowed) = if accepted {
        ("accepted", "succeeded or failed")
    } else {
        ("rejected", "rejection")
    };
    Err(WorldlineError::DecisionMismatch {
        message: format!(
            "the commitment was {decided} but the outcome says {}; an outcome of a {decided} commitment is {allowed}",
            status.name()
        ),
    })
}

/// Whether `outcome` may be appended to `worldline` as the answer to
/// `commitment` (the receipt its `commitment` hash names, as read from the
/// ledger):
///
/// - the receipt is a commitment of this worldline
///   ([`WorldlineError::UnknownCommitment`] otherwise);
/// - it is the receipt the outcome names ([`WorldlineError::Invalid`]: the
///   caller looked up the wrong one);
/// - the status fits the decision ([`check_decision`]).
///
/// "No outcome yet" is not checked here: it is the one fact that can change
/// between this check and the append, so the server makes it atomic with
/// [`outcome_idempotency_key`](crate::outcome_idempotency_key).
pub fn check_outcome_for(
    worldline: &WorldlineId,
    commitment: &Receipt,
    outcome: &Outcome,
) -> Result<(), WorldlineError> {
    if commitment.receipt_hash != outcome.commitment {
        return Err(WorldlineError::invalid(
            "commitment",
            format!(
                "is {} but the receipt checked against is {}",
                outcome.commitment, commitment.receipt_hash
            ),
        ));
    }
    if commitment.worldline != *worldline {
        return Err(WorldlineError::UnknownCommitment {
            commitment: outcome.commitment,
            message: format!(
                "receipt {} belongs to worldline {}, not {worldline}; an outcome answers a commitment of its own worldline",
                outcome.commitment, commitment.worldline
            ),
        });
    }
    match &commitment.body {
        ReceiptBody::Commitment(c) => check_decision(&c.decision, &outcome.status),
        ReceiptBody::Outcome(_) => Err(WorldlineError::UnknownCommitment {
            commitment: outcome.commitment,
            message: format!(
                "receipt {} (seq {}) is an outcome, not a commitment",
                outcome.commitment, commitment.seq
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    #[test]
    fn only_accepted_commitments_succeed_or_fail_and_only_rejected_ones_get_a_rejection() {
        let acc = Decision::Accepted;
        let rej = Decision::Rejected {
            reason: "no".into(),
        };
        let failed = OutcomeStatus::Failed { reason: "x".into() };
        assert!(check_decision(&acc, &OutcomeStatus::Succeeded).is_ok());
        assert!(check_decision(&acc, &failed).is_ok());
        assert!(check_decision(&rej, &OutcomeStatus::Rejection).is_ok());
        for (d, s) in [
            (&acc, &OutcomeStatus::Rejection),
            (&rej, &OutcomeStatus::Succeeded),
            (&rej, &failed),
        ] {
            let e = check_decision(d, s).unwrap_err();
            assert_eq!(e.code(), ErrorCode::FailedPrecondition, "{e}");
        }
        let e = check_decision(&rej, &OutcomeStatus::Succeeded).unwrap_err();
        assert_eq!(
            e.message(),
            "the commitment was rejected but the outcome says succeeded; an outcome of a rejected commitment is rejection"
        );
    }
}
