//! A client's `max_in_flight` bounds the requests one connector instance has open at once
//! (Jamf advises five), however many steps and `for_each` elements call it concurrently.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use cordon_connectors::http_client::{HttpClient, HttpClientConfig, RequestSpec};
use cordon_connectors::secret::Redactor;
use cordon_connectors::RequestLog;

#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    max: AtomicUsize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_max_in_flight_requests_are_open_at_once() {
    let gauge = Arc::new(Gauge::default());
    let g = gauge.clone();
    let app = Router::new().route(
        "/slow",
        get(move || {
            let g = g.clone();
            async move {
                let n = g.now.fetch_add(1, Ordering::SeqCst) + 1;
                g.max.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                g.now.fetch_sub(1, Ordering::SeqCst);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut config = HttpClientConfig::new("jamf-test");
    config.base_url = Some(format!("http://{addr}/").parse().unwrap());
    config.max_in_flight = Some(cordon_connectors::jamf::MAX_CONNECTIONS);
    let client = Arc::new(HttpClient::new(config, Redactor::default()).unwrap());
    let mut tasks = Vec::new();
    for _ in 0..25 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let log = RequestLog::default();
            client
                .send(RequestSpec::get("slow"), &log)
                .await
                .map(|r| r.status.as_u16())
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 200);
    }
    let max = gauge.max.load(Ordering::SeqCst);
    assert!(max <= 5, "{max} requests were open at once");
    assert!(max >= 2, "requests did not run concurrently at all ({max})");
}
