//! The throughput ceiling for scripts/bench: drain a queue with fetch_etl's own
//! SQS client (same HTTP stack, signing and tokio runtime as inside the
//! database) doing only ReceiveMessage + DeleteMessageBatch, at a given
//! concurrency, with no database at all.
//!
//!   cargo build --release -p fetch_etl_core --features bench-tools --bin sqs_ceiling
//!   sqs_ceiling --queue-url URL --endpoint URL --concurrency N [--delete-after]
//!
//! --delete-after receives everything first and deletes afterwards, the way a
//! drain must (it deletes only once its transaction has committed).
//!
//! Prints `{"messages": N, "seconds": S}` once the queue is empty.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;

use fetch_etl_sqs::endpoint::{host_of, Reach};
use fetch_etl_sqs::transport::{http_client, Guard, HttpTransport};
use fetch_etl_sqs::{Client, ClientConfig, Credentials, Protocol, QueueRef};

fn arg(name: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| panic!("missing {name}"))
}

async fn delete(client: &Client, handles: &[String]) {
    let entries: Vec<(String, String)> = handles
        .iter()
        .enumerate()
        .map(|(i, h)| (i.to_string(), h.clone()))
        .collect();
    let outcome = client
        .delete_batch(&entries)
        .await
        .expect("DeleteMessageBatch");
    assert!(
        outcome.failed.is_empty(),
        "deletes failed: {:?}",
        outcome.failed
    );
}

/// Receives until the queue is empty; deletes each batch at once, or keeps
/// its receipt handles in `later`.
async fn worker(client: &Client, count: &Cell<usize>, later: Option<&RefCell<Vec<String>>>) {
    loop {
        let msgs = client.receive(10, 0, None).await.expect("ReceiveMessage");
        if msgs.is_empty() {
            return;
        }
        count.set(count.get() + msgs.len());
        let handles: Vec<String> = msgs.into_iter().map(|m| m.receipt_handle).collect();
        match later {
            Some(later) => later.borrow_mut().extend(handles),
            None => delete(client, &handles).await,
        }
    }
}

fn main() {
    let queue_url = arg("--queue-url");
    let endpoint = arg("--endpoint");
    let concurrency: usize = arg("--concurrency").parse().expect("a number");
    let delete_after = std::env::args().any(|a| a == "--delete-after");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let queue = QueueRef::parse(&queue_url, Some(&endpoint)).expect("queue URL");
    // The benchmark's own emulator, named on its command line.
    let guard = Arc::new(Guard::default());
    guard.allow(&host_of(&queue.endpoint).expect("a host"), Reach::Anything);
    let client = Client::new(
        HttpTransport::new(http_client(Duration::from_secs(5), guard).expect("HTTP client")),
        ClientConfig {
            protocol: Some(Protocol::Json),
            ..ClientConfig::default()
        },
        Arc::new(Credentials {
            access_key_id: "test".into(),
            secret_access_key: "test".into(),
            session_token: None,
        }),
        "us-east-1".into(),
        queue,
        None,
    );
    let count = Cell::new(0usize);
    let later = RefCell::new(Vec::new());
    let start = Instant::now();
    rt.block_on(join_all(
        (0..concurrency).map(|_| worker(&client, &count, delete_after.then_some(&later))),
    ));
    let handles = later.into_inner();
    let chunks: Vec<&[String]> = handles.chunks(10).collect();
    for group in chunks.chunks(concurrency) {
        rt.block_on(join_all(group.iter().map(|c| delete(&client, c))));
    }
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "{{\"messages\": {}, \"seconds\": {seconds:.4}}}",
        count.get()
    );
}
