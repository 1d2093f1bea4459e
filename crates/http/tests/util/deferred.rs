//! The deferred routes the deferred-answer tests share.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use duo_http::{HttpServerBuilder, Method, Request, Responder, Response, StatusCode};
use duo_testkit::wait_until;

use super::test_builder;

/// The responders of `GET /held` requests, answered when a test says so.
pub type Held = Arc<Mutex<Vec<(String, Responder)>>>;

/// Body size of `GET /big` and `GET /dbig`.
pub const BIG: usize = 256 << 10;

/// The test routes ([`test_builder`]) plus:
/// - `GET /later?TEXT`: answers TEXT from another thread;
/// - `GET /held?TEXT`: keeps its responder in the returned [`Held`] (the test answers);
/// - `GET /now?TEXT`: answers TEXT within the handler;
/// - `GET /now-then-panic`: answers, then panics;
/// - `GET /drop`: drops its responder unanswered;
/// - `GET /defer-panic`: panics;
/// - `POST /decho`: the body back, from another thread;
/// - `GET /dbig?C`, `GET /big?C`: [`BIG`] bytes of C, later and at once;
/// - `GET /count`: counts its calls in the returned counter (answers at once).
pub fn deferred_builder() -> (HttpServerBuilder, Held, Arc<AtomicUsize>) {
    let held: Held = Arc::default();
    let hits = Arc::new(AtomicUsize::new(0));
    let (keep, count) = (held.clone(), hits.clone());
    let fill = |req: &Request, default: u8| {
        req.query()
            .and_then(|q| q.bytes().next())
            .unwrap_or(default)
    };
    let builder = test_builder()
        .route_deferred(Method::Get, "/later", |req: &Request, r: Responder| {
            let text = req.query().unwrap_or("-").to_owned();
            thread::spawn(move || r.respond(Response::text(StatusCode::OK, text)));
        })
        .route_deferred(Method::Get, "/held", move |req: &Request, r: Responder| {
            let text = req.query().unwrap_or("-").to_owned();
            keep.lock().unwrap().push((text, r));
        })
        .route_deferred(Method::Get, "/now", |req: &Request, r: Responder| {
            r.respond(Response::text(StatusCode::OK, req.query().unwrap_or("-")))
        })
        .route_deferred(
            Method::Get,
            "/now-then-panic",
            |_: &Request, r: Responder| {
                r.respond(Response::text(StatusCode::OK, "answered"));
                panic!("after answering");
            },
        )
        .route_deferred(Method::Get, "/drop", |_: &Request, r: Responder| drop(r))
        .route_deferred(Method::Get, "/defer-panic", |_: &Request, _r: Responder| {
            panic!("a deferred handler that panics")
        })
        .route_deferred(Method::Post, "/decho", |req: &Request, r: Responder| {
            let body = req.body().to_vec();
            thread::spawn(move || {
                r.respond(Response::with_body(
                    StatusCode::OK,
                    "application/octet-stream",
                    body,
                ))
            });
        })
        .route_deferred(Method::Get, "/dbig", move |req: &Request, r: Responder| {
            let body = vec![fill(req, b'd'); BIG];
            thread::spawn(move || {
                r.respond(Response::with_body(
                    StatusCode::OK,
                    "application/octet-stream",
                    body,
                ))
            });
        })
        .route(Method::Get, "/big", move |req| {
            Response::with_body(
                StatusCode::OK,
                "application/octet-stream",
                vec![fill(req, b'b'); BIG],
            )
        })
        .route(Method::Get, "/count", move |_| {
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            Response::text(StatusCode::OK, n.to_string())
        });
    (builder, held, hits)
}

/// Waits until `n` `/held` requests hold their responders; answers each with its text.
pub fn answer_held(held: &Held, n: usize) {
    wait_until(&format!("{n} held requests"), || {
        held.lock().unwrap().len() >= n
    });
    for (text, r) in held.lock().unwrap().drain(..) {
        r.respond(Response::text(StatusCode::OK, text));
    }
}
