//! The Kafka producer itself: librdkafka through `rdkafka` (see the parent module).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer as _, ProducerContext};
use rdkafka::ClientContext;

use super::KafkaConfig;
use crate::forward::{Message, ProduceError, Producer, Topics};

/// librdkafka gives up on a record after this (`message.timeout.ms`); the batch is then failed
/// and sent again by the forwarder, so an outage is noticed (and logged) within it.
pub const MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes a record takes on the wire beyond its key and value (librdkafka counts them against
/// `message.max.bytes`).
const RECORD_OVERHEAD: usize = 128;

/// Counts the delivery reports of the batch in flight (reports of an earlier, failed batch
/// carry its number and are ignored).
#[derive(Default)]
struct Deliveries {
    batch: AtomicUsize,
    delivered: AtomicUsize,
    failed: AtomicUsize,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, batch: usize) {
        if batch != self.batch.load(Ordering::Relaxed) {
            return;
        }
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.first_error.lock().get_or_insert_with(|| e.to_string());
            }
        }
    }
}

pub struct KafkaProducer {
    producer: BaseProducer<Deliveries>,
    config: KafkaConfig,
    topics: Topics,
    batch: usize,
}

impl KafkaProducer {
    /// Creates the producer (librdkafka connects in the background; the node starts while
    /// the brokers are down).
    pub fn new(config: KafkaConfig, topics: Topics) -> Result<KafkaProducer, String> {
        if config.partitions == 0 {
            return Err("the Kafka partition count must be at least 1".into());
        }
        let producer = client_config(&config)
            .create_with_context(Deliveries::default())
            .map_err(|e| format!("Kafka producer: {e}"))?;
        Ok(KafkaProducer {
            producer,
            config,
            topics,
            batch: 0,
        })
    }
}

impl Producer for KafkaProducer {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn max_value_len(&self) -> Option<usize> {
        Some(
            self.config
                .message_size_limit
                .saturating_sub(8 + RECORD_OVERHEAD),
        )
    }

    fn send(&mut self, messages: &[Message]) -> Result<(), ProduceError> {
        self.batch = self.batch.wrapping_add(1);
        let reports = self.producer.context();
        reports.batch.store(self.batch, Ordering::Relaxed);
        reports.delivered.store(0, Ordering::Relaxed);
        reports.failed.store(0, Ordering::Relaxed);
        *reports.first_error.lock() = None;
        let partitions = u64::from(self.config.partitions);
        for m in messages {
            let key = m.session_id.to_le_bytes();
            let mut record = BaseRecord::with_opaque_to(self.topics.name(m.topic), self.batch)
                .key(&key[..])
                .payload(&m.value[..])
                .partition((m.session_id % partitions) as i32);
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // librdkafka's queue is full: let it send, then try again.
                        record = back;
                        self.producer.poll(Duration::from_millis(10));
                    }
                    Err((e, _)) => {
                        return Err(ProduceError::Unavailable(format!("kafka: {e}")));
                    }
                }
            }
        }
        let deadline = Instant::now() + MESSAGE_TIMEOUT + Duration::from_secs(5);
        let reports = self.producer.context();
        loop {
            let done =
                reports.delivered.load(Ordering::Relaxed) + reports.failed.load(Ordering::Relaxed);
            if done >= messages.len() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(ProduceError::Unavailable(format!(
                    "kafka: {done} of {} deliveries reported in time",
                    messages.len()
                )));
            }
            self.producer.poll(Duration::from_millis(50));
        }
        match reports.failed.load(Ordering::Relaxed) {
            0 => Ok(()),
            failed => Err(ProduceError::Unavailable(format!(
                "kafka: {failed} of {} deliveries failed: {}",
                messages.len(),
                reports
                    .first_error
                    .lock()
                    .as_deref()
                    .unwrap_or("unknown error")
            ))),
        }
    }
}

impl Drop for KafkaProducer {
    fn drop(&mut self) {
        // Everything acknowledged was waited for; what is left is a failed batch's tail.
        let _ = self.producer.flush(Duration::from_secs(1));
    }
}

fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.servers)
        .set("enable.idempotence", "true")
        .set("compression.type", &config.compression)
        .set("message.max.bytes", config.message_size_limit.to_string())
        .set("linger.ms", "5")
        .set(
            "message.timeout.ms",
            MESSAGE_TIMEOUT.as_millis().to_string(),
        );
    if config.use_ssl {
        c.set("security.protocol", "ssl");
        for (key, value) in [
            ("ssl.ca.location", &config.ssl_ca),
            ("ssl.key.location", &config.ssl_key),
            ("ssl.certificate.location", &config.ssl_cert),
        ] {
            if let Some(value) = value {
                c.set(key, value);
            }
        }
    }
    c
}
