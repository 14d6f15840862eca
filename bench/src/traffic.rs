//! Request bodies the way tracker 19.x sends them, generated once before a run starts.
//!
//! In: the real batches captured in `tests/fixtures/tracker-19.0.1/` (compiled in) and a seed.
//! Out: a [`Corpus`] of valid web batches (BatchMetadata, then sized messages) with their
//! `DataType`, wire encoding (gzip above the compression threshold, as the tracker does) and
//! `split` offset for `visual` batches, plus fixed-size batches for the wrk-aligned modes.
//! Runs on the main thread before any connection opens; the load threads only read it.

use std::io::Write;

use anyhow::{bail, Context};
use flate2::{write::GzEncoder, Compression};
use rand::{rngs::StdRng, Rng, SeedableRng};

const FIXTURES: [(&str, DataType, &[u8]); 5] = [
    (
        "pv2-batch4-player",
        DataType::Player,
        include_bytes!("../../tests/fixtures/tracker-19.0.1/pv2-batch4-player.gunzipped.bin"),
    ),
    (
        "pv1-batch1-player",
        DataType::Player,
        include_bytes!("../../tests/fixtures/tracker-19.0.1/pv1-batch1-player.gunzipped.bin"),
    ),
    (
        "pv2-batch2-devtools",
        DataType::Devtools,
        include_bytes!("../../tests/fixtures/tracker-19.0.1/pv2-batch2-devtools.bin"),
    ),
    (
        "pv2-batch3-analytics",
        DataType::Analytics,
        include_bytes!("../../tests/fixtures/tracker-19.0.1/pv2-batch3-analytics.bin"),
    ),
    (
        "pv2-batch1-visual",
        DataType::Visual,
        include_bytes!("../../tests/fixtures/tracker-19.0.1/pv2-batch1-visual-split855.bin"),
    ),
];
/// Where the captured visual batch's assets half begins (its `split` query parameter).
const FIXTURE_VISUAL_SPLIT: usize = 855;

/// The start request body tracker 19.0.1 sent, with the project key left for us to fill in.
pub const START_REQUEST_TEMPLATE: &str =
    include_str!("../../tests/fixtures/tracker-19.0.1/start-request.json");

/// A browser the server's user-agent parser recognises (start refuses unknown browsers).
pub const BROWSER_USER_AGENT: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 \
     (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

const MSG_BATCH_METADATA: u64 = 81;
const MSG_PARTITIONED: u64 = 82;
/// SetNodeData: (id uint, data string). Used to pad a batch to an exact size with a message a
/// player could decode.
const MSG_SET_NODE_DATA: u64 = 14;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataType {
    Player,
    Assets,
    Devtools,
    Analytics,
    Visual,
}

impl DataType {
    pub fn header_value(self) -> &'static str {
        match self {
            DataType::Player => "player",
            DataType::Assets => "assets",
            DataType::Devtools => "devtools",
            DataType::Analytics => "analytics",
            DataType::Visual => "visual",
        }
    }

    /// The BatchMetadata version protocolVersion 2 gives each kind of batch.
    fn meta_version(self) -> u64 {
        match self {
            DataType::Player | DataType::Visual => 2,
            DataType::Assets => 3,
            DataType::Devtools => 4,
            DataType::Analytics => 5,
        }
    }
}

/// One request body, ready to send.
#[derive(Clone, Debug)]
pub struct Batch {
    pub data_type: DataType,
    /// The body as it goes on the wire (gzip data when `gzip`).
    pub wire: Vec<u8>,
    pub decoded_len: usize,
    pub gzip: bool,
    /// For `visual`: where the assets batch starts in the decoded body.
    pub split: Option<usize>,
}

/// The realistic mix: a pool of first (`visual`) batches and a pool of the batches after them.
pub struct Corpus {
    pub visual: Vec<Batch>,
    pub rest: Vec<Batch>,
}

/// Sized messages of the captured batches, by the DataType they travelled under.
struct MessagePool {
    player: Vec<Vec<u8>>,
    assets: Vec<Vec<u8>>,
    devtools: Vec<Vec<u8>>,
    analytics: Vec<Vec<u8>>,
}

impl MessagePool {
    fn from_fixtures() -> anyhow::Result<MessagePool> {
        let mut pool = MessagePool {
            player: Vec::new(),
            assets: Vec::new(),
            devtools: Vec::new(),
            analytics: Vec::new(),
        };
        for (name, data_type, bytes) in FIXTURES {
            let parse = |b: &[u8]| split_messages(b).with_context(|| format!("fixture {name}"));
            match data_type {
                DataType::Player => pool.player.extend(parse(bytes)?),
                DataType::Devtools => pool.devtools.extend(parse(bytes)?),
                DataType::Analytics => pool.analytics.extend(parse(bytes)?),
                DataType::Assets => pool.assets.extend(parse(bytes)?),
                DataType::Visual => {
                    let (player, assets) = bytes.split_at(FIXTURE_VISUAL_SPLIT);
                    pool.player.extend(parse(player)?);
                    pool.assets.extend(parse(assets)?);
                }
            }
        }
        Ok(pool)
    }

    fn of(&self, data_type: DataType) -> &[Vec<u8>] {
        match data_type {
            DataType::Player | DataType::Visual => &self.player,
            DataType::Assets => &self.assets,
            DataType::Devtools => &self.devtools,
            DataType::Analytics => &self.analytics,
        }
    }
}

/// The messages of a batch after its BatchMetadata, each with its type and size prefix.
fn split_messages(batch: &[u8]) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut at = 0;
    if read_uint(batch, &mut at)? != MSG_BATCH_METADATA {
        bail!("batch does not start with BatchMetadata");
    }
    for _ in 0..4 {
        read_uint(batch, &mut at)?; // version, pageNo, firstIndex, timestamp
    }
    let url_len = usize::try_from(read_uint(batch, &mut at)?)?;
    at = at.checked_add(url_len).context("url length")?;
    let mut out = Vec::new();
    while at < batch.len() {
        let start = at;
        let ty = read_uint(batch, &mut at)?;
        if ty == MSG_PARTITIONED {
            read_uint(batch, &mut at)?;
            read_uint(batch, &mut at)?;
            continue; // framing only; a synthetic batch has no partitions
        }
        let size = batch.get(at..at + 3).context("truncated size")?;
        let size = usize::from(size[0]) | usize::from(size[1]) << 8 | usize::from(size[2]) << 16;
        at = at + 3 + size;
        if at > batch.len() {
            bail!("message at {start} runs past the end");
        }
        out.push(batch[start..at].to_vec());
    }
    Ok(out)
}

fn read_uint(buf: &[u8], at: &mut usize) -> anyhow::Result<u64> {
    let mut v = 0u64;
    for shift in (0..70).step_by(7) {
        let b = *buf.get(*at).context("truncated varint")?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    bail!("varint too long")
}

fn put_uint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn uint_len(v: u64) -> usize {
    (64 - v.max(1).leading_zeros() as usize).div_ceil(7)
}

fn put_batch_metadata(out: &mut Vec<u8>, version: u64, first_index: u64) {
    put_uint(out, MSG_BATCH_METADATA);
    put_uint(out, version);
    put_uint(out, 0); // pageNo
    put_uint(out, first_index);
    put_uint(out, 1_795_771_262_812 << 1); // timestamp, zig-zag
    let url = b"https://shop.example.test/catalogue?page=2";
    put_uint(out, url.len() as u64);
    out.extend_from_slice(url);
}

/// A SetNodeData message of exactly `total` bytes (at least 6), text chosen by `rng`.
fn put_filler(out: &mut Vec<u8>, total: usize, rng: &mut StdRng) {
    let body = total - 4;
    // id + length varint + text = body exactly; the id takes one or two bytes to absorb a
    // length varint that grows by one byte at a 128 boundary.
    let (id, text) = (0..body)
        .rev()
        .find_map(
            |text| match body.checked_sub(uint_len(text as u64) + text)? {
                1 => Some((1u64, text)),
                2 => Some((200u64, text)),
                _ => None,
            },
        )
        .expect("a split exists for every body of 2 bytes or more");
    put_uint(out, MSG_SET_NODE_DATA);
    out.extend_from_slice(&(body as u32).to_le_bytes()[..3]);
    put_uint(out, id);
    put_uint(out, text as u64);
    out.extend((0..text).map(|_| random_text_byte(rng)));
}

fn random_text_byte(rng: &mut StdRng) -> u8 {
    const TEXT: &[u8] = b"abcdefghijklmnopqrstuvwxyz  ABCDEFGHIJ0123456789-_./\"=<>";
    TEXT[rng.random_range(0..TEXT.len())]
}

/// A valid batch of exactly `size` decoded bytes made of real messages of `data_type`.
/// Each copied message has a share of its bytes replaced by text, so that a batch compresses
/// about as well as a real one (4-6x) rather than as a repetition of a few dozen messages.
fn build_batch(pool: &MessagePool, data_type: DataType, size: usize, rng: &mut StdRng) -> Vec<u8> {
    let mut out = Vec::with_capacity(size);
    put_batch_metadata(
        &mut out,
        data_type.meta_version(),
        rng.random_range(0..10_000),
    );
    let messages = pool.of(data_type);
    const MIN_FILLER: usize = 8;
    loop {
        let remaining = size.saturating_sub(out.len());
        let msg = &messages[rng.random_range(0..messages.len())];
        if remaining < msg.len() + MIN_FILLER {
            if remaining >= MIN_FILLER {
                put_filler(&mut out, remaining, rng);
            }
            break;
        }
        let at = out.len();
        out.extend_from_slice(msg);
        // Type (1-2 bytes) and size (3) stay; part of the body becomes text.
        for b in &mut out[at + 5.min(msg.len())..] {
            if rng.random_ratio(1, 16) {
                *b = random_text_byte(rng);
            }
        }
    }
    out
}

/// An exactly `size`-byte player batch (BatchMetadata version 2), for the fixed-body modes and
/// wrk's body files. `size` must leave room for the metadata and one filler message.
pub fn fixed_batch(size: usize, seed: u64) -> anyhow::Result<Vec<u8>> {
    if size < 128 {
        bail!("a fixed body must be at least 128 bytes");
    }
    let pool = MessagePool::from_fixtures()?;
    let body = build_batch(
        &pool,
        DataType::Player,
        size,
        &mut StdRng::seed_from_u64(seed),
    );
    debug_assert_eq!(body.len(), size);
    Ok(body)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::with_capacity(data.len() / 3), Compression::default());
    enc.write_all(data).expect("writing to a Vec cannot fail");
    enc.finish().expect("writing to a Vec cannot fail")
}

/// Decoded sizes the tracker's batches have: mostly 1-20 KB, a tail to its 200,000-byte fill
/// limit. Log-uniform inside each band, because small batches dominate a quiet page.
fn batch_size(data_type: DataType, rng: &mut StdRng) -> usize {
    let log_uniform = |rng: &mut StdRng, lo: f64, hi: f64| -> usize {
        (lo.ln() + rng.random::<f64>() * (hi.ln() - lo.ln())).exp() as usize
    };
    match data_type {
        DataType::Player | DataType::Visual => match rng.random_range(0..100) {
            0..85 => log_uniform(rng, 1_000.0, 20_000.0),
            85..97 => log_uniform(rng, 20_000.0, 80_000.0),
            _ => log_uniform(rng, 80_000.0, 200_000.0),
        },
        DataType::Assets => log_uniform(rng, 1_000.0, 40_000.0),
        DataType::Devtools => log_uniform(rng, 300.0, 20_000.0),
        DataType::Analytics => log_uniform(rng, 200.0, 4_000.0),
    }
}

/// After the first `visual` batch the tracker sends player, devtools, analytics (and, when the
/// page loads styles or fonts, assets) batches; these weights follow the captured run.
fn next_data_type(rng: &mut StdRng) -> DataType {
    match rng.random_range(0..100) {
        0..45 => DataType::Player,
        45..70 => DataType::Devtools,
        70..90 => DataType::Analytics,
        _ => DataType::Assets,
    }
}

impl Corpus {
    /// `count` batches after the first, `count / 16 + 1` first batches; gzip above
    /// `compression_threshold` decoded bytes (the start answer's value).
    pub fn generate(
        count: usize,
        compression_threshold: usize,
        seed: u64,
    ) -> anyhow::Result<Corpus> {
        let pool = MessagePool::from_fixtures()?;
        let mut rng = StdRng::seed_from_u64(seed);
        let encode = |data_type, decoded: Vec<u8>, split| {
            let gzip_it = decoded.len() > compression_threshold;
            Batch {
                data_type,
                decoded_len: decoded.len(),
                wire: if gzip_it { gzip(&decoded) } else { decoded },
                gzip: gzip_it,
                split,
            }
        };
        let visual = (0..count / 16 + 1)
            .map(|_| {
                let player_len = batch_size(DataType::Player, &mut rng).min(60_000);
                let mut body = build_batch(&pool, DataType::Player, player_len, &mut rng);
                let split = body.len();
                let assets_len = batch_size(DataType::Assets, &mut rng);
                body.extend(build_batch(&pool, DataType::Assets, assets_len, &mut rng));
                encode(DataType::Visual, body, Some(split))
            })
            .collect();
        let rest = (0..count)
            .map(|_| {
                let data_type = next_data_type(&mut rng);
                let size = batch_size(data_type, &mut rng);
                encode(
                    data_type,
                    build_batch(&pool, data_type, size, &mut rng),
                    None,
                )
            })
            .collect();
        Ok(Corpus { visual, rest })
    }

    /// One line about what was generated: counts, sizes, gzip share and ratio.
    pub fn describe(&self) -> String {
        let all: Vec<&Batch> = self.visual.iter().chain(&self.rest).collect();
        let wire: usize = all.iter().map(|b| b.wire.len()).sum();
        let decoded: usize = all.iter().map(|b| b.decoded_len).sum();
        let gz: Vec<&&Batch> = all.iter().filter(|b| b.gzip).collect();
        let gz_wire: usize = gz.iter().map(|b| b.wire.len()).sum();
        let gz_decoded: usize = gz.iter().map(|b| b.decoded_len).sum();
        let mut sizes: Vec<usize> = all.iter().map(|b| b.decoded_len).collect();
        sizes.sort_unstable();
        let pct = |p: usize| sizes[(sizes.len() - 1) * p / 100];
        format!(
            "corpus: {} batches ({} visual), decoded p50 {} B p90 {} B max {} B, mean wire {} B, \
             gzip {}/{} (ratio {:.1}x), decoded/wire {:.2}",
            all.len(),
            self.visual.len(),
            pct(50),
            pct(90),
            pct(100),
            wire / all.len(),
            gz.len(),
            all.len(),
            gz_decoded as f64 / gz_wire.max(1) as f64,
            decoded as f64 / wire.max(1) as f64,
        )
    }
}

/// The tracker's start request with our project key and the current time.
pub fn start_body(project_key: &str, now_ms: u64) -> String {
    let mut v: serde_json::Value =
        serde_json::from_str(START_REQUEST_TEMPLATE).expect("the fixture is valid JSON");
    v["projectKey"] = project_key.into();
    v["timestamp"] = now_ms.into();
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Walks a batch's framing the way the server does: BatchMetadata, then sized messages
    /// to exactly the end.
    fn messages_in(batch: &[u8]) -> usize {
        split_messages(batch).expect("valid batch").len()
    }

    #[test]
    fn fixed_batches_have_the_exact_size_and_valid_framing() {
        for size in [128, 129, 130, 200, 1024, 1025, 8 * 1024, 64 * 1024, 200_000] {
            let b = fixed_batch(size, 7).unwrap();
            assert_eq!(b.len(), size, "size {size}");
            assert!(messages_in(&b) >= 1, "size {size}");
        }
    }

    #[test]
    fn filler_messages_are_exact_for_every_small_size() {
        let mut rng = StdRng::seed_from_u64(1);
        for total in 6..400 {
            let mut out = Vec::new();
            put_filler(&mut out, total, &mut rng);
            assert_eq!(out.len(), total);
            let size = usize::from(out[1]) | usize::from(out[2]) << 8;
            assert_eq!(size + 4, total);
        }
    }

    #[test]
    fn corpus_batches_are_valid_and_gzip_above_the_threshold() {
        let c = Corpus::generate(200, 20_000, 3).unwrap();
        for b in c.visual.iter().chain(&c.rest) {
            let decoded = if b.gzip {
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(&b.wire[..])
                    .read_to_end(&mut out)
                    .unwrap();
                out
            } else {
                b.wire.clone()
            };
            assert_eq!(decoded.len(), b.decoded_len);
            assert_eq!(b.gzip, b.decoded_len > 20_000);
            match b.split {
                Some(split) => {
                    assert!(split > 0 && split < decoded.len());
                    messages_in(&decoded[..split]);
                    messages_in(&decoded[split..]);
                }
                None => {
                    messages_in(&decoded);
                }
            }
        }
        let gz: Vec<_> = c.rest.iter().filter(|b| b.gzip).collect();
        assert!(!gz.is_empty(), "some batches are gzip");
        let ratio = gz.iter().map(|b| b.decoded_len).sum::<usize>() as f64
            / gz.iter().map(|b| b.wire.len()).sum::<usize>() as f64;
        assert!((2.5..12.0).contains(&ratio), "gzip ratio {ratio}");
    }

    #[test]
    fn start_body_carries_the_key_and_fits_the_json_limit() {
        let body = start_body("abc123", 42);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["projectKey"], "abc123");
        assert_eq!(v["timestamp"], 42);
        assert!(body.len() <= 1000);
    }
}
