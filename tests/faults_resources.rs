//! 1,000 connect/disconnect cycles on both WebSockets leave nothing behind: tokio tasks, OS
//! threads, file descriptors and memory return to their baseline (issue #6).
//!
//! Alone in its own test binary on purpose: threads, descriptors and RSS are process-wide, so
//! any test running beside it would move them.

// Helpers outside #[test] fns are not covered by allow-unwrap-in-tests; a panic is the report.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

const CYCLES: usize = 1000;
/// Cycles in flight at once, so the run stays short and the server sees overlap.
const CONCURRENCY: usize = 4;
/// RSS may settle above the baseline (allocator arenas keep freed pages); growth that scales
/// with the cycle count would be far above this.
const RSS_TOLERANCE_KIB: u64 = 32 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Usage {
    tasks: usize,
    threads: usize,
    fds: usize,
    rss_kib: u64,
}

fn count_dir(path: &str) -> usize {
    std::fs::read_dir(path).unwrap().count()
}

fn usage() -> Usage {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let resident_pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    Usage {
        tasks: tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
        threads: count_dir("/proc/self/task"),
        fds: count_dir("/proc/self/fd"),
        rss_kib: resident_pages * page / 1024,
    }
}

/// Opens a socket, reads its greeting, closes it and reads until the server's close.
async fn cycle(url: String, greeting: &str) {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let first = loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => break serde_json::from_str::<Value>(&text).unwrap(),
            Some(Ok(_)) => {}
            other => panic!("no greeting: {other:?}"),
        }
    };
    assert_eq!(first["type"], greeting, "{first}");
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
}

async fn run_cycles(srv: &support::TestServer, token: &str, conversation_id: &str, n: usize) {
    let urls = (0..n).flat_map(|_| {
        [
            (format!("ws://{}/ws?token={token}", srv.addr), "system"),
            (
                format!(
                    "ws://{}/transcription?conversationId={conversation_id}&token={token}",
                    srv.addr
                ),
                "backend_connected",
            ),
        ]
    });
    futures_util::stream::iter(urls)
        .for_each_concurrent(CONCURRENCY, |(url, greeting)| cycle(url, greeting))
        .await;
}

/// Waits until every socket and conversation is gone and the counts stop falling (closing is
/// asynchronous on the server side), then measures.
async fn settled(srv: &support::TestServer) -> Usage {
    let mut last = usage();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = usage();
        let idle = srv.state.pipelines.live_count() == 0
            && srv.state.ws_connections.get(&[("socket", "control")]) == 0
            && srv.state.ws_connections.get(&[("socket", "audio")]) == 0;
        if idle && now.tasks == last.tasks && now.fds == last.fds && now.threads == last.threads {
            // The webhook worker polls the store every second on a blocking thread that
            // lives 200 ms: count threads at their low over a window longer than one poll.
            let mut low = now;
            for _ in 0..12 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                low.threads = low.threads.min(usage().threads);
            }
            return low;
        }
        last = now;
    }
    panic!("the server never went idle: {last:?}");
}

#[test]
fn a_thousand_socket_cycles_return_tasks_threads_fds_and_memory_to_baseline() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Idle blocking threads (SQLite calls) exit quickly, so the thread count settles.
        .thread_keep_alive(Duration::from_millis(200))
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let srv = support::start().await;
        let user = srv.new_user("dr_cycles").await;
        let conversation = user
            .create_conversation("Ana", "García", "1980-04-02")
            .await;
        let id = conversation["id"].as_str().unwrap().to_owned();

        // Warm up: connection pools, the blocking pool's threads and allocator arenas reach
        // their working size.
        run_cycles(&srv, &user.access_token, &id, 50).await;
        let baseline = settled(&srv).await;

        run_cycles(&srv, &user.access_token, &id, CYCLES).await;
        let after = settled(&srv).await;
        eprintln!("baseline {baseline:?}\nafter {CYCLES} cycles {after:?}");

        assert!(
            srv.fake.realtime.connection_count() >= CYCLES,
            "every audio socket opened (and closed) a transcription session"
        );
        assert!(
            after.tasks <= baseline.tasks,
            "tasks: {baseline:?} -> {after:?}"
        );
        assert!(
            after.threads <= baseline.threads,
            "threads: {baseline:?} -> {after:?}"
        );
        assert!(after.fds <= baseline.fds, "fds: {baseline:?} -> {after:?}");
        assert!(
            after.rss_kib <= baseline.rss_kib + RSS_TOLERANCE_KIB,
            "rss: {baseline:?} -> {after:?}"
        );
        srv.stop().await;
    });
}
