//! The bank's own figures for `bank serve --metrics`: writes by kind and outcome, group
//! commit batch sizes and commit latency, failed logins, database errors. They sit next to
//! duo's loop and server figures on the same `/metrics` page (`docs/observability.md`).

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::protocol::ErrorCode;
use crate::store::{WriteOp, WriteOutcome, WriteResults};

/// A label set of one label.
type Label = [(&'static str, &'static str); 1];

/// The bank's metrics. Cloning gives another handle to the same counters; a handle that
/// was never [registered](BankMetrics::register) counts for nobody.
#[derive(Debug, Clone)]
pub struct BankMetrics {
    /// Write operations by kind and outcome.
    writes: Family<[(&'static str, &'static str); 2], Counter>,
    /// Operations per committed batch (one transaction, one durable commit).
    batch_ops: Histogram,
    /// Time to apply and commit one batch.
    commit_seconds: Histogram,
    /// Time of one flush barrier (PostgreSQL with early lock release).
    flush_seconds: Histogram,
    /// Flush barriers that failed.
    flush_failures: Counter,
    /// Logins refused (wrong name or password).
    failed_logins: Counter,
    /// Commands answered with a database error, by protocol code.
    db_errors: Family<Label, Counter>,
}

impl Default for BankMetrics {
    fn default() -> BankMetrics {
        BankMetrics {
            writes: Family::default(),
            // 1, 2, 4, ... 4096 operations.
            batch_ops: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            // 100 µs ... about 3.3 s.
            commit_seconds: Histogram::new(exponential_buckets(1e-4, 2.0, 16)),
            flush_seconds: Histogram::new(exponential_buckets(1e-4, 2.0, 16)),
            flush_failures: Counter::default(),
            failed_logins: Counter::default(),
            db_errors: Family::default(),
        }
    }
}

impl BankMetrics {
    /// The metrics endpoint: duo's figures for `server` (and every loop of the process),
    /// these, and when the TLS certificate chain of `cert_expiry`'s file stops being valid.
    pub(crate) fn endpoint(
        &self,
        server: &duo_net::TcpServer,
        cert_expiry: Option<(&std::path::Path, std::time::SystemTime)>,
    ) -> duo_metrics::MetricsEndpoint {
        let mut endpoint = duo_metrics::MetricsEndpoint::new();
        endpoint.add_server(server.clone_handle());
        if let Some((file, not_after)) = cert_expiry {
            endpoint.certificate_expiry(file, not_after);
        }
        self.register(endpoint.registry_mut());
        endpoint
    }

    /// Registers the metrics in `registry` under the prefix `bank` (`prometheus_client`
    /// ends every help text with a full stop itself).
    pub fn register(&self, registry: &mut Registry) {
        let bank = registry.sub_registry_with_prefix("bank");
        bank.register(
            "writes",
            "Write operations committed (or refused) by kind (register, deposit, withdraw, \
             transfer) and outcome (ok, rejected: a business rule said no; error: the \
             database failed; replayed: a transfer retried with its request id, answered \
             with the first one's outcome and applying nothing)",
            self.writes.clone(),
        );
        bank.register(
            "batch_operations",
            "Operations per committed batch: one transaction and one durable commit each",
            self.batch_ops.clone(),
        );
        bank.register(
            "commit_seconds",
            "Time to apply and durably commit one batch",
            self.commit_seconds.clone(),
        );
        bank.register(
            "flush_seconds",
            "Time of one flush barrier: a synchronous commit on the PostgreSQL session that \
             confirms the batches committed without waiting for the disk (early lock \
             release); every such batch's replies wait for one",
            self.flush_seconds.clone(),
        );
        bank.register(
            "flush_failures",
            "Flush barriers that failed: the batches and reads waiting for them were \
             answered UNAVAILABLE",
            self.flush_failures.clone(),
        );
        bank.register(
            "failed_logins",
            "Logins refused: wrong user name or password",
            self.failed_logins.clone(),
        );
        bank.register(
            "database_errors",
            "Commands answered with a database error, by protocol code (UNAVAILABLE, \
             INTERNAL)",
            self.db_errors.clone(),
        );
    }

    /// A batch of `ops` was applied with `results`; `committed`: it committed (and was
    /// made durable) in this time. A batch that failed as a whole (nothing committed, or
    /// not durable) is no committed batch: its operations count as errors only, not in
    /// the batch sizes nor the commit times (a database that fails fast would otherwise
    /// show as more commits, each quicker than a real one).
    pub(crate) fn batch(
        &self,
        ops: &[&WriteOp],
        results: &WriteResults,
        committed: Option<Duration>,
    ) {
        if let Some(took) = committed {
            self.batch_ops.observe(ops.len() as f64);
            self.commit_seconds.observe(took.as_secs_f64());
        }
        for (op, result) in ops.iter().zip(results) {
            let kind = match op {
                WriteOp::Register { .. } => "register",
                WriteOp::Deposit { .. } => "deposit",
                WriteOp::Withdraw { .. } => "withdraw",
                WriteOp::Transfer { .. } => "transfer",
            };
            let outcome = match result {
                Ok(WriteOutcome::Rejected(..)) => "rejected",
                Ok(WriteOutcome::Replayed(..)) => "replayed",
                Ok(_) => "ok",
                Err(_) => "error",
            };
            self.writes
                .get_or_create(&[("kind", kind), ("outcome", outcome)])
                .inc();
        }
    }

    /// A flush barrier took `took`, and succeeded or not.
    pub(crate) fn flush(&self, took: Duration, ok: bool) {
        self.flush_seconds.observe(took.as_secs_f64());
        if !ok {
            self.flush_failures.inc();
        }
    }

    /// A login was refused.
    pub(crate) fn login_failed(&self) {
        self.failed_logins.inc();
    }

    /// A command was answered with the database error `code`.
    pub(crate) fn db_error(&self, code: ErrorCode) {
        self.db_errors
            .get_or_create(&[("code", code.as_str())])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    #[test]
    fn batches_logins_and_errors_are_exported_under_bank() {
        let m = BankMetrics::default();
        let mut registry = Registry::default();
        m.register(&mut registry);
        let transfer = WriteOp::Transfer {
            from: 1,
            from_name: "alice".into(),
            to: "bob".into(),
            amount: 5,
            request_id: None,
        };
        let deposit = WriteOp::Deposit { user: 1, amount: 9 };
        let results: WriteResults = vec![
            Ok(WriteOutcome::Balance(4)),
            Ok(WriteOutcome::Rejected(
                ErrorCode::InsufficientFunds,
                "no".into(),
            )),
            Err(StoreError::Unavailable("gone".into())),
        ];
        m.batch(
            &[&transfer, &transfer, &deposit],
            &results,
            Some(Duration::from_millis(3)),
        );
        // A batch that failed as a whole: its writes are errors, no committed batch.
        let failed: WriteResults = vec![Err(StoreError::Unavailable("gone".into()))];
        m.batch(&[&deposit], &failed, None);
        m.login_failed();
        m.db_error(ErrorCode::Unavailable);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "bank_writes_total{kind=\"transfer\",outcome=\"ok\"} 1",
            "bank_writes_total{kind=\"transfer\",outcome=\"rejected\"} 1",
            "bank_writes_total{kind=\"deposit\",outcome=\"error\"} 2",
            "bank_batch_operations_count 1",
            "bank_batch_operations_sum 3.0",
            "bank_commit_seconds_count 1",
            "bank_failed_logins_total 1",
            "bank_database_errors_total{code=\"UNAVAILABLE\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
    }
}
