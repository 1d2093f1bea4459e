//! `bank`: random transfers between accounts of the bank server, and a check that no money
//! appeared or vanished.
//!
//! Three phases, each spread over `--threads` engines:
//!
//! 1. **Set-up.** `--accounts` accounts `lg_<runid>_<i>` are registered (`ERR USER_EXISTS`
//!    is fine), logged in to and credited with `DEPOSIT <--deposit>`; the sum of the
//!    balances the deposits report is the run's total. `--setup-conns` connections work
//!    at once, one account per connection: `REGISTER` and `LOGIN` hash a password (argon2,
//!    slow on purpose), so they run concurrently.
//! 2. **Transfers.** `--clients` connections log in (client i as account i % ACCOUNTS,
//!    concurrently); when all are in, the measured phase starts: each client keeps one
//!    `TRANSFER <random other account> <random amount>` outstanding for `--secs`.
//!    `OK <balance>` is a transfer, `ERR INSUFFICIENT_FUNDS` is normal and counted apart,
//!    anything else is an error. A transfer still unanswered on an open connection when
//!    the phase ends counts in the latency with what it has waited so far, if longer
//!    than every answered one (a stall at the end is not hidden). Then the clients stop
//!    sending and wait for their last replies on their open connections, so no transfer
//!    of ours is still in the server when balances are read.
//! 3. **Check.** Every account is logged in to again and its `BALANCE` read: the sum must
//!    equal the total deposited (PASS), or the run fails (FAIL, exit code 1).

use std::io::{self, Write as _};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::cli::BankArgs;
use crate::engine::{Ctx, Engine, Session, Step};
use crate::fault::{Fault, Faults};
use crate::latency::Latency;
use crate::modes::{merge_all, Env};
use crate::report::Report;
use crate::runner::{open_and_measure, run_threads, share, ServerCpu, Ticket};
use duo_testkit::Rng as XorShift;

/// Account names and their password for one run.
#[derive(Debug, Clone)]
struct Names {
    /// `lg_<runid>_`: an account's name is this plus its index.
    prefix: String,
    password: String,
}

impl Names {
    /// Names unique to this run (clock and process id), valid for the bank: at most 32
    /// characters of `[A-Za-z0-9_]`.
    fn new() -> Names {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut rng = XorShift::new(nanos ^ (u64::from(std::process::id()) << 40));
        const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let runid: String = (0..8)
            .map(|_| DIGITS[rng.below(DIGITS.len() as u64) as usize] as char)
            .collect();
        Names {
            prefix: format!("lg_{runid}_"),
            password: format!("lgpw_{runid}"),
        }
    }
}

/// Runs `bank`.
pub(crate) fn run(args: &BankArgs, env: &Env) -> Result<Report, String> {
    let mut report = Report {
        mode: "bank",
        unit: "requests",
        addr: Some(env.target.to_string()),
        secs: Some(args.secs.as_secs_f64()),
        ..Report::default()
    };
    let accounts = args.accounts as usize;
    let clients = env.cap_conns(args.clients, &mut report) as usize;
    let setup_conns = (args.setup_conns as usize).min(accounts);
    let threads = env.threads_for(clients as u64);
    report.threads = threads;
    report.conns = Some(clients as u64);
    report.accounts = Some(accounts as u64);
    let names = Names::new();

    // 1. Set-up.
    let setup = accounts_phase(env, &names, accounts, setup_conns, Job::Setup(args.deposit))?;
    report.errors.merge(&setup.faults);
    report.total_deposited = Some(setup.sum);
    if setup.accounts < accounts as u64 {
        report.failure = Some(format!(
            "set-up failed: {} of {accounts} accounts registered and credited; no transfers run",
            setup.accounts
        ));
        return Ok(report);
    }

    // 2. Transfers.
    let login_deadline = Instant::now() + env.timeout;
    let plan = Plan {
        names: &names,
        clients,
        accounts,
        threads,
        max_amount: args.max_amount,
        secs: args.secs,
        login_deadline,
    };
    let mut cpu = ServerCpu::default();
    let results = run_threads(
        threads,
        |t, ticket| client_worker(env, &plan, t, ticket),
        |gate| {
            gate.wait_arrivals(threads, login_deadline);
            cpu = open_and_measure(gate, env.server_pid, args.secs);
        },
    );
    cpu.fill(&mut report);
    let run = merge_all(results, ClientTally::merge)?;
    let secs = run.elapsed.as_secs_f64();
    let per_sec = |n: u64| (secs > 0.0).then(|| n as f64 / secs);
    report.established = Some(run.logged_in);
    report.elapsed_secs = Some(secs);
    report.transfers = Some(run.transfers);
    report.transfers_per_sec = per_sec(run.transfers);
    report.insufficient = Some(run.insufficient);
    report.msgs = Some(run.transfers + run.insufficient);
    report.msgs_per_sec = per_sec(run.transfers + run.insufficient);
    report.latency = run.latency.summary();
    report.errors.merge(&run.faults);
    if run.logged_in < clients as u64 {
        report.notes.push(format!(
            "only {} of {clients} clients logged in",
            run.logged_in
        ));
    }
    if run.unsettled > 0 {
        report.notes.push(format!(
            "{} transfers were still unanswered {:.0} s after the end: the balance check may \
             catch one in flight",
            run.unsettled,
            env.timeout.as_secs_f64()
        ));
    }

    // 3. Check.
    let check = accounts_phase(env, &names, accounts, setup_conns, Job::Verify)?;
    report.errors.merge(&check.faults);
    report.total_final = (check.accounts == accounts as u64).then_some(check.sum);
    report.total_ok = Some(check.accounts == accounts as u64 && check.sum == setup.sum);
    if check.accounts < accounts as u64 {
        report.notes.push(format!(
            "balance check incomplete: {} of {accounts} accounts read",
            check.accounts
        ));
    }
    Ok(report)
}

/// What the transfer phase needs to know.
#[derive(Debug)]
struct Plan<'a> {
    names: &'a Names,
    clients: usize,
    accounts: usize,
    threads: usize,
    max_amount: u64,
    secs: Duration,
    login_deadline: Instant,
}

/// What one thread of the transfer phase saw.
#[derive(Debug, Default)]
struct ClientTally {
    logged_in: u64,
    transfers: u64,
    insufficient: u64,
    unsettled: u64,
    latency: Latency,
    faults: Faults,
    elapsed: Duration,
}

impl ClientTally {
    fn merge(&mut self, other: &ClientTally) {
        self.logged_in += other.logged_in;
        self.transfers += other.transfers;
        self.insufficient += other.insufficient;
        self.unsettled += other.unsettled;
        self.latency.merge(&other.latency);
        self.faults.merge(&other.faults);
        self.elapsed = self.elapsed.max(other.elapsed);
    }
}

/// One thread of the transfer phase: log in, wait for the gate, transfer, drain.
fn client_worker(
    env: &Env,
    plan: &Plan<'_>,
    t: usize,
    mut ticket: Ticket<'_>,
) -> io::Result<ClientTally> {
    let sessions: Vec<_> = share(plan.clients, plan.threads, t)
        .map(|i| {
            let session = ClientSession {
                names: plan.names.clone(),
                me: i % plan.accounts,
                accounts: plan.accounts as u64,
                max_amount: plan.max_amount,
                rng: XorShift::new(env.seed_for(i)),
                logged_in: false,
                sent_at: None,
            };
            (session, None)
        })
        .collect();
    let mine = sessions.len() as u64;
    let mut engine = Engine::new(
        env.target.clone(),
        sessions,
        ClientShared::default(),
        env.default_options(),
    )?;
    while engine.shared().logged_in + (engine.done_count() as u64) < mine
        && Instant::now() < plan.login_deadline
    {
        engine.poll(plan.login_deadline)?;
    }
    let Some(go) = ticket.arrive_and_wait(&mut engine)? else {
        return Ok(ClientTally::default());
    };
    engine.shared_mut().running = true;
    engine.each(|session, ctx| {
        if session.logged_in && session.sent_at.is_none() {
            session.transfer(ctx);
        }
        Step::Continue
    });
    let end = go + plan.secs;
    while Instant::now() < end {
        engine.poll(end)?;
    }
    let stopped = Instant::now();
    let elapsed = stopped.saturating_duration_since(go);
    // A stall at the end of the phase: what the transfers in flight have waited so far
    // (see `Latency::record_unanswered`), on open connections: a transfer lost with its
    // connection is a fault, not a wait.
    let waits: Vec<Duration> = engine
        .open_sessions()
        .filter(|s| s.logged_in)
        .filter_map(|s| s.sent_at)
        .map(|sent_at| stopped.saturating_duration_since(sent_at))
        .collect();
    engine.shared_mut().latency.record_unanswered(waits);
    // Drain: no new transfers; wait for the replies to those in flight.
    engine.shared_mut().running = false;
    let drain_deadline = Instant::now() + env.timeout;
    let in_flight = |e: &Engine<ClientSession>| {
        e.open_sessions()
            .filter(|s| s.waiting_since().is_some())
            .count() as u64
    };
    while in_flight(&engine) > 0 && Instant::now() < drain_deadline {
        engine.poll(drain_deadline)?;
    }
    let unsettled = in_flight(&engine);
    let (shared, faults) = engine.finish();
    Ok(ClientTally {
        logged_in: shared.logged_in,
        transfers: shared.transfers,
        insufficient: shared.insufficient,
        unsettled,
        latency: shared.latency,
        faults,
        elapsed,
    })
}

/// Counters of one transfer-phase thread.
#[derive(Debug, Default)]
struct ClientShared {
    /// Whether new transfers may be sent (the measured phase).
    running: bool,
    logged_in: u64,
    transfers: u64,
    insufficient: u64,
    latency: Latency,
}

/// One logged-in client sending transfers.
#[derive(Debug)]
struct ClientSession {
    names: Names,
    /// The account this client is logged in to.
    me: usize,
    accounts: u64,
    max_amount: u64,
    rng: XorShift,
    logged_in: bool,
    /// When the request in flight (`LOGIN` or `TRANSFER`) was sent.
    sent_at: Option<Instant>,
}

impl ClientSession {
    /// Queues a transfer of a random amount to a random other account.
    fn transfer(&mut self, ctx: &mut Ctx<'_, ClientShared>) {
        let mut to = self.rng.below(self.accounts - 1) as usize;
        if to >= self.me {
            to += 1;
        }
        let amount = 1 + self.rng.below(self.max_amount);
        let _ = writeln!(ctx.out, "TRANSFER {}{to} {amount}", self.names.prefix);
        self.sent_at = Some(ctx.now);
    }
}

impl Session for ClientSession {
    type Shared = ClientShared;

    fn on_open(&mut self, ctx: &mut Ctx<'_, ClientShared>) -> Step {
        let n = &self.names;
        let _ = writeln!(ctx.out, "LOGIN {}{} {}", n.prefix, self.me, n.password);
        self.sent_at = Some(ctx.now);
        Step::Continue
    }

    fn on_data(
        &mut self,
        input: &[u8],
        ctx: &mut Ctx<'_, ClientShared>,
    ) -> Result<(usize, Step), Fault> {
        let Some((line, used)) = next_line(input) else {
            return Ok((0, Step::Continue));
        };
        let Some(sent_at) = self.sent_at.take() else {
            return Err(Fault::BadReply); // a reply to nothing
        };
        if used < input.len() {
            return Err(Fault::BadReply); // more than one reply to one request
        }
        if !self.logged_in {
            if !line.starts_with("OK welcome") {
                return Err(Fault::LoginFailed);
            }
            self.logged_in = true;
            ctx.shared.logged_in += 1;
        } else {
            let shared = &mut *ctx.shared;
            if line.starts_with("OK ") {
                if shared.running {
                    shared.transfers += 1;
                    shared
                        .latency
                        .record(ctx.now.saturating_duration_since(sent_at));
                }
            } else if line.starts_with("ERR INSUFFICIENT_FUNDS") {
                if shared.running {
                    shared.insufficient += 1;
                    shared
                        .latency
                        .record(ctx.now.saturating_duration_since(sent_at));
                }
            } else if line.starts_with("ERR BUSY") {
                ctx.faults.count(Fault::Busy);
            } else {
                return Err(Fault::BadReply);
            }
        }
        if ctx.shared.running {
            self.transfer(ctx);
        }
        Ok((used, Step::Continue))
    }

    fn waiting_since(&self) -> Option<Instant> {
        self.sent_at
    }
}

/// What an [`AccountSession`] does with each of its accounts.
#[derive(Debug, Clone, Copy)]
enum Job {
    /// `REGISTER`, `LOGIN`, `DEPOSIT <cents>`.
    Setup(u64),
    /// `LOGIN`, `BALANCE`.
    Verify,
}

/// The result of a set-up or check phase.
#[derive(Debug, Default)]
struct AccountsTally {
    /// Accounts done (credited, or read).
    accounts: u64,
    /// Sum of their balances.
    sum: i64,
    faults: Faults,
}

impl AccountsTally {
    fn merge(&mut self, other: &AccountsTally) {
        self.accounts += other.accounts;
        self.sum += other.sum;
        self.faults.merge(&other.faults);
    }
}

/// Runs `job` over every account with `conns` connections at once.
fn accounts_phase(
    env: &Env,
    names: &Names,
    accounts: usize,
    conns: usize,
    job: Job,
) -> Result<AccountsTally, String> {
    let threads = env.threads_for(conns as u64);
    let deadline = Instant::now() + env.timeout;
    let results = run_threads(
        threads,
        |t, _ticket| -> io::Result<AccountsTally> {
            let sessions: Vec<_> = share(conns, threads, t)
                .map(|c| {
                    let session = AccountSession {
                        names: names.clone(),
                        job,
                        accounts: (c..accounts).step_by(conns).collect(),
                        next: 0,
                        step: 0,
                        sent_at: None,
                    };
                    (session, None)
                })
                .collect();
            let mut engine = Engine::new(
                env.target.clone(),
                sessions,
                AccountsTally::default(),
                env.default_options(),
            )?;
            while engine.done_count() < engine.sessions().count() && Instant::now() < deadline {
                engine.poll(deadline)?;
            }
            let (mut tally, faults) = engine.finish();
            tally.faults.merge(&faults);
            Ok(tally)
        },
        |_| {},
    );
    merge_all(results, AccountsTally::merge)
}

/// Works through a list of accounts, one connection each.
#[derive(Debug)]
struct AccountSession {
    names: Names,
    job: Job,
    /// The accounts (indices) this session handles.
    accounts: Vec<usize>,
    /// The current one, an index into `accounts`.
    next: usize,
    /// Which command of the job is in flight.
    step: usize,
    sent_at: Option<Instant>,
}

impl AccountSession {
    /// Queues the command number `self.step` of the job for the current account.
    fn send(&mut self, ctx: &mut Ctx<'_, AccountsTally>) {
        let n = &self.names;
        let who = self.accounts[self.next];
        let _ = match (self.job, self.step) {
            (Job::Setup(_), 0) => writeln!(ctx.out, "REGISTER {}{who} {}", n.prefix, n.password),
            (Job::Setup(_), 1) | (Job::Verify, 0) => {
                writeln!(ctx.out, "LOGIN {}{who} {}", n.prefix, n.password)
            }
            (Job::Setup(cents), _) => writeln!(ctx.out, "DEPOSIT {cents}"),
            (Job::Verify, _) => writeln!(ctx.out, "BALANCE"),
        };
        self.sent_at = Some(ctx.now);
    }

    /// Moves on to the next account: a fresh connection, or done.
    fn next_account(&mut self) -> Step {
        self.next += 1;
        self.step = 0;
        self.sent_at = None;
        if self.next < self.accounts.len() {
            Step::Reconnect
        } else {
            Step::Done
        }
    }
}

impl Session for AccountSession {
    type Shared = AccountsTally;

    fn on_open(&mut self, ctx: &mut Ctx<'_, AccountsTally>) -> Step {
        if self.next >= self.accounts.len() {
            return Step::Done;
        }
        self.step = 0;
        self.send(ctx);
        Step::Continue
    }

    fn on_data(
        &mut self,
        input: &[u8],
        ctx: &mut Ctx<'_, AccountsTally>,
    ) -> Result<(usize, Step), Fault> {
        let Some((line, used)) = next_line(input) else {
            return Ok((0, Step::Continue));
        };
        if self.sent_at.is_none() || used < input.len() {
            return Err(Fault::BadReply);
        }
        let last = match self.job {
            Job::Setup(_) => 2,
            Job::Verify => 1,
        };
        let login = matches!((self.job, self.step), (Job::Setup(_), 1) | (Job::Verify, 0));
        let ok = if login {
            line.starts_with("OK welcome")
        } else if matches!((self.job, self.step), (Job::Setup(_), 0)) {
            line.starts_with("OK") || line.starts_with("ERR USER_EXISTS")
        } else {
            line.starts_with("OK ")
        };
        if !ok {
            // This account failed; count it and go on with the next one.
            ctx.faults.count(match line {
                _ if line.starts_with("ERR BUSY") => Fault::Busy,
                _ if login => Fault::LoginFailed,
                _ => Fault::BadReply,
            });
            return Ok((used, self.next_account()));
        }
        if self.step < last {
            self.step += 1;
            self.send(ctx);
            return Ok((used, Step::Continue));
        }
        // `OK <cents>`: the balance after the deposit, or the balance read.
        let Some(cents) = line
            .strip_prefix("OK ")
            .and_then(|v| v.trim().parse::<i64>().ok())
        else {
            return Err(Fault::BadReply);
        };
        ctx.shared.accounts += 1;
        ctx.shared.sum += cents;
        Ok((used, self.next_account()))
    }

    fn waiting_since(&self) -> Option<Instant> {
        self.sent_at
    }

    fn retry_after(&mut self, _fault: Fault, _shared: &mut AccountsTally) -> bool {
        // The connection failed: this account is lost; go on with the next.
        self.next_account() == Step::Reconnect
    }
}

/// The first line of `input` (without `\n` or `\r\n`) and the bytes it takes, if complete.
fn next_line(input: &[u8]) -> Option<(&str, usize)> {
    let end = input.iter().position(|&b| b == b'\n')?;
    let line = &input[..end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    Some((std::str::from_utf8(line).unwrap_or(""), end + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_bank_names() {
        let n = Names::new();
        let user = format!("{}{}", n.prefix, 99_999);
        assert!(user.len() <= 32);
        assert!(user.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        assert!(n.password.len() >= 8);
    }

    #[test]
    fn lines_split() {
        assert_eq!(next_line(b"OK 5\r\nrest"), Some(("OK 5", 6)));
        assert_eq!(next_line(b"OK 5"), None);
    }
}
