//! Client address -> country, state and city for the start answers (`userCountry`, `userState`,
//! `userCity`) and the SessionStart / MobileSessionStart UserCountry field.
//!
//! Enters: a start request's `X-Forwarded-For` / `X-Real-IP` values and socket peer
//! ([`client_ip`]), then that address ([`GeoDb::lookup`]). Leaves: a [`GeoInfo`], with empty
//! fields for addresses the database does not know. Runs on the worker threads, during start
//! requests only. The database is optional: main opens it once at start-up when configured and
//! shares it read-only with every worker; without it the routes answer with empty geo fields.
//!
//! Lookups follow OpenReplay's Go `geoip` package: the country is the record's ISO 3166 alpha-2
//! `country.iso_code`, the state the English name of the first (largest) subdivision, the city
//! its English name. One difference: the Go service answers "UN" for an unknown country, while
//! [`GeoDb::lookup`] leaves it empty and lets the route pick the placeholder it answers with.
//!
//! The file is read into memory rather than mapped: a GeoLite2 City file is ~60 MB, read once,
//! and this keeps the crate's `unsafe` in the log module.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use maxminddb::geoip2;

/// Where a session's client is, as OpenReplay records it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GeoInfo {
    /// ISO 3166 alpha-2, e.g. "FR"; "" when unknown.
    pub country: String,
    /// First subdivision's English name, e.g. "England"; "" when unknown.
    pub state: String,
    /// English city name, e.g. "London"; "" when unknown.
    pub city: String,
}

impl GeoInfo {
    /// The start messages' UserCountry: `<country>|<state>|<city>`, as OpenReplay packs it for
    /// its `db` service to unpack; an unknown country is `UN` (so no database gives `UN||`).
    pub fn packed(&self) -> String {
        let country = if self.country.is_empty() {
            "UN"
        } else {
            &self.country
        };
        format!("{country}|{}|{}", self.state, self.city)
    }
}

/// Why a GeoIP database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    #[error("cannot read GeoIP database {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a MaxMind DB file: {source}")]
    Invalid {
        path: PathBuf,
        source: maxminddb::MaxMindDbError,
    },
    #[error(
        "{path} is a {database_type:?} database; a GeoIP2/GeoLite2 City or Country one is needed"
    )]
    WrongKind {
        path: PathBuf,
        database_type: String,
    },
}

/// A GeoIP2 / GeoLite2 City or Country database (or a DB-IP Lite one in the same schema),
/// loaded once and shared by all workers (Send + Sync; lookups take `&self`).
pub struct GeoDb {
    reader: maxminddb::Reader<Vec<u8>>,
}

impl std::fmt::Debug for GeoDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoDb")
            .field("database_type", &self.reader.metadata.database_type)
            .field("build_epoch", &self.reader.metadata.build_epoch)
            .finish()
    }
}

/// Database types whose records carry `country` (and, for City ones, `subdivisions` and `city`).
/// Anything else, an ASN or ISP database say, opens fine but would answer nothing: refusing it
/// at start-up turns a silent misconfiguration into an error message.
const LOCATION_DATABASE_KINDS: &[&str] = &["City", "Country", "Enterprise"];

impl GeoDb {
    /// Reads a GeoLite2/GeoIP2 City or Country database.
    pub fn open(path: &Path) -> Result<Self, GeoError> {
        let bytes = std::fs::read(path).map_err(|source| GeoError::Read {
            path: path.to_owned(),
            source,
        })?;
        let reader = maxminddb::Reader::from_source(bytes).map_err(|source| GeoError::Invalid {
            path: path.to_owned(),
            source,
        })?;
        let database_type = &reader.metadata.database_type;
        if !LOCATION_DATABASE_KINDS
            .iter()
            .any(|kind| database_type.contains(kind))
        {
            return Err(GeoError::WrongKind {
                path: path.to_owned(),
                database_type: database_type.clone(),
            });
        }
        Ok(Self { reader })
    }

    /// Empty fields when the address is not in the database (private ranges, an IPv6 address in
    /// an IPv4-only database) or its record is unreadable.
    pub fn lookup(&self, ip: IpAddr) -> GeoInfo {
        // A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d; the database files
        // IPv4 under its own subtree, which only the plain IPv4 form reaches.
        let ip = ip.to_canonical();
        let record = match self.reader.lookup::<geoip2::City<'_>>(ip) {
            Ok(Some(record)) => record,
            Ok(None) => return GeoInfo::default(),
            Err(e) => {
                log::debug!("geoip lookup of {ip} failed: {e}");
                return GeoInfo::default();
            }
        };
        let english = |names: Option<&std::collections::BTreeMap<&str, &str>>| {
            names
                .and_then(|names| names.get("en"))
                .map_or_else(String::new, |name| (*name).to_owned())
        };
        GeoInfo {
            country: record
                .country
                .as_ref()
                .and_then(|country| country.iso_code)
                .unwrap_or_default()
                .to_owned(),
            state: english(
                record
                    .subdivisions
                    .as_ref()
                    .and_then(|subdivisions| subdivisions.first())
                    .and_then(|subdivision| subdivision.names.as_ref()),
            ),
            city: english(record.city.as_ref().and_then(|city| city.names.as_ref())),
        }
    }
}

/// The client address OpenReplay uses: first X-Forwarded-For entry when present and parseable,
/// else X-Real-IP, else the socket peer.
///
/// As in the Go service (tomasen/realip), X-Forwarded-For entries in private, loopback and
/// link-local ranges are skipped: they are hops inside the client's or our own network and
/// locate nothing. Entries may carry a port (`1.2.3.4:5678`, `[2001:db8::1]:443`), as some
/// load balancers write them. An X-Real-IP that does not parse falls through to the peer.
pub fn client_ip(forwarded_for: Option<&[u8]>, real_ip: Option<&[u8]>, peer: IpAddr) -> IpAddr {
    let forwarded = forwarded_for
        .and_then(|value| std::str::from_utf8(value).ok())
        .into_iter()
        .flat_map(|value| value.split(','))
        .filter_map(parse_address)
        .find(|ip| is_public(*ip));
    forwarded
        .or_else(|| {
            real_ip
                .and_then(|value| std::str::from_utf8(value).ok())
                .and_then(parse_address)
        })
        .unwrap_or(peer)
        .to_canonical()
}

/// One address as a proxy writes it: bare, or with a port.
fn parse_address(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    text.parse::<IpAddr>()
        .or_else(|_| text.parse::<SocketAddr>().map(|socket| socket.ip()))
        .ok()
}

/// Not in a range that stays inside one network (the realip list, plus CGNAT and unspecified).
fn is_public(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            let shared_cgnat = a == 100 && (64..128).contains(&b);
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || shared_cgnat)
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            let unique_local = first & 0xfe00 == 0xfc00;
            let link_local = first & 0xffc0 == 0xfe80;
            !(v6.is_loopback() || v6.is_unspecified() || unique_local || link_local)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use maxminddb_writer::metadata::IpVersion;
    use maxminddb_writer::paths::IpAddrWithMask;
    use maxminddb_writer::Database;
    use serde_json::{json, Value};
    use std::io::Write;

    /// A City record shaped like MaxMind's (only the fields we read, plus names in two languages
    /// to show the English one is picked).
    fn city(country: &str, subdivisions: &[&str], city: Option<&str>) -> Value {
        let mut record = json!({
            "country": { "iso_code": country, "names": { "en": country, "de": "x" } },
            "subdivisions": subdivisions
                .iter()
                .map(|name| json!({ "names": { "de": "x", "en": name } }))
                .collect::<Vec<_>>(),
        });
        if let (Some(name), Some(map)) = (city, record.as_object_mut()) {
            map.insert("city".into(), json!({ "names": { "en": name, "fr": "x" } }));
        }
        record
    }

    /// Writes an MMDB with `networks` (IPv4 networks are filed under ::/96, as MaxMind's IPv6
    /// databases do) and opens it.
    fn database(version: IpVersion, kind: &str, networks: &[(&str, Value)]) -> GeoDb {
        let mut db = Database::default();
        db.metadata.ip_version = version;
        db.metadata.database_type = kind.into();
        db.metadata.binary_format_major_version = 2;
        db.metadata.languages = vec!["en".into()];
        for (network, record) in networks {
            let mut network: IpAddrWithMask = network.parse().expect("test network");
            match (version, network.addr) {
                (IpVersion::V6, IpAddr::V4(v4)) => {
                    let mask = network.mask + 96;
                    network = IpAddrWithMask::new(IpAddr::V6(v4.to_ipv6_compatible()), mask);
                }
                // An IPv4-only database cannot hold IPv6 networks.
                (IpVersion::V4, IpAddr::V6(_)) => continue,
                _ => {}
            }
            let data = db.insert_value(record).expect("record serializes");
            db.insert_node(network, data);
        }
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        db.write_to(&mut file).expect("mmdb written");
        file.flush().expect("flushed");
        GeoDb::open(file.path()).expect("test database opens")
    }

    /// The records MaxMind's own GeoIP2-City-Test.mmdb holds for these networks.
    fn maxmind_like_city_db(version: IpVersion) -> GeoDb {
        database(
            version,
            "GeoIP2-City",
            &[
                ("81.2.69.142/31", city("GB", &["England"], Some("London"))),
                (
                    "2.125.160.216/29",
                    city("GB", &["England", "West Berkshire"], Some("Boxford")),
                ),
                (
                    "89.160.20.128/25",
                    city("SE", &["Östergötland County"], Some("Linköping")),
                ),
                ("2001:218::/32", city("JP", &[], None)),
                (
                    "216.160.83.56/29",
                    city("US", &["Washington"], Some("Milton")),
                ),
            ],
        )
    }

    fn geo(country: &str, state: &str, city: &str) -> GeoInfo {
        GeoInfo {
            country: country.into(),
            state: state.into(),
            city: city.into(),
        }
    }

    #[test]
    fn lookups_in_a_city_database() {
        let cases: &[(&str, GeoInfo)] = &[
            ("81.2.69.142", geo("GB", "England", "London")),
            ("81.2.69.143", geo("GB", "England", "London")),
            ("81.2.69.144", GeoInfo::default()),
            ("2.125.160.216", geo("GB", "England", "Boxford")),
            ("2.125.160.223", geo("GB", "England", "Boxford")),
            (
                "89.160.20.129",
                geo("SE", "Östergötland County", "Linköping"),
            ),
            ("216.160.83.60", geo("US", "Washington", "Milton")),
            ("::ffff:81.2.69.142", geo("GB", "England", "London")),
            ("2001:218:85a3::8a2e:370:7334", geo("JP", "", "")),
            ("2001:db8::1", GeoInfo::default()),
            ("10.0.0.1", GeoInfo::default()),
            ("127.0.0.1", GeoInfo::default()),
        ];
        let db = maxmind_like_city_db(IpVersion::V6);
        for (ip, expected) in cases {
            let ip: IpAddr = ip.parse().expect("test address");
            assert_eq!(db.lookup(ip), *expected, "{ip}");
        }
    }

    #[test]
    fn an_ipv4_only_database_answers_ipv6_with_nothing() {
        let db = maxmind_like_city_db(IpVersion::V4);
        assert_eq!(
            db.lookup("81.2.69.142".parse().expect("v4")),
            geo("GB", "England", "London")
        );
        assert_eq!(
            db.lookup("2001:218::1".parse().expect("v6")),
            GeoInfo::default()
        );
    }

    #[test]
    fn user_country_is_packed_as_openreplay_packs_it() {
        assert_eq!(geo("DE", "Berlin", "Berlin").packed(), "DE|Berlin|Berlin");
        assert_eq!(geo("FR", "", "").packed(), "FR||");
        assert_eq!(GeoInfo::default().packed(), "UN||");
    }

    #[test]
    fn a_country_database_has_no_state_or_city() {
        let record = json!({ "country": { "iso_code": "FR" } });
        let db = database(
            IpVersion::V6,
            "GeoLite2-Country",
            &[("5.39.0.0/17", record)],
        );
        assert_eq!(
            db.lookup("5.39.1.1".parse().expect("v4")),
            geo("FR", "", "")
        );
    }

    #[test]
    fn records_with_unexpected_shapes_answer_nothing() {
        let db = database(
            IpVersion::V6,
            "GeoIP2-City",
            &[
                ("1.1.1.0/24", json!("just a string")),
                ("1.1.2.0/24", json!({ "country": { "iso_code": 7 } })),
                ("1.1.3.0/24", json!({ "subdivisions": [], "city": {} })),
            ],
        );
        for ip in ["1.1.1.1", "1.1.2.1", "1.1.3.1"] {
            assert_eq!(
                db.lookup(ip.parse().expect("v4")),
                GeoInfo::default(),
                "{ip}"
            );
        }
    }

    #[test]
    fn open_refuses_what_is_not_a_location_database() {
        let missing = GeoDb::open(Path::new("/nonexistent/GeoLite2-City.mmdb"));
        assert!(matches!(missing, Err(GeoError::Read { .. })), "{missing:?}");

        let mut garbage = tempfile::NamedTempFile::new().expect("temp file");
        garbage
            .write_all(b"not a database at all")
            .expect("written");
        let invalid = GeoDb::open(garbage.path());
        assert!(
            matches!(invalid, Err(GeoError::Invalid { .. })),
            "{invalid:?}"
        );

        let mut asn = Database::default();
        asn.metadata.database_type = "GeoLite2-ASN".into();
        asn.metadata.binary_format_major_version = 2;
        let data = asn
            .insert_value(json!({ "autonomous_system_number": 1 }))
            .expect("record");
        asn.insert_node("1.0.0.0/8".parse::<IpAddrWithMask>().expect("net"), data);
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        asn.write_to(&mut file).expect("mmdb written");
        let wrong = GeoDb::open(file.path());
        assert!(
            matches!(&wrong, Err(GeoError::WrongKind { database_type, .. }) if database_type == "GeoLite2-ASN"),
            "{wrong:?}"
        );
    }

    #[test]
    fn the_database_is_shareable_across_workers() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<GeoDb>();
    }

    #[test]
    fn client_address_choice() {
        let peer: IpAddr = "198.51.100.7".parse().expect("peer");
        type Case<'a> = (Option<&'a str>, Option<&'a str>, &'a str);
        let cases: &[Case] = &[
            (None, None, "198.51.100.7"),
            (Some("81.2.69.142"), None, "81.2.69.142"),
            (Some(" 81.2.69.142 , 10.0.0.1"), None, "81.2.69.142"),
            (
                Some("81.2.69.142, 2.125.160.216"),
                Some("89.160.20.129"),
                "81.2.69.142",
            ),
            // Hops inside a network locate nothing: the first public entry wins.
            (
                Some("10.1.2.3, 192.168.0.1, 81.2.69.142"),
                None,
                "81.2.69.142",
            ),
            (
                Some("100.64.0.1, 172.16.5.4, 169.254.1.1, 127.0.0.1, 2.125.160.216"),
                None,
                "2.125.160.216",
            ),
            (
                Some("fd00::1, fe80::1, ::1, 2001:218::1"),
                None,
                "2001:218::1",
            ),
            // Ports and brackets as some balancers write them.
            (Some("81.2.69.142:51234"), None, "81.2.69.142"),
            (Some("[2001:218::1]:443"), None, "2001:218::1"),
            // Mapped addresses come out in their IPv4 form.
            (Some("::ffff:81.2.69.142"), None, "81.2.69.142"),
            // Nothing usable in X-Forwarded-For: X-Real-IP, then the peer.
            (
                Some("unknown, 10.0.0.1"),
                Some("89.160.20.129"),
                "89.160.20.129",
            ),
            (Some(""), Some(" 89.160.20.129 "), "89.160.20.129"),
            (None, Some("89.160.20.129"), "89.160.20.129"),
            (None, Some("10.0.0.9"), "10.0.0.9"),
            (None, Some("garbage"), "198.51.100.7"),
            (Some("garbage"), Some(""), "198.51.100.7"),
            (Some("10.0.0.1"), None, "198.51.100.7"),
        ];
        for &(forwarded, real, expected) in cases {
            let expected: IpAddr = expected.parse().expect("expected");
            let got = client_ip(forwarded.map(str::as_bytes), real.map(str::as_bytes), peer);
            assert_eq!(got, expected, "XFF {forwarded:?}, X-Real-IP {real:?}");
        }
        let mapped_peer: IpAddr = "::ffff:198.51.100.7".parse().expect("mapped");
        assert_eq!(client_ip(None, None, mapped_peer), peer);
        // Bytes that are not UTF-8 are ignored like any other unparseable value.
        assert_eq!(
            client_ip(Some(b"\xff\xfe1.2.3.4"), Some(b"\xc3"), peer),
            peer
        );
    }
}
