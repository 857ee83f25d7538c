//! Handshake: accepted and refused agents, bad frames, the connection cap.

mod hub_support;

use std::net::SocketAddr;

use futures::StreamExt;
use herd_codec::proto::hub_message::Kind;
use herd_codec::proto::{Batch, CloseReason, Record, Welcome};
use herd_tests::script::poll_until;
use hub_support::{ScriptedAgent, hello, hub_with, within};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};

fn refusal(kinds: &[Kind]) -> &Welcome {
    match kinds {
        [Kind::Welcome(welcome)] if !welcome.ok => welcome,
        other => panic!("expected exactly one refusing Welcome, got {other:?}"),
    }
}

#[actix::test]
async fn valid_hello_is_welcomed_with_id_interval_and_hub_id() {
    let (_nats, hub) = hub_with(|_| {}).await;
    let (_agent, welcome) =
        ScriptedAgent::handshake(hub.listen_addr(), hello("web-1", "secret")).await;
    assert!(welcome.ok, "{}", welcome.message);
    assert_eq!(welcome.agent_id, "web-1");
    assert_eq!(welcome.heartbeat_interval_secs, 1);
    assert_eq!(welcome.hub_id, hub.hub_id());

    let (_second, assigned) =
        ScriptedAgent::handshake(hub.listen_addr(), hello("", "secret")).await;
    assert!(assigned.ok);
    assert_eq!(
        assigned.agent_id.len(),
        32,
        "generated id {:?}",
        assigned.agent_id
    );
    assert!(herd_codec::validate_agent_id(&assigned.agent_id).is_ok());
    assert!(
        hub.metrics()
            .render()
            .contains(r#"herd_hub_handshakes_total{outcome="ok"} 2"#)
    );
    hub.shutdown().await;
}

#[actix::test]
async fn refusals_name_the_reason_and_close_only_that_connection() {
    let (_nats, hub) = hub_with(|config| config.handshake_timeout_ms = 300).await;
    let addr = hub.listen_addr();
    let mut survivor = ScriptedAgent::online(addr, "survivor").await;

    let (mut agent, welcome) = ScriptedAgent::handshake(addr, hello("a", "wrong")).await;
    assert!(!welcome.ok);
    assert_eq!(welcome.message, "enrollment token is not valid");
    assert!(agent.until_closed().await.is_empty());

    let (mut agent, welcome) = ScriptedAgent::handshake(addr, hello("bad.id", "secret")).await;
    assert!(!welcome.ok);
    assert!(
        welcome
            .message
            .contains(r#"agent id "bad.id" is not valid: invalid character '.'"#),
        "{}",
        welcome.message
    );
    assert!(agent.until_closed().await.is_empty());

    let mut agent = ScriptedAgent::connect(addr).await;
    agent
        .send(Batch {
            seq: 1,
            records: vec![],
        })
        .await;
    let kinds = agent.until_closed().await;
    assert_eq!(
        refusal(&kinds).message,
        "the first frame must be Hello, got Batch"
    );

    let mut old = hello("old", "secret");
    old.protocol_version = 99;
    let (_agent, welcome) = ScriptedAgent::handshake(addr, old).await;
    assert_eq!(
        welcome.message,
        "protocol version 99 is not supported; this hub speaks 1"
    );

    let mut silent = ScriptedAgent::connect(addr).await;
    let kinds = silent.until_closed().await;
    assert_eq!(refusal(&kinds).message, "no Hello within 300 ms");

    // The agent that behaved is still served.
    survivor
        .send_acked(Batch {
            seq: 1,
            records: vec![],
        })
        .await;
    let metrics = hub.metrics().render();
    for outcome in ["bad_token", "bad_id", "not_hello", "bad_version", "timeout"] {
        assert!(
            metrics.contains(&format!(
                r#"herd_hub_handshakes_total{{outcome="{outcome}"}} 1"#
            )),
            "{outcome} not counted:\n{metrics}"
        );
    }
    hub.shutdown().await;
}

#[actix::test]
async fn garbage_and_oversize_frames_close_only_their_connection() {
    let (_nats, hub) = hub_with(|config| config.max_frame_length = 1024).await;
    let addr = hub.listen_addr();
    let mut survivor = ScriptedAgent::online(addr, "survivor").await;

    let mut garbage = ScriptedAgent::connect(addr).await;
    garbage.send_raw(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).await;
    let kinds = garbage.until_closed().await;
    assert!(
        refusal(&kinds)
            .message
            .starts_with("bad frame: frame body of 3 bytes is not a valid herd.v1.AgentMessage"),
        "{kinds:?}"
    );

    // After the handshake a bad frame gets a Goodbye instead.
    let mut oversize = ScriptedAgent::online(addr, "big").await;
    oversize.send_raw(&[0x10, 0, 0, 0]).await;
    match &oversize.until_closed().await[..] {
        [Kind::Goodbye(goodbye)] => {
            assert_eq!(goodbye.reason(), CloseReason::ProtocolError);
            assert_eq!(
                goodbye.message,
                "bad frame: frame of 268435456 bytes exceeds the maximum frame length of 1024 bytes"
            );
        }
        other => panic!("expected a Goodbye, got {other:?}"),
    }

    survivor
        .send_acked(Batch {
            seq: 7,
            records: vec![],
        })
        .await;
    hub.shutdown().await;
}

#[actix::test]
async fn the_connection_cap_refuses_new_ids_but_allows_takeover() {
    let (_nats, hub) = hub_with(|config| config.max_connections = 2).await;
    let addr = hub.listen_addr();
    let _one = ScriptedAgent::online(addr, "one").await;
    let _two = ScriptedAgent::online(addr, "two").await;
    let (mut third, welcome) = ScriptedAgent::handshake(addr, hello("three", "secret")).await;
    assert!(!welcome.ok);
    assert_eq!(
        welcome.message,
        "hub is full: 2 agents connected, the cap is 2"
    );
    assert!(third.until_closed().await.is_empty());
    let (_again, welcome) = ScriptedAgent::handshake(addr, hello("two", "secret")).await;
    assert!(welcome.ok, "takeover refused: {}", welcome.message);
    hub.shutdown().await;
}

#[actix::test]
async fn shutdown_says_goodbye_to_every_agent() {
    let (_nats, hub) = hub_with(|_| {}).await;
    let mut agent = ScriptedAgent::online(hub.listen_addr(), "leaving").await;
    within("shutdown", hub.shutdown()).await;
    match &agent.until_closed().await[..] {
        [Kind::Goodbye(goodbye)] => assert_eq!(goodbye.reason(), CloseReason::Shutdown),
        other => panic!("expected Goodbye{{SHUTDOWN}}, got {other:?}"),
    }
}

#[actix::test]
async fn a_batch_with_a_malformed_record_is_a_clear_protocol_error_and_nothing_of_it_is_published()
{
    let (nats, hub) = hub_with(|_| {}).await;
    let mut data = hub_support::subscribe(&nats, "herd.data.>").await;
    let mut agent = ScriptedAgent::online(hub.listen_addr(), "mangler").await;
    // AgentMessage{batch{seq 1, records: [good, record with a source that is not UTF-8]}}.
    let good = [0x08, 0xd0, 0x0f]; // data_type 2000
    let bad = [0x08, 0xd0, 0x0f, 0x1a, 0x01, 0xff]; // + source = [0xff]
    let mut batch = vec![0x08, 0x01, 0x12, good.len() as u8];
    batch.extend_from_slice(&good);
    batch.extend_from_slice(&[0x12, bad.len() as u8]);
    batch.extend_from_slice(&bad);
    let mut body = vec![0x12, batch.len() as u8];
    body.extend_from_slice(&batch);
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    agent.send_raw(&frame).await;
    match &agent.until_closed().await[..] {
        [Kind::Goodbye(goodbye)] => {
            assert_eq!(goodbye.reason(), CloseReason::ProtocolError);
            assert!(
                goodbye.message.starts_with(&format!(
                    "bad frame: frame body of {} bytes is not a valid herd.v1.AgentMessage",
                    body.len()
                )),
                "{}",
                goodbye.message
            );
            assert!(goodbye.message.contains("UTF-8"), "{}", goodbye.message);
        }
        other => panic!("expected a Goodbye, got {other:?}"),
    }
    // Not even the well-formed record of that batch went out: the first
    // record published is the one a second agent sends after the refusal.
    let mut witness = ScriptedAgent::online(hub.listen_addr(), "witness").await;
    witness
        .send_acked(Batch {
            seq: 1,
            records: vec![Record::default()],
        })
        .await;
    let first = within("a data message", data.next()).await.expect("open");
    assert_eq!(first.subject.as_str(), "herd.data.witness.0");
    hub.shutdown().await;
}

/// The listen backlog of the socket listening on `port`, as the kernel reports
/// it (`ss` prints a listening socket's backlog in its Send-Q column).
fn listen_backlog(port: u16) -> u32 {
    let output = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{port}")])
        .output()
        .expect("ss (iproute2) runs");
    let table = String::from_utf8_lossy(&output.stdout);
    let line = table
        .lines()
        .next()
        .unwrap_or_else(|| panic!("ss lists no listener on port {port}: {table:?}"));
    // State Recv-Q Send-Q Local Peer
    line.split_whitespace()
        .nth(2)
        .and_then(|column| column.parse().ok())
        .unwrap_or_else(|| panic!("no backlog in {line:?}"))
}

#[actix::test]
async fn the_agent_socket_listens_with_the_configured_backlog() {
    // A reconnect storm (every agent of a restarted hub at once) overflows a
    // short backlog, and each dropped SYN costs its agent a 1 s retransmit.
    let (_nats, hub) = hub_with(|_| {}).await;
    assert_eq!(listen_backlog(hub.listen_addr().port()), 1024);
    hub.shutdown().await;
    let (_nats, hub) = hub_with(|config| config.listen_backlog = 300).await;
    assert_eq!(listen_backlog(hub.listen_addr().port()), 300);
    hub.shutdown().await;
}

/// A connection from the loopback address `source` that never sends a byte.
async fn silent(source: [u8; 4], hub: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from((source, 0)))
        .expect("bind a loopback source");
    within("connect", socket.connect(hub))
        .await
        .expect("connects")
}

/// Whether the hub still holds `stream` open without having written to it.
fn still_open(stream: &TcpStream) -> bool {
    matches!(stream.try_read(&mut [0; 1]), Err(error) if error.kind() == std::io::ErrorKind::WouldBlock)
}

#[actix::test]
async fn sockets_over_the_pending_handshake_bounds_are_closed_at_once() {
    // A handshake timeout beyond WAIT: an EOF within WAIT is the bound's doing.
    let (_nats, hub) = hub_with(|config| {
        config.handshake_timeout_ms = 60_000;
        config.max_pending_handshakes = 16;
        config.max_pending_handshakes_per_source = 8;
    })
    .await;
    let addr = hub.listen_addr();
    let (first, second, third) = ([127, 0, 0, 1], [127, 0, 0, 2], [127, 0, 0, 3]);
    let mut held = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..8 {
        held.push(silent(first, addr).await);
    }
    for _ in 0..4 {
        refused.push(silent(first, addr).await);
    }
    for _ in 0..8 {
        held.push(silent(second, addr).await);
    }
    // The total bound: a third source has room of its own but the hub has none.
    for _ in 0..4 {
        refused.push(silent(third, addr).await);
    }
    for stream in &mut refused {
        let read = within("the hub closing a refused socket", stream.read(&mut [0; 1])).await;
        assert_eq!(read.expect("an orderly close"), 0);
    }
    // The listener takes sockets in order: every held one was taken before.
    assert!(held.iter().all(still_open), "a held socket was closed");
    let metrics = hub.metrics().render();
    for line in [
        r#"herd_hub_sockets_refused_total{reason="per_source"} 4"#,
        r#"herd_hub_sockets_refused_total{reason="pending_handshakes"} 4"#,
        "herd_hub_pending_handshakes 16\n",
        "herd_hub_sockets_accepted_total 24\n",
    ] {
        assert!(metrics.contains(line), "no {line:?} in\n{metrics}");
    }

    // Closed before Hello, each held socket gives its place back.
    drop(held);
    poll_until("the pending handshakes to end", || {
        hub.metrics().pending_handshakes.get() == 0
    })
    .await;
    // A handled Hello ends the pending handshake: more agents than the
    // per-source bound come online from one address.
    let mut agents = Vec::new();
    for n in 0..10 {
        agents.push(ScriptedAgent::online(addr, &format!("after-{n}")).await);
    }
    assert_eq!(hub.metrics().pending_handshakes.get(), 0);
    assert!(
        hub.metrics()
            .render()
            .contains(r#"herd_hub_handshakes_total{outcome="closed"} 16"#)
    );
    hub.shutdown().await;
}

#[actix::test]
async fn sockets_over_a_sources_accept_rate_are_closed_at_once_until_it_refills() {
    // One token a second: the sockets below are all opened well within it,
    // so every refusal is the empty bucket's doing. A handshake timeout
    // beyond WAIT: an EOF within WAIT is the bound's.
    let (_nats, hub) = hub_with(|config| {
        config.handshake_timeout_ms = 60_000;
        config.accept_rate_per_source = 1;
        config.accept_burst_per_source = 4;
    })
    .await;
    let addr = hub.listen_addr();
    let (flooding, other) = ([127, 0, 0, 1], [127, 0, 0, 2]);
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(silent(flooding, addr).await);
    }
    let mut refused = Vec::new();
    for _ in 0..2 {
        refused.push(silent(flooding, addr).await);
    }
    // Another source has a bucket of its own, full.
    held.push(silent(other, addr).await);
    for stream in &mut refused {
        let read = within("the hub closing a refused socket", stream.read(&mut [0; 1])).await;
        assert_eq!(read.expect("an orderly close"), 0);
    }
    // Opened after the refused ones, the other source's socket may not be
    // taken yet.
    poll_until("the other source's socket to be taken", || {
        hub.metrics().pending_handshakes.get() == 5
    })
    .await;
    assert!(held.iter().all(still_open), "a held socket was closed");
    let metrics = hub.metrics().render();
    for line in [
        r#"herd_hub_sockets_refused_total{reason="accept_rate"} 2"#,
        "herd_hub_pending_handshakes 5\n",
        "herd_hub_sockets_accepted_total 7\n",
    ] {
        assert!(metrics.contains(line), "no {line:?} in\n{metrics}");
    }

    // A second later the bucket has a token again: an agent from the
    // flooding source comes online.
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let _agent = ScriptedAgent::online(addr, "after-refill").await;
    assert!(
        hub.metrics()
            .render()
            .contains(r#"herd_hub_sockets_refused_total{reason="accept_rate"} 2"#),
        "the agent was not refused"
    );
    hub.shutdown().await;
}
