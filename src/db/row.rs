//! The `sessions` row of a new session, as the log carries it to the database writer.
//!
//! In: what a start request and its answer know (written by the start routes on the worker
//! thread, as a [`RecordKind::SessionRow`](crate::log::RecordKind) record appended just before
//! the session's start message). Out: the row's column values with OpenReplay's rules applied
//! ([`SessionRow::columns`]), read by the database writer on its thread.
//!
//! The record holds the values as the start saw them (JSON, so `cat` and a human can read it
//! and a later node can add a field); the rules that make an insert succeed and downstream reads
//! work are applied when the row is written, in one place: NULL for empty optional text (as
//! OpenReplay's `NULLIF`), `''` and `0` rather than NULL for `timezone` and the screen size, an
//! enum label that PostgreSQL knows for `country`, `device_type` and `platform`, the browser
//! columns only for web, and a memory size that fits the 32-bit column.

use serde::{Deserialize, Serialize};

/// Labels of OpenReplay's `country` enum (PROTOCOL.md; `schema.sql` creates the same list).
pub const COUNTRIES: [&str; 282] = [
    "UN", "RW", "SO", "YE", "IQ", "SA", "IR", "CY", "TZ", "SY", "AM", "KE", "CD", "DJ", "UG", "CF",
    "SC", "JO", "LB", "KW", "OM", "QA", "BH", "AE", "IL", "TR", "ET", "ER", "EG", "SD", "GR", "BI",
    "EE", "LV", "AZ", "LT", "SJ", "GE", "MD", "BY", "FI", "AX", "UA", "MK", "HU", "BG", "AL", "PL",
    "RO", "XK", "ZW", "ZM", "KM", "MW", "LS", "BW", "MU", "SZ", "RE", "ZA", "YT", "MZ", "MG", "AF",
    "PK", "BD", "TM", "TJ", "LK", "BT", "IN", "MV", "IO", "NP", "MM", "UZ", "KZ", "KG", "TF", "HM",
    "CC", "PW", "VN", "TH", "ID", "LA", "TW", "PH", "MY", "CN", "HK", "BN", "MO", "KH", "KR", "JP",
    "KP", "SG", "CK", "TL", "RU", "MN", "AU", "CX", "MH", "FM", "PG", "SB", "TV", "NR", "VU", "NC",
    "NF", "NZ", "FJ", "LY", "CM", "SN", "CG", "PT", "LR", "CI", "GH", "GQ", "NG", "BF", "TG", "GW",
    "MR", "BJ", "GA", "SL", "ST", "GI", "GM", "GN", "TD", "NE", "ML", "EH", "TN", "ES", "MA", "MT",
    "DZ", "FO", "DK", "IS", "GB", "CH", "SE", "NL", "AT", "BE", "DE", "LU", "IE", "MC", "FR", "AD",
    "LI", "JE", "IM", "GG", "SK", "CZ", "NO", "VA", "SM", "IT", "SI", "ME", "HR", "BA", "AO", "NA",
    "SH", "BV", "BB", "CV", "GY", "GF", "SR", "PM", "GL", "PY", "UY", "BR", "FK", "GS", "JM", "DO",
    "CU", "MQ", "BS", "BM", "AI", "TT", "KN", "DM", "AG", "LC", "TC", "AW", "VG", "VC", "MS", "MF",
    "BL", "GP", "GD", "KY", "BZ", "SV", "GT", "HN", "NI", "CR", "VE", "EC", "CO", "PA", "HT", "AR",
    "CL", "BO", "PE", "MX", "PF", "PN", "KI", "TK", "TO", "WF", "WS", "NU", "MP", "GU", "PR", "VI",
    "UM", "AS", "CA", "US", "PS", "RS", "AQ", "SX", "CW", "BQ", "SS", "AC", "AN", "BU", "CP", "CS",
    "CT", "DD", "DG", "DY", "EA", "FQ", "FX", "HV", "IC", "JT", "MI", "NH", "NQ", "NT", "PC", "PU",
    "PZ", "RH", "SU", "TA", "TP", "VD", "WK", "YD", "YU", "ZR",
];

/// Labels of the `device_type` enum.
const DEVICE_TYPES: [&str; 4] = ["desktop", "tablet", "mobile", "other"];

/// A new session's row, as the start route saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRow {
    pub session_id: u64,
    pub project_id: u64,
    /// The start message's timestamp, ms.
    pub start_ts: u64,
    /// `web`, `ios` or `android`.
    pub platform: String,
    pub user_uuid: String,
    pub user_os: String,
    pub user_os_version: String,
    pub user_browser: String,
    pub user_browser_version: String,
    pub user_device: String,
    pub user_device_type: String,
    pub user_device_memory_size: u64,
    pub user_device_heap_size: u64,
    /// ISO 3166 alpha-2 ("" when unknown), and the parts the start answer gives apart.
    pub user_country: String,
    pub user_state: String,
    pub user_city: String,
    pub rev_id: String,
    pub tracker_version: String,
    pub user_id: String,
    pub timezone: String,
    pub screen_width: i64,
    pub screen_height: i64,
}

/// A row's values, typed as the `sessions` columns take them (`None` is NULL).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Columns<'a> {
    pub session_id: i64,
    pub project_id: i32,
    pub start_ts: i64,
    pub user_uuid: &'a str,
    pub user_device: &'a str,
    pub user_device_type: &'static str,
    pub user_country: &'static str,
    pub user_os: &'a str,
    pub user_os_version: Option<&'a str>,
    pub rev_id: Option<&'a str>,
    pub tracker_version: &'a str,
    pub platform: &'static str,
    pub user_browser: Option<&'a str>,
    pub user_browser_version: Option<&'a str>,
    pub user_device_memory_size: Option<i32>,
    pub user_device_heap_size: Option<i64>,
    pub user_id: Option<&'a str>,
    pub user_state: Option<&'a str>,
    pub user_city: Option<&'a str>,
    pub timezone: &'a str,
    pub screen_width: i32,
    pub screen_height: i32,
}

/// Why a row cannot be written at all (it is quarantined, never retried).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RowError {
    #[error("not a session row: {0}")]
    Decode(String),
    #[error("project id {0} does not fit the integer column")]
    ProjectId(u64),
}

/// `user_id` is cut to this many characters, as OpenReplay's `LEFT($17, 8000)`.
const USER_ID_MAX_CHARS: usize = 8000;

impl SessionRow {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a row always serialises")
    }

    pub fn decode(body: &[u8]) -> Result<SessionRow, RowError> {
        serde_json::from_slice(body).map_err(|e| RowError::Decode(e.to_string()))
    }

    /// The column values with OpenReplay's rules applied.
    pub fn columns(&self) -> Result<Columns<'_>, RowError> {
        let web = self.platform == "web";
        let platform = match self.platform.as_str() {
            "web" => "web",
            "android" => "android",
            _ => "ios",
        };
        let country = COUNTRIES
            .iter()
            .find(|c| c.eq_ignore_ascii_case(&self.user_country))
            .copied()
            .unwrap_or("UN");
        let device_type = DEVICE_TYPES
            .iter()
            .find(|d| **d == self.user_device_type)
            .copied()
            .unwrap_or("other");
        let user_id = match self.user_id.char_indices().nth(USER_ID_MAX_CHARS) {
            Some((at, _)) => &self.user_id[..at],
            None => &self.user_id,
        };
        Ok(Columns {
            // The flake id's 64 bits, as PostgreSQL's signed bigint holds them.
            session_id: self.session_id as i64,
            project_id: i32::try_from(self.project_id)
                .map_err(|_| RowError::ProjectId(self.project_id))?,
            start_ts: i64::try_from(self.start_ts).unwrap_or(i64::MAX),
            user_uuid: &self.user_uuid,
            user_device: &self.user_device,
            user_device_type: device_type,
            user_country: country,
            user_os: &self.user_os,
            user_os_version: non_empty(&self.user_os_version),
            rev_id: non_empty(&self.rev_id),
            tracker_version: &self.tracker_version,
            platform,
            // The check constraints: a web row has a browser (`''` when the parser had none),
            // any other row has none.
            user_browser: web.then_some(self.user_browser.as_str()),
            user_browser_version: if web {
                non_empty(&self.user_browser_version)
            } else {
                None
            },
            // 0 means unknown (NULL), and a size past the integer column is not a size.
            user_device_memory_size: i32::try_from(self.user_device_memory_size)
                .ok()
                .filter(|m| *m != 0),
            user_device_heap_size: i64::try_from(self.user_device_heap_size)
                .ok()
                .filter(|h| *h != 0),
            user_id: non_empty(user_id),
            user_state: non_empty(&self.user_state),
            user_city: non_empty(&self.user_city),
            timezone: &self.timezone,
            screen_width: clamp_i32(self.screen_width),
            screen_height: clamp_i32(self.screen_height),
        })
    }
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// A screen size the integer column takes; nonsense (negative, huge) becomes 0, unknown.
fn clamp_i32(v: i64) -> i32 {
    i32::try_from(v).ok().filter(|v| *v >= 0).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web_row() -> SessionRow {
        SessionRow {
            session_id: u64::MAX - 1,
            project_id: 7,
            start_ts: 1_700_000_000_000,
            platform: "web".into(),
            user_uuid: "9a2f7c1e-3b4d-4e5f-8a9b-0c1d2e3f4a5b".into(),
            user_os: "Linux".into(),
            user_browser: "Chrome".into(),
            user_browser_version: "120.0.0".into(),
            user_device_type: "desktop".into(),
            user_country: "de".into(),
            user_device_memory_size: 8 << 30,
            user_device_heap_size: 4 << 30,
            ..SessionRow::default()
        }
    }

    #[test]
    fn rows_round_trip_through_their_record() {
        let row = web_row();
        assert_eq!(SessionRow::decode(&row.encode()).unwrap(), row);
        assert!(SessionRow::decode(b"{}").is_err());
        assert!(SessionRow::decode(b"not json").is_err());
    }

    #[test]
    fn web_columns_follow_openreplays_rules() {
        let row = web_row();
        let c = row.columns().unwrap();
        assert_eq!(c.session_id, -2);
        assert_eq!(c.user_country, "DE");
        assert_eq!(c.platform, "web");
        assert_eq!(c.user_browser, Some("Chrome"));
        // 8 GiB does not fit the integer column; the heap's bigint takes 4 GiB.
        assert_eq!(c.user_device_memory_size, None);
        assert_eq!(c.user_device_heap_size, Some(4 << 30));
        assert_eq!((c.timezone, c.screen_width, c.screen_height), ("", 0, 0));
        assert_eq!((c.user_os_version, c.rev_id, c.user_id), (None, None, None));
        assert_eq!((c.user_state, c.user_city), (None, None));
        let unknown_browser = SessionRow {
            user_browser: String::new(),
            ..web_row()
        };
        assert_eq!(unknown_browser.columns().unwrap().user_browser, Some(""));
    }

    #[test]
    fn mobile_columns_have_no_browser_and_known_labels() {
        let row = SessionRow {
            platform: "android".into(),
            user_browser: "Chrome".into(),
            user_browser_version: "1".into(),
            user_device_type: "phablet".into(),
            user_country: "EU".into(),
            screen_width: -5,
            screen_height: 1 << 40,
            user_id: "é".repeat(9000),
            ..web_row()
        };
        let c = row.columns().unwrap();
        assert_eq!(c.platform, "android");
        assert_eq!((c.user_browser, c.user_browser_version), (None, None));
        assert_eq!(c.user_device_type, "other");
        assert_eq!(c.user_country, "UN");
        assert_eq!((c.screen_width, c.screen_height), (0, 0));
        assert_eq!(c.user_id.unwrap().chars().count(), 8000);
        let ios = SessionRow {
            platform: "tv".into(),
            ..row
        };
        assert_eq!(ios.columns().unwrap().platform, "ios");
    }

    #[test]
    fn the_schema_creates_the_same_countries() {
        let schema = include_str!("schema.sql");
        let at = schema.find("CREATE TYPE country AS ENUM (").unwrap();
        let list = &schema[at..schema[at..].find(");").unwrap() + at];
        let labels: Vec<&str> = list.split('\'').skip(1).step_by(2).collect::<Vec<_>>();
        assert_eq!(labels, COUNTRIES);
    }
}
