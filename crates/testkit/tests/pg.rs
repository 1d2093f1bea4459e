//! `duo_testkit::pg` against a real PostgreSQL: each test makes its own cluster, and skips
//! with one line where PostgreSQL is not installed (fails under CI).

use std::path::PathBuf;
use std::time::Duration;

use duo_testkit::pg::{bin_dir, PgCluster};
use duo_testkit::{is_running, run_within, wait_until};

/// Runs `select 1` with `psql -d URL` (the cluster's own `psql`, its environment
/// overridden by the URL).
fn select_one_at(pg: &PgCluster, url: &str) -> String {
    let done = run_within(
        pg.command("psql")
            .env_remove("PGHOST")
            .env_remove("PGPORT")
            .args(["-X", "-At", "-d", url, "-c", "select 1"]),
        Duration::from_secs(30),
    )
    .expect("psql finishes");
    assert!(done.status.success(), "psql -d {url}: {}", done.stderr);
    done.stdout.trim().to_owned()
}

/// A cluster for `test` without fsync (as tests should: nothing is kept, and a machine
/// busy writing would make every checkpoint slow), or `None` where the test is skipped.
fn cluster(test: &str) -> Option<PgCluster> {
    PgCluster::builder().setting("fsync", "off").for_test(test)
}

#[test]
fn a_started_cluster_answers() {
    let Some(pg) = PgCluster::for_test("a_started_cluster_answers") else {
        return;
    };
    assert_eq!(pg.psql("select 1").unwrap(), "1");
    assert_eq!(
        pg.psql("select current_user, current_database()").unwrap(),
        "bank|bank"
    );
    assert!(pg.postmaster_pid().is_some_and(is_running));
    assert!(pg.data_dir().starts_with(pg.socket_dir()));
    let err = pg.psql("select nonsense").expect_err("bad SQL is an error");
    assert!(err.to_string().contains("nonsense"), "{err}");
}

#[test]
fn url_and_socket_url_both_reach_the_server() {
    let Some(pg) = cluster("url_and_socket_url_both_reach_the_server") else {
        return;
    };
    let url = pg.url();
    assert_eq!(url, format!("postgres://bank@127.0.0.1:{}/bank", pg.port()));
    assert_eq!(select_one_at(&pg, &url), "1");
    let socket_url = pg.socket_url();
    assert!(socket_url.contains(&pg.socket_dir().display().to_string()));
    assert_eq!(select_one_at(&pg, &socket_url), "1");
}

#[test]
fn restart_fast_keeps_the_data() {
    let Some(mut pg) = cluster("restart_fast_keeps_the_data") else {
        return;
    };
    pg.psql("create table t (n int); insert into t values (1), (2), (3)")
        .unwrap();
    let before = pg.postmaster_pid().expect("running");
    pg.restart_fast()
        .unwrap_or_else(|e| panic!("restart: {e}\n{}", pg.log_tail(20)));
    assert_ne!(pg.postmaster_pid(), Some(before), "a new postmaster");
    assert_eq!(pg.psql("select sum(n) from t").unwrap(), "6");
    pg.stop().unwrap();
    assert_eq!(pg.postmaster_pid(), None);
    pg.stop().expect("stopping twice is fine");
}

#[test]
fn dropping_the_cluster_stops_the_server_and_removes_its_directory() {
    let Some(pg) = cluster("dropping_the_cluster_stops_the_server") else {
        return;
    };
    let pid = pg.postmaster_pid().expect("running");
    let dir: PathBuf = pg.socket_dir().to_owned();
    assert!(dir.join("server.log").is_file());
    drop(pg);
    wait_until("the postmaster to exit", || !is_running(pid));
    assert!(!dir.exists(), "{} is removed", dir.display());
}

#[test]
fn builder_settings_are_applied() {
    let Some(pg) = PgCluster::builder()
        .setting("fsync", "off")
        .setting("synchronous_commit", "off")
        .setting("cluster_name", "it's spaced")
        .max_connections(20)
        .for_test("builder_settings_are_applied")
    else {
        return;
    };
    assert_eq!(pg.psql("show fsync").unwrap(), "off");
    assert_eq!(pg.psql("show max_connections").unwrap(), "20");
    assert_eq!(pg.psql("show synchronous_commit").unwrap(), "off");
    assert_eq!(pg.psql("show cluster_name").unwrap(), "it's spaced");
    pg.restart_fast().unwrap();
    assert_eq!(
        pg.psql("show fsync").unwrap(),
        "off",
        "also after a restart"
    );
}

#[test]
fn a_failed_start_is_an_error_with_the_server_log() {
    let test = "a_failed_start_is_an_error_with_the_server_log";
    if bin_dir().is_none() {
        // Skips with the one line (or fails under CI) as every other test does.
        assert!(PgCluster::for_test(test).is_none());
        return;
    }
    let err = PgCluster::builder()
        .setting("fsync", "off")
        .setting("no_such_parameter", 1)
        .start()
        .expect_err("an unknown parameter stops the server from starting");
    let err = err.to_string();
    assert!(err.contains("log"), "{err}");
    assert!(
        err.contains("\"no_such_parameter\""),
        "the log's tail: {err}"
    );
}
