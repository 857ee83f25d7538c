//! Examples of using herd as a library and as a platform: embedding the hub
//! framework with an actor of your own, subscribing to records on NATS, sending
//! tasks and configuration from a program, and a plugin written in Python.
