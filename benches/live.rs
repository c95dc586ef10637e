//! The dashboard hub's fan-out: one finished request offered to the hub, until every connected WebSocket client
//! has read its `request.finished` event. The clients are real WebSocket connections over loopback to the
//! `/ws` route served in process (the same code the binary serves), so the figure includes serialising the event
//! once, the broadcast, each client's task writing its frame, and the clients reading them. The end-to-end view
//! with the proxy under load is the `kimi-bench --scenarios dashboards` scenario.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use futures_util::StreamExt;
use futures_util::future::join_all;
use kimi_proxy::accounting::RecordSink;
use kimi_proxy::config::Config;
use kimi_proxy::live::Hub;
use kimi_proxy::proxy::ProxyState;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn state() -> Arc<ProxyState> {
    let text = "builtin_catalog = false\n\
                [providers.mock]\nbase_url = \"http://127.0.0.1:9/v1\"\napi_key = \"key\"\n\
                [models.\"mock/model\"]\nprovider = \"mock\"\nmodel = \"mock-model\"\n\
                max_context_size = 262144\n";
    let config = Config::from_sources(Some(("bench", text)), &|_: &str| None).unwrap();
    Arc::new(ProxyState::new(Arc::new(config)).unwrap())
}

/// Reads until the client's next `request.finished` event (the hub's once-a-second stats tick may come first).
async fn next_finished(client: &mut Client) {
    loop {
        match client.next().await {
            Some(Ok(Message::Text(text))) if text.contains("\"type\":\"request.finished\"") => {
                return;
            }
            Some(Ok(_)) => {}
            other => panic!("dashboard connection ended: {other:?}"),
        }
    }
}

fn fan_out(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let hub = runtime.block_on(async {
        let hub = Hub::start(state(), None);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = kimi_proxy::routes::dashboard_routes().with_state(Arc::clone(&hub));
        tokio::spawn(async move { axum::serve(listener, router).await });
        (hub, addr)
    });
    let (hub, addr) = hub;
    let mut group = c.benchmark_group("hub_fan_out");
    group.sample_size(30);
    group.measurement_time(Duration::from_secs(5));
    let mut clients: Vec<Client> = Vec::new();
    let mut next_id = 0;
    for count in [1usize, 10, 100] {
        // Connect up to `count` clients; each first reads its `init` snapshot.
        runtime.block_on(async {
            while clients.len() < count {
                let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
                    .await
                    .unwrap();
                match client.next().await {
                    Some(Ok(Message::Text(text))) => assert!(text.contains("\"type\":\"init\"")),
                    other => panic!("no init snapshot: {other:?}"),
                }
                clients.push(client);
            }
            while hub.clients() < count {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        group.bench_function(BenchmarkId::new("one_event_to_every_client", count), |b| {
            b.iter_custom(|iterations| {
                runtime.block_on(async {
                    let started = Instant::now();
                    for _ in 0..iterations {
                        next_id += 1;
                        hub.offer(&Arc::new(support::agent_turn(next_id)));
                        join_all(clients.iter_mut().map(next_finished)).await;
                    }
                    started.elapsed()
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, fan_out);
criterion_main!(benches);
