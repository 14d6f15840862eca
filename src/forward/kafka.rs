//! The Kafka producer (OpenReplay's enterprise edition): its settings always, the producer
//! behind the `kafka` cargo feature (on by default).
//!
//! In: a batch of messages from the forwarder thread. Out: one Kafka record per message, keyed
//! and partitioned exactly as OpenReplay's producer does (key: the session id as 8 bytes
//! little-endian; partition: `sessionID % partitions`, which is `sessionID & 15` for the stock
//! 16), produced by librdkafka (`rdkafka`'s `BaseProducer`, polled on the forwarder's thread).
//! [`Producer::send`] returns once the broker acknowledged every record of the batch (delivery
//! reports); any failed delivery fails the batch, which the forwarder sends again.
//!
//! Idempotent producer (`enable.idempotence`, as OpenReplay's), so librdkafka's own retries
//! never duplicate or reorder; `linger.ms` is short because the forwarder waits for each batch
//! (OpenReplay's 1000 ms would be a second on every batch).

#[cfg(feature = "kafka")]
mod producer;
#[cfg(feature = "kafka")]
pub use producer::KafkaProducer;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaConfig {
    /// `KAFKA_SERVERS`: the bootstrap list.
    pub servers: String,
    /// `KAFKA_USE_SSL`, with `KAFKA_SSL_CA`, `KAFKA_SSL_KEY`, `KAFKA_SSL_CERT` (file paths).
    pub use_ssl: bool,
    pub ssl_ca: Option<String>,
    pub ssl_key: Option<String>,
    pub ssl_cert: Option<String>,
    /// `COMPRESSION_TYPE` (stock `zstd`).
    pub compression: String,
    /// `QUEUE_MESSAGE_SIZE_LIMIT`: librdkafka's `message.max.bytes` (stock 1048576).
    pub message_size_limit: usize,
    /// Partitions of every topic (OpenReplay's are created with 16; `ender` relies on it).
    pub partitions: u32,
}

impl KafkaConfig {
    pub const DEFAULT_MESSAGE_SIZE_LIMIT: usize = 1_048_576;
    pub const DEFAULT_PARTITIONS: u32 = 16;
    pub const DEFAULT_COMPRESSION: &'static str = "zstd";
}
