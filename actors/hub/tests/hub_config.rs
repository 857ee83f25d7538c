//! Desired configuration from KV `herd_config`: in Welcome and pushed on change.

mod hub_support;

use herd_codec::proto::hub_message::Kind;
use herd_codec::proto::{ConfigSet, PluginConfig};
use herd_hub::config_bucket;
use hub_support::{ScriptedAgent, hub_with, within};
use prost::Message as _;

fn names(config: &ConfigSet) -> Vec<(&str, &str)> {
    config
        .plugins
        .iter()
        .map(|plugin| (plugin.name.as_str(), plugin.version.as_str()))
        .collect()
}

async fn pushed(agent: &mut ScriptedAgent) -> ConfigSet {
    match agent.expect().await {
        Kind::Command(command) if command.task.is_none() => command.config.expect("a config"),
        other => panic!("expected Command{{config}}, got {other:?}"),
    }
}

#[actix::test]
async fn config_is_sent_on_connect_and_pushed_on_change() {
    let (nats, hub) = hub_with(|_| {}).await;
    let jetstream = async_nats::jetstream::new(nats.client().await.expect("client"));
    let bucket = within("bucket", config_bucket(&jetstream))
        .await
        .expect("bucket");
    let (mut plain, welcome) =
        ScriptedAgent::handshake(hub.listen_addr(), hub_support::hello("plain", "secret")).await;
    assert_eq!(welcome.config, None, "nothing configured yet");

    // A fleet key in JSON reaches every connected agent.
    let fleet = r#"{"plugins": [{"name": "sysmetrics", "version": "1", "path": "/usr/lib/herd/sysmetrics"}]}"#;
    within("put", bucket.put("fleet", fleet.into()))
        .await
        .expect("put");
    assert_eq!(names(&pushed(&mut plain).await), [("sysmetrics", "1")]);

    // An agent key (protobuf here) adds to and overrides the fleet set for that agent only.
    let own = ConfigSet {
        plugins: vec![
            PluginConfig {
                name: "sysmetrics".into(),
                version: "2".into(),
                ..PluginConfig::default()
            },
            PluginConfig {
                name: "logtail".into(),
                version: "1".into(),
                ..PluginConfig::default()
            },
        ],
    };
    within(
        "put",
        bucket.put("agent.special", own.encode_to_vec().into()),
    )
    .await
    .expect("put");
    let (mut special, welcome) =
        ScriptedAgent::handshake(hub.listen_addr(), hub_support::hello("special", "secret")).await;
    assert!(welcome.ok);
    assert_eq!(
        names(&welcome.config.expect("config in Welcome")),
        [("sysmetrics", "2"), ("logtail", "1")]
    );

    within("delete", bucket.delete("agent.special"))
        .await
        .expect("delete");
    assert_eq!(names(&pushed(&mut special).await), [("sysmetrics", "1")]);

    // A broken value is ignored; the previous set stays.
    within("put", bucket.put("fleet", "{not json".into()))
        .await
        .expect("put");
    let (_late, welcome) =
        ScriptedAgent::handshake(hub.listen_addr(), hub_support::hello("late", "secret")).await;
    assert_eq!(
        names(&welcome.config.expect("config")),
        [("sysmetrics", "1")]
    );
    hub.shutdown().await;
}

#[actix::test]
async fn config_present_before_the_hub_starts_is_in_the_first_welcome() {
    let nats = herd_tests::nats::NatsServer::start().await.expect("nats");
    let jetstream = async_nats::jetstream::new(nats.client().await.expect("client"));
    let bucket = within("bucket", config_bucket(&jetstream))
        .await
        .expect("bucket");
    let fleet = r#"{"plugins": [{"name": "exec", "version": "3"}]}"#;
    within("put", bucket.put("fleet", fleet.into()))
        .await
        .expect("put");
    let mut config = herd_hub::HubConfig::for_tests(nats.url());
    config.tokens = vec!["secret".into()];
    let hub = within("hub", herd_hub::Hub::start(config))
        .await
        .expect("hub");
    let (_agent, welcome) =
        ScriptedAgent::handshake(hub.listen_addr(), hub_support::hello("first", "secret")).await;
    assert_eq!(names(&welcome.config.expect("config")), [("exec", "3")]);
    hub.shutdown().await;
}
