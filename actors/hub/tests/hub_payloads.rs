//! Every JSON payload the hub publishes (and `GET /agents`) against its
//! documentation in docs/protocol.md: a real hub on a real nats-server
//! publishes each one, and the test checks it against the field table and the
//! example the docs give for it (the fenced block after
//! `<!-- payload: NAME -->`). Adding, removing or renaming a field, or
//! changing its JSON type, on either side without the other fails here.

mod hub_support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;

use base64::Engine as _;
use futures::StreamExt;
use herd_codec::data_type;
use herd_codec::proto::hub_message::Kind;
use herd_codec::proto::{Batch, Hello, PluginStatus, Record, Task, TaskResult, TaskStatus};
use herd_hub::TASK_RESULTS_SUBJECT;
use hub_support::{ScriptedAgent, get, hub_with, with_admin, within};
use prost::Message as _;
use serde_json::{Map, Value};

const PROTOCOL_MD: &str = include_str!("../../../docs/protocol.md");

/// The payloads with a documented JSON example.
const PAYLOADS: [&str; 5] = ["presence", "heartbeat", "task_results", "loss", "agents"];

/// A field type of the docs' type table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    String,
    Integer,
    Base64,
    StringMap,
    StringMapMap,
}

/// A field's documented type: a shape, and whether `null` is allowed instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FieldType {
    shape: Shape,
    nullable: bool,
}

/// The type names the docs define (their "type | JSON" table), each parsed.
const TYPE_NAMES: [(&str, FieldType); 6] = [
    ("string", FieldType::of(Shape::String)),
    ("integer", FieldType::of(Shape::Integer)),
    (
        "integer or null",
        FieldType {
            shape: Shape::Integer,
            nullable: true,
        },
    ),
    ("string (base64)", FieldType::of(Shape::Base64)),
    ("object (string → string)", FieldType::of(Shape::StringMap)),
    (
        "object (string → object (string → string))",
        FieldType::of(Shape::StringMapMap),
    ),
];

impl FieldType {
    const fn of(shape: Shape) -> Self {
        Self {
            shape,
            nullable: false,
        }
    }

    fn parse(name: &str) -> Option<Self> {
        TYPE_NAMES
            .iter()
            .find(|(known, _)| *known == name)
            .map(|(_, field_type)| *field_type)
    }

    /// Whether `value` is of this type; the reason when not.
    fn check(self, value: &Value) -> Result<(), String> {
        if value.is_null() {
            return if self.nullable {
                Ok(())
            } else {
                Err("null, and the docs do not say `or null`".into())
            };
        }
        let ok = match self.shape {
            Shape::String => value.is_string(),
            Shape::Integer => value.is_i64() || value.is_u64(),
            Shape::Base64 => value.as_str().is_some_and(|text| {
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .is_ok()
            }),
            Shape::StringMap => value
                .as_object()
                .is_some_and(|map| map.values().all(Value::is_string)),
            Shape::StringMapMap => value.as_object().is_some_and(|map| {
                map.values()
                    .all(|inner| FieldType::of(Shape::StringMap).check(inner).is_ok())
            }),
        };
        if ok {
            Ok(())
        } else {
            Err(format!("{value} is not a {:?}", self.shape))
        }
    }
}

/// What docs/protocol.md says about one payload.
#[derive(Debug)]
struct Documented {
    name: String,
    /// The `Subject:` line of its subsection, if it has one.
    subject: Option<String>,
    /// Its field table: name and type, in order.
    fields: Vec<(String, FieldType)>,
    /// Its example.
    example: Value,
}

/// The cells of a markdown table row, trimmed.
fn cells(line: &str) -> Vec<&str> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    inner.split('|').map(str::trim).collect()
}

/// `` `x` `` as `x`.
fn unquote(cell: &str) -> &str {
    cell.trim_matches('`')
}

/// The rows after the header `| HEADER... |` among `lines`, header and rule excluded.
fn table<'a>(lines: &[&'a str], header: &[&str]) -> Option<Vec<Vec<&'a str>>> {
    let start = lines
        .iter()
        .position(|line| line.starts_with('|') && cells(line) == header)?;
    Some(
        lines[start + 2..]
            .iter()
            .take_while(|line| line.starts_with('|'))
            .map(|line| cells(line))
            .collect(),
    )
}

/// The names of every payload marker in the docs, in order.
fn markers() -> Vec<String> {
    PROTOCOL_MD
        .lines()
        .filter_map(|line| {
            line.trim()
                .strip_prefix("<!-- payload: ")?
                .strip_suffix(" -->")
                .map(str::to_owned)
        })
        .collect()
}

/// The documentation of payload `name`: the subsection around its marker
/// (from the heading before it to the next heading), its field table, its
/// `Subject:` line and the JSON block right after the marker.
fn documented(name: &str) -> Documented {
    let lines: Vec<&str> = PROTOCOL_MD.lines().collect();
    let marker = format!("<!-- payload: {name} -->");
    let at = lines
        .iter()
        .position(|line| line.trim() == marker)
        .unwrap_or_else(|| panic!("docs/protocol.md has no {marker}"));
    let start = lines[..at]
        .iter()
        .rposition(|line| line.starts_with('#'))
        .expect("a heading before the marker");
    let end = lines[at..]
        .iter()
        .position(|line| line.starts_with('#'))
        .map_or(lines.len(), |offset| at + offset);
    let section = &lines[start..end];

    let fields: Vec<(String, FieldType)> = table(section, &["field", "type", "meaning"])
        .unwrap_or_else(|| panic!("payload {name}: no `| field | type | meaning |` table"))
        .into_iter()
        .map(|row| {
            let field = unquote(row[0]).to_owned();
            let type_name = unquote(row[1]);
            let field_type = FieldType::parse(type_name).unwrap_or_else(|| {
                panic!("payload {name}, field {field}: type {type_name:?} is not in the type table")
            });
            (field, field_type)
        })
        .collect();
    let names: BTreeSet<&str> = fields.iter().map(|(field, _)| field.as_str()).collect();
    assert_eq!(names.len(), fields.len(), "payload {name}: a field twice");

    let subject = section.iter().find_map(|line| {
        let rest = line.strip_prefix("Subject: `")?;
        Some(rest[..rest.find('`')?].to_owned())
    });

    assert_eq!(
        lines.get(at + 1).map(|line| line.trim()),
        Some("```json"),
        "payload {name}: the marker must be followed by a ```json block"
    );
    let block: Vec<&str> = lines[at + 2..]
        .iter()
        .take_while(|line| line.trim() != "```")
        .copied()
        .collect();
    let example = serde_json::from_str(&block.join("\n"))
        .unwrap_or_else(|error| panic!("payload {name}: the example is not JSON: {error}"));
    Documented {
        name: name.to_owned(),
        subject,
        fields,
        example,
    }
}

impl Documented {
    /// Checks one object against the field table: exactly its keys, each of
    /// its type.
    fn check_object<'v>(&self, what: &str, value: &'v Value) -> &'v Map<String, Value> {
        let name = &self.name;
        let object = value
            .as_object()
            .unwrap_or_else(|| panic!("{name}: {what} is not an object: {value}"));
        let documented: BTreeSet<&str> = self.fields.iter().map(|(field, _)| &**field).collect();
        let present: BTreeSet<&str> = object.keys().map(String::as_str).collect();
        assert!(
            documented == present,
            "{name}: {what} has fields the docs do not: {:?}; the docs have fields it does not: {:?}\n{value}",
            present.difference(&documented).collect::<Vec<_>>(),
            documented.difference(&present).collect::<Vec<_>>(),
        );
        for (field, field_type) in &self.fields {
            if let Err(why) = field_type.check(&object[field]) {
                panic!("{name}: field {field} of {what}: {why}\n{value}");
            }
        }
        object
    }

    /// Checks a payload against the docs: an object like the example, or, if
    /// the example is an array, an array (possibly empty) of such objects.
    /// Returns the objects.
    fn check<'v>(&self, what: &str, value: &'v Value) -> Vec<&'v Map<String, Value>> {
        match &self.example {
            Value::Array(_) => value
                .as_array()
                .unwrap_or_else(|| panic!("{}: {what} is not an array: {value}", self.name))
                .iter()
                .enumerate()
                .map(|(index, element)| self.check_object(&format!("{what}[{index}]"), element))
                .collect(),
            _ => vec![self.check_object(what, value)],
        }
    }

    /// Checks one published message: its subject (the documented one with
    /// `<agent_id>` filled in) and its payload, which must be JSON.
    fn check_message(&self, message: &async_nats::Message, agent_id: &str) -> Value {
        let subject = self
            .subject
            .as_deref()
            .unwrap_or_else(|| panic!("{}: no `Subject:` line", self.name));
        assert_eq!(
            &*message.subject,
            subject.replace("<agent_id>", agent_id),
            "{}: subject",
            self.name
        );
        let value: Value = serde_json::from_slice(&message.payload).unwrap_or_else(|error| {
            panic!(
                "{}: not JSON ({error}): {:?}",
                self.name,
                String::from_utf8_lossy(&message.payload)
            )
        });
        self.check("the published payload", &value);
        value
    }
}

#[test]
fn the_docs_give_each_payload_a_table_and_an_example_that_agree() {
    assert_eq!(
        markers(),
        PAYLOADS,
        "the payload markers in docs/protocol.md"
    );
    let lines: Vec<&str> = PROTOCOL_MD.lines().collect();
    let type_table: Vec<&str> = table(&lines, &["type", "JSON"])
        .expect("the type table")
        .into_iter()
        .map(|row| unquote(row[0]))
        .collect();
    let known: Vec<&str> = TYPE_NAMES.iter().map(|(name, _)| *name).collect();
    assert_eq!(type_table, known, "the docs' type table and this test's");

    for name in PAYLOADS {
        let doc = documented(name);
        let objects = doc.check("the example", &doc.example);
        assert!(!objects.is_empty(), "{name}: the example array is empty");
    }
    let subjects: Vec<Option<String>> = PAYLOADS
        .iter()
        .map(|name| documented(name).subject)
        .collect();
    assert_eq!(
        subjects,
        [
            Some("herd.presence.<agent_id>"),
            Some("herd.heartbeat.<agent_id>"),
            Some(TASK_RESULTS_SUBJECT),
            Some("herd.loss.<agent_id>"),
            None,
        ]
        .map(|subject| subject.map(str::to_owned))
    );
    // Nullable fields are shown both ways across the examples, as the
    // published payloads show them.
    let heartbeat = documented("heartbeat").example;
    let agents = documented("agents").example;
    assert!(heartbeat["last_heartbeat_ms"].is_i64());
    assert!(agents[0]["last_heartbeat_ms"].is_null());
    let base64 = base64::engine::general_purpose::STANDARD;
    let output = documented("task_results").example[0]["output"].clone();
    assert_eq!(
        base64
            .decode(output.as_str().expect("a string"))
            .expect("base64"),
        b"hello from exec\n"
    );
}

/// `GET /agents`, checked against its documentation.
async fn agents(admin: SocketAddr) -> Value {
    let (status, content_type, body) = get(admin, "/agents").await;
    assert_eq!((status, content_type.as_str()), (200, "application/json"));
    let value: Value = serde_json::from_str(&body).expect("/agents is JSON");
    documented("agents").check("GET /agents", &value);
    value
}

fn record(data_type: u32, source: &str, fields: &[(&str, &str)]) -> Record {
    Record {
        data_type,
        source: source.into(),
        fields: fields
            .iter()
            .map(|(key, value)| ((*key).into(), (*value).into()))
            .collect::<HashMap<_, _>>(),
        ..Record::default()
    }
}

#[actix::test]
async fn presence_heartbeats_and_agents_are_as_documented() {
    let state = tempfile::tempdir().expect("state dir");
    let (nats, hub) = hub_with(|config| with_admin(config, state.path())).await;
    let admin = hub.admin_addr().expect("admin enabled");
    let presence_doc = documented("presence");
    let heartbeat_doc = documented("heartbeat");
    let mut presence = hub_support::subscribe(&nats, "herd.presence.docs-1").await;
    let mut heartbeats = hub_support::subscribe(&nats, "herd.heartbeat.docs-1").await;

    let hello = Hello {
        os: "linux".into(),
        platform: "debian".into(),
        platform_version: "13".into(),
        plugins: vec![PluginStatus {
            name: "logtail".into(),
            version: "0.1.0".into(),
            pid: 4243,
            state: "running".into(),
        }],
        ..hub_support::hello("docs-1", "secret")
    };
    let (mut agent, welcome) = ScriptedAgent::handshake(hub.listen_addr(), hello).await;
    assert!(welcome.ok, "{}", welcome.message);
    let message = within("the online event", presence.next())
        .await
        .expect("open");
    let online = presence_doc.check_message(&message, "docs-1");
    assert_eq!(online["agent_id"], "docs-1");
    assert_eq!(online["event"], "online");
    assert_eq!(online["reason"], "");
    assert_eq!(online["hub_id"], hub.hub_id());

    // Before any heartbeat: no last heartbeat (null), the plugins from Hello.
    let before = agents(admin).await;
    assert_eq!(before.as_array().map(Vec::len), Some(1), "{before}");
    let detail = &before[0];
    assert_eq!(detail["agent_id"], "docs-1");
    assert_eq!(detail["hostname"], "host-docs-1");
    assert_eq!(detail["platform"], "linux debian 13");
    assert!(detail["last_heartbeat_ms"].is_null(), "{detail}");
    assert_eq!(detail["heartbeat"], serde_json::json!({}));
    assert_eq!(
        detail["plugins"],
        serde_json::json!({"logtail": {"version": "0.1.0", "pid": "4243", "state": "running"}})
    );

    agent
        .send_acked(Batch {
            seq: 1,
            records: vec![
                record(
                    data_type::AGENT_HEARTBEAT,
                    "agent",
                    &[("cpu", "3.25"), ("load1", "0.42")],
                ),
                record(
                    data_type::PLUGIN_HEARTBEAT,
                    "sysmetrics",
                    &[
                        ("name", "sysmetrics"),
                        ("state", "running"),
                        ("pid", "4242"),
                    ],
                ),
            ],
        })
        .await;
    // One heartbeat message per heartbeat record, each the whole detail.
    let mut published = Vec::new();
    for _ in 0..2 {
        let message = within("a heartbeat", heartbeats.next())
            .await
            .expect("open");
        let detail = heartbeat_doc.check_message(&message, "docs-1");
        assert_eq!(detail["agent_id"], "docs-1");
        assert_eq!(detail["heartbeat"]["cpu"], "3.25", "{detail}");
        assert!(detail["last_heartbeat_ms"].is_i64(), "{detail}");
        published.push(detail);
    }
    let latest = published
        .into_iter()
        .find(|detail| detail["plugins"]["sysmetrics"]["pid"] == "4242")
        .expect("a heartbeat with the plugin heartbeat's fields");
    assert_eq!(latest["plugins"]["logtail"]["state"], "running");

    // `/agents` holds the same objects as `herd.heartbeat`.
    assert_eq!(agents(admin).await, Value::Array(vec![latest]));

    drop(agent);
    let message = within("the offline event", presence.next())
        .await
        .expect("open");
    let offline = presence_doc.check_message(&message, "docs-1");
    assert_eq!(offline["agent_id"], "docs-1");
    assert_eq!(offline["event"], "offline");
    assert_eq!(offline["reason"], "connection closed by the agent");
    assert!(offline["at_ms"].as_i64() >= online["at_ms"].as_i64());
    assert_eq!(agents(admin).await, serde_json::json!([]));
    hub.shutdown().await;
}

#[actix::test]
async fn task_results_are_as_documented_with_output_in_base64() {
    let (nats, hub) = hub_with(|_| {}).await;
    let doc = documented("task_results");
    let client = nats.client().await.expect("client");
    let mut batches = hub_support::subscribe(&nats, TASK_RESULTS_SUBJECT).await;
    let mut agent = ScriptedAgent::online(hub.listen_addr(), "docs-2").await;
    let task = Task {
        id: "t-docs".into(),
        data_type: 2000,
        target: "exec".into(),
        ..Task::default()
    };
    let requester = tokio::spawn(async move {
        let reply = within(
            "the task reply",
            client.request("herd.cmd.docs-2", task.encode_to_vec().into()),
        )
        .await
        .expect("a reply");
        TaskResult::decode(reply.payload).expect("the reply is a protobuf TaskResult")
    });
    assert!(matches!(agent.expect().await, Kind::Command(_)));
    // Not UTF-8, and with the bytes that need `+` and `/` in base64.
    let output = b"\x00\xffout\xfe>?".to_vec();
    let result = TaskResult {
        task_id: "t-docs".into(),
        status: TaskStatus::Ok as i32,
        output: output.clone().into(),
        source: "exec".into(),
        fields: HashMap::from([("exit_code".into(), "0".into())]),
        ..TaskResult::default()
    };
    agent.send(result.clone()).await;
    assert_eq!(
        within("requester", requester).await.expect("joined"),
        result
    );

    let message = within("a task result batch", batches.next())
        .await
        .expect("open");
    let batch = doc.check_message(&message, "docs-2");
    let records = batch.as_array().expect("checked: an array");
    assert_eq!(records.len(), 1, "{batch}");
    let record = &records[0];
    assert_eq!(record["agent_id"], "docs-2");
    assert_eq!(record["task_id"], "t-docs");
    assert_eq!(record["status"], "TASK_STATUS_OK");
    assert_eq!(record["source"], "exec");
    assert_eq!(record["error"], "");
    assert_eq!(record["fields"], serde_json::json!({"exit_code": "0"}));
    let encoded = record["output"].as_str().expect("checked: a string");
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .expect("padded standard base64"),
        output
    );
    assert_eq!(encoded, "AP9vdXT+Pj8=");
    hub.shutdown().await;
}

#[actix::test]
async fn a_loss_event_is_as_documented() {
    let (nats, hub) = hub_with(|_| {}).await;
    let doc = documented("loss");
    let mut losses = hub_support::subscribe(&nats, "herd.loss.>").await;
    let hello = Hello {
        last_acked_seq: 10,
        ..hub_support::hello("docs-3", "secret")
    };
    let (mut agent, welcome) = ScriptedAgent::handshake(hub.listen_addr(), hello).await;
    assert!(welcome.ok, "{}", welcome.message);
    let batch = |seq| Batch {
        seq,
        records: vec![record(2000, "p", &[])],
    };
    agent.send_acked(batch(11)).await;
    // 12 to 14 never come.
    agent.send_acked(batch(15)).await;
    let message = within("the loss event", losses.next()).await.expect("open");
    let event = doc.check_message(&message, "docs-3");
    let fixed: BTreeMap<&str, Value> = [
        "agent_id", "hub_id", "kind", "from_seq", "to_seq", "records", "index", "bytes",
    ]
    .into_iter()
    .map(|field| (field, event[field].clone()))
    .collect();
    assert_eq!(
        fixed,
        BTreeMap::from([
            ("agent_id", "docs-3".into()),
            ("hub_id", hub.hub_id().into()),
            ("kind", "seq_gap".into()),
            ("from_seq", 12.into()),
            ("to_seq", 14.into()),
            ("records", 0.into()),
            ("index", Value::Null),
            ("bytes", Value::Null),
        ])
    );
    hub.shutdown().await;
}
