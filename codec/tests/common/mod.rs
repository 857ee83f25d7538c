//! Sample messages with every field set, shared by the integration tests.

#![allow(dead_code, unreachable_pub)] // each test binary uses a different subset

use std::collections::HashMap;

use herd_codec::proto::{
    Ack, AgentMessage, Batch, CertificateRequest, CloseReason, Command, ConfigSet, Envelope,
    Goodbye, Hello, HubMessage, IssuedCertificate, Ping, PluginCommand, PluginConfig,
    PluginMessage, PluginStatus, Pong, Record, RestartPolicy, Task, TaskResult, TaskStatus,
    Welcome,
};

fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn record(data_type: u32) -> Record {
    Record {
        data_type,
        timestamp_ms: 1_763_884_800_123,
        source: "sysmetrics".into(),
        fields: map(&[("cpu", "12.5"), ("mem", "1024"), ("ünïcode", "✓")]),
        body: vec![0, 1, 2, 255].into(),
    }
}

pub fn task() -> Task {
    Task {
        id: "task-1".into(),
        data_type: 2001,
        target: "exec".into(),
        fields: map(&[("cmd", "uptime")]),
        body: b"\x00binary\xff".to_vec().into(),
        timeout_ms: 5000,
    }
}

pub fn task_result() -> TaskResult {
    TaskResult {
        task_id: "task-1".into(),
        status: TaskStatus::Failed as i32,
        output: b"partial output".to_vec().into(),
        error: "exit status 3".into(),
        source: "exec".into(),
        fields: map(&[("exit_code", "3")]),
    }
}

pub fn config_set() -> ConfigSet {
    ConfigSet {
        plugins: vec![PluginConfig {
            name: "logtail".into(),
            version: "1.2.3".into(),
            sha256: "ab".repeat(32),
            path: "/opt/herd/plugins/logtail".into(),
            source: "https://example.invalid/logtail".into(),
            args: vec!["--follow".into(), "/var/log/syslog".into()],
            env: map(&[("RUST_LOG", "info")]),
            restart: Some(RestartPolicy {
                min_backoff_ms: 500,
                max_backoff_ms: 30_000,
                max_restarts: 7,
                period_secs: 120,
            }),
        }],
    }
}

pub fn hello() -> Hello {
    Hello {
        protocol_version: herd_codec::PROTOCOL_VERSION,
        agent_id: "host-01".into(),
        token: "s3cret".into(),
        product: "herd-agent".into(),
        version: "0.1.0".into(),
        hostname: "host-01.example".into(),
        intranet_ipv4: vec!["10.0.0.5".into(), "10.0.1.5".into()],
        intranet_ipv6: vec!["fd00::5".into()],
        extranet_ipv4: vec!["203.0.113.5".into()],
        extranet_ipv6: vec!["2001:db8::5".into()],
        os: "linux".into(),
        platform: "debian".into(),
        platform_version: "13".into(),
        kernel_version: "6.12.0".into(),
        arch: "x86_64".into(),
        cpu_model: "Example CPU @ 3.0GHz".into(),
        cpu_cores: 2,
        memory_bytes: 24 << 30,
        boot_time: 1_763_800_000,
        plugins: vec![PluginStatus {
            name: "sysmetrics".into(),
            version: "0.1.0".into(),
            pid: 4242,
            state: "running".into(),
        }],
        last_acked_seq: 41,
        csr: vec![0x30, 0x82, 0x01, 0x02].into(),
    }
}

pub fn agent_messages() -> Vec<AgentMessage> {
    vec![
        hello().into(),
        Batch {
            seq: 42,
            records: vec![record(1000), record(2000), Record::default()],
        }
        .into(),
        task_result().into(),
        Pong { nonce: u64::MAX }.into(),
        CertificateRequest {
            csr: vec![0x30, 0x01].into(),
        }
        .into(),
    ]
}

pub fn hub_messages() -> Vec<HubMessage> {
    vec![
        Welcome {
            ok: true,
            agent_id: "host-01".into(),
            message: "welcome".into(),
            redirect: vec!["hub-2:7000".into(), "hub-3:7000".into()],
            heartbeat_interval_secs: 30,
            config: Some(config_set()),
            hub_id: "hub-1".into(),
            max_record_bytes: 1_047_000,
            max_frame_bytes: 4 * 1024 * 1024,
            ping_interval_ms: 15_000,
            ping_misses: 3,
            certificate: vec![0x30, 0x82].into(),
        }
        .into(),
        Ack { seq: 42 }.into(),
        Command {
            task: Some(task()),
            config: Some(config_set()),
        }
        .into(),
        Ping { nonce: 7 }.into(),
        Goodbye {
            reason: CloseReason::Superseded as i32,
            message: "another connection took over".into(),
        }
        .into(),
        IssuedCertificate {
            certificate: vec![0x30, 0x82, 0x05].into(),
            error: String::new(),
        }
        .into(),
    ]
}

pub fn plugin_commands() -> Vec<PluginCommand> {
    vec![
        task().into(),
        herd_codec::proto::Durable { through: 42 }.into(),
    ]
}

pub fn plugin_messages() -> Vec<PluginMessage> {
    vec![record(2000).into(), task_result().into()]
}

pub fn envelope() -> Envelope {
    Envelope {
        agent_id: "host-01".into(),
        hostname: "host-01.example".into(),
        intranet_ipv4: vec!["10.0.0.5".into()],
        intranet_ipv6: vec!["fd00::5".into()],
        agent_version: "0.1.0".into(),
        received_at_ms: 1_763_884_800_456,
        seq: 42,
        index: 1,
        record: Some(record(2000)),
        hub_id: "hub-1".into(),
    }
}
