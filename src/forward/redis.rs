//! The Redis Streams producer (OpenReplay's open-source edition).
//!
//! In: a batch of messages from the forwarder thread. Out: one pipeline of
//! `XADD <topic> <trim> * sessionID <decimal> value <bytes>` per batch, on one connection
//! (`redis` crate, synchronous: the forwarder owns its thread, and a pipeline of a thousand
//! XADDs is one round trip). Trim: `MINID ~ <now - ttl>-0` when `REDIS_STREAMS_TTL_SEC` > 0,
//! else `MAXLEN ~ REDIS_STREAMS_MAX_LEN`. The entry id is always `*`: OpenReplay's consumers read
//! the batch's time from it. A failed pipeline drops the connection; the next attempt connects
//! again (the forwarder backs off between attempts). `rediss://` connects over TLS.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Message, ProduceError, Producer, Topics};

/// Connect, read and write timeouts: a dead server is noticed within this.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` URL (OpenReplay's `REDIS_STRING`; without a scheme,
    /// `redis://` is assumed).
    pub url: String,
    /// `REDIS_STREAMS_TTL_SEC`: entries older than this are trimmed (0: trim by length).
    pub ttl: Duration,
    /// `REDIS_STREAMS_MAX_LEN`: used when `ttl` is 0.
    pub max_len: u64,
}

impl RedisConfig {
    /// OpenReplay's stock deployment: no TTL, 10,000 entries a stream.
    pub const DEFAULT_MAX_LEN: u64 = 10_000;

    pub fn url_with_scheme(&self) -> String {
        if self.url.contains("://") {
            self.url.clone()
        } else {
            format!("redis://{}", self.url)
        }
    }
}

pub struct RedisProducer {
    client: redis::Client,
    conn: Option<redis::Connection>,
    config: RedisConfig,
    topics: Topics,
}

impl RedisProducer {
    /// Checks the URL; connects at the first send (the node starts while Redis is down).
    pub fn new(config: RedisConfig, topics: Topics) -> Result<RedisProducer, String> {
        let client = redis::Client::open(config.url_with_scheme())
            .map_err(|e| format!("REDIS_STRING: {e}"))?;
        Ok(RedisProducer {
            client,
            conn: None,
            config,
            topics,
        })
    }

    fn connection(&mut self) -> redis::RedisResult<&mut redis::Connection> {
        if self.conn.is_none() {
            let conn = self.client.get_connection_with_timeout(IO_TIMEOUT)?;
            conn.set_read_timeout(Some(IO_TIMEOUT))?;
            conn.set_write_timeout(Some(IO_TIMEOUT))?;
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }
}

impl Producer for RedisProducer {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn send(&mut self, messages: &[Message]) -> Result<(), ProduceError> {
        let mut pipe = redis::pipe();
        let min_id = (!self.config.ttl.is_zero()).then(|| {
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            format!(
                "{}-0",
                now_ms.saturating_sub(self.config.ttl.as_millis() as u64)
            )
        });
        for m in messages {
            let cmd = pipe.cmd("XADD").arg(self.topics.name(m.topic));
            match &min_id {
                Some(min_id) => cmd.arg("MINID").arg("~").arg(min_id),
                None => cmd.arg("MAXLEN").arg("~").arg(self.config.max_len),
            };
            cmd.arg("*")
                .arg("sessionID")
                .arg(m.session_id.to_string())
                .arg("value")
                .arg(&m.value[..]);
        }
        let result = self
            .connection()
            .and_then(|conn| pipe.query::<Vec<redis::Value>>(conn));
        match result {
            Ok(ids) if ids.len() == messages.len() => Ok(()),
            Ok(ids) => {
                self.conn = None;
                Err(ProduceError::Unavailable(format!(
                    "redis answered {} of {} XADDs",
                    ids.len(),
                    messages.len()
                )))
            }
            Err(e) => {
                self.conn = None;
                Err(ProduceError::Unavailable(format!("redis: {e}")))
            }
        }
    }
}
