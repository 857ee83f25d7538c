//! [`WireMessage`] for every protocol message, and `From` conversions that
//! wrap a message in the `oneof kind` wrapper it travels in.

use crate::frame::WireMessage;
use crate::proto::{
    Ack, AgentMessage, Batch, CertificateRequest, Command, ConfigSet, Durable, Envelope,
    EnvelopeBatch, Goodbye, Hello, HubMessage, IssuedCertificate, Ping, PluginCommand,
    PluginConfig, PluginMessage, PluginStatus, Pong, Record, RestartPolicy, Task, TaskResult,
    Welcome, agent_message, hub_message, plugin_command, plugin_message,
};

macro_rules! wire_messages {
    ($($message:ident),* $(,)?) => {$(
        impl WireMessage for $message {
            const NAME: &'static str = concat!("herd.v1.", stringify!($message));
        }
    )*};
}

wire_messages!(
    Record,
    Task,
    TaskResult,
    RestartPolicy,
    PluginConfig,
    ConfigSet,
    PluginStatus,
    Hello,
    Batch,
    Pong,
    Welcome,
    Ack,
    Command,
    Ping,
    Goodbye,
    Envelope,
    EnvelopeBatch,
    Durable,
    CertificateRequest,
    IssuedCertificate,
);

macro_rules! wrappers {
    ($($wrapper:ident => $module:ident { $($variant:ident($message:ident)),* $(,)? })*) => {$(
        impl WireMessage for $wrapper {
            const NAME: &'static str = concat!("herd.v1.", stringify!($wrapper));

            fn has_kind(&self) -> bool {
                self.kind.is_some()
            }
        }

        $(
            impl From<$message> for $wrapper {
                fn from(message: $message) -> Self {
                    Self { kind: Some($module::Kind::$variant(message)) }
                }
            }
        )*
    )*};
}

wrappers! {
    AgentMessage => agent_message {
        Hello(Hello),
        Batch(Batch),
        TaskResult(TaskResult),
        Pong(Pong),
        CertificateRequest(CertificateRequest),
    }
    HubMessage => hub_message {
        Welcome(Welcome),
        Ack(Ack),
        Command(Command),
        Ping(Ping),
        Goodbye(Goodbye),
        IssuedCertificate(IssuedCertificate),
    }
    PluginCommand => plugin_command {
        Task(Task),
        Durable(Durable),
    }
    PluginMessage => plugin_message {
        Record(Record),
        TaskResult(TaskResult),
    }
}
