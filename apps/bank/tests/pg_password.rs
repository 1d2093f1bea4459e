//! A PostgreSQL password from `PGPASSWORD` (as libpq takes it) rather than in the URL,
//! where `ps` would show it to every user of the host. Against a real cluster that asks
//! the role `teller` for its password (scram-sha-256).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::BANK;
use duo_testkit::pg::PgCluster;
use duo_testkit::{run_within, ChildServer};

const PASSWORD: &str = "correct-horse-battery";

/// A cluster where `teller` may log in over TCP only with its password.
fn cluster_with_password() -> Option<PgCluster> {
    let cluster = PgCluster::for_test("pg_password")?;
    cluster
        .psql(&format!(
            "CREATE ROLE teller LOGIN SUPERUSER PASSWORD '{PASSWORD}'"
        ))
        .expect("CREATE ROLE");
    // The first matching line decides: password authentication for teller over TCP.
    let hba = cluster.data_dir().join("pg_hba.conf");
    let rest = std::fs::read_to_string(&hba).expect("pg_hba.conf");
    std::fs::write(
        &hba,
        format!("host all teller 127.0.0.1/32 scram-sha-256\n{rest}"),
    )
    .expect("pg_hba.conf");
    cluster.psql("SELECT pg_reload_conf()").expect("reload");
    Some(cluster)
}

/// `bank serve --db URL`, without the `PGPASSWORD` of the test's environment.
fn serve(url: &str) -> Command {
    let mut cmd = Command::new(BANK);
    common::serve_args(&mut cmd, url).env_remove("PGPASSWORD");
    cmd
}

#[test]
fn the_password_comes_from_pgpassword_and_stays_off_the_command_line() {
    let Some(cluster) = cluster_with_password() else {
        return;
    };
    let url = format!("postgres://teller@127.0.0.1:{}/bank", cluster.port());

    // Without it: refused by the server, a clear error, exit 1.
    let done = run_within(&mut serve(&url), Duration::from_secs(30)).expect("bank serve ended");
    assert_eq!(done.status.code(), Some(1), "{}", done.stderr);
    assert!(
        done.stderr.to_lowercase().contains("password"),
        "the error says what is missing: {}",
        done.stderr
    );

    // With a wrong one: refused too.
    let done = run_within(
        serve(&url).env("PGPASSWORD", "wrong"),
        Duration::from_secs(30),
    )
    .expect("bank serve ended");
    assert_eq!(done.status.code(), Some(1), "{}", done.stderr);

    // With the right one in the environment: it serves, and its arguments do not hold it.
    let mut cmd = serve(&url);
    cmd.env("PGPASSWORD", PASSWORD);
    let mut server = ChildServer::builder(cmd)
        .startup(Duration::from_secs(20))
        .stderr(Stdio::inherit())
        .start();
    let args = std::fs::read(format!("/proc/{}/cmdline", server.pid())).expect("cmdline");
    assert!(!String::from_utf8_lossy(&args).contains(PASSWORD));
    let mut client = common::Client::connect(server.addr());
    assert_eq!(client.cmd("REGISTER ann secret-pw"), "OK registered");
    let (status, _) = server.terminate("TERM", Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
}
