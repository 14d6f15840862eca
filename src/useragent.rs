//! User-Agent header -> browser, OS and device names for the web start answer (`userOS`,
//! `userBrowser`, `userDevice`) and the SessionStart message (UserOS ... UserDeviceType).
//!
//! Enters: the raw `User-Agent` of a start request. Leaves: a [`UserAgentInfo`], or `None` when the
//! agent is not a browser (the start route then answers 403 "browser not recognized").
//! Runs on the worker threads, during a start request only (never for batches); one
//! [`UserAgentParser`] is built at start-up and shared by every worker.
//!
//! Why `ua-parser` (the ua-parser org's uap-rust) over `woothee` and `uaparser` (uap-rs):
//! - OpenReplay's Go service parses with uap-go over the same uap-core `regexes.yaml`, so the names
//!   it stores ("Mac OS X", "Mobile Safari", "Chrome Mobile", "HeadlessChrome", "Pixel 7") are
//!   uap-core's. Dashboards and filters are keyed on those strings; woothee names things its own way
//!   ("Mac OSX", no device models) and would split every existing report in two.
//! - uap-rust lives in the ua-parser organisation beside uap-core and uap-go and is released
//!   from there (0.2.2, March 2026); uap-rs (`uaparser`) is a one-person port that needs
//!   `serde_yaml` (unmaintained) and tries every regex in order on each parse.
//! - uap-rust puts an Aho-Corasick prefilter (`regex-filtered`) in front of the ~1200 regexes,
//!   so a parse only runs the few regexes whose literal atoms occur in the agent. Building the
//!   prefilter is the costly part, done once in [`UserAgentParser::new`].
//!
//! The uap-core data (v0.18.0, the copy inside the ua-parser 0.2.2 package; Apache-2.0, see
//! `useragent/LICENSE-uap-core`) is embedded in the binary as `useragent/regexes.json`: the
//! upstream YAML converted one-to-one to JSON (one parser per line, null fields dropped, all
//! scalars as strings) so that `serde_json`, already a dependency, can load it. To update it,
//! convert a newer `regexes.yaml` the same way (PyYAML `safe_load`, then `json.dumps` of each
//! parser under the three top-level keys) and rerun the tests below.
//!
//! Mapping to OpenReplay's fields follows its Go `uaparser` package: versions are
//! `major[.minor[.patch]]`, the browser family is cut at its first `/`, device families "Other"
//! and "Mac" become "". Two deliberate differences: agents with no recognisable OS (curl, HTTP
//! libraries) and uap-core "Spider" devices are refused rather than recorded as sessions, and the
//! device type tells tablets from phones (the Go service calls every iOS/Android agent "mobile").

use std::collections::HashMap;

/// uap-core regexes, converted from YAML; see the module doc.
const UAP_CORE_REGEXES: &str = include_str!("useragent/regexes.json");

/// Only this many leading bytes of an agent are parsed. Real agents are a few hundred bytes and
/// carry everything uap-core looks at within the first kilobyte even with long in-app suffixes;
/// the cap bounds the per-request cost whatever a client sends.
const MAX_PARSED_LEN: usize = 1024;

/// What OpenReplay records about the agent of a web session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserAgentInfo {
    /// uap-core OS family: "Linux", "Mac OS X", "Windows", "iOS", "Android", ...
    pub os: String,
    pub os_version: String,
    /// uap-core browser family: "Chrome", "Firefox", "Safari", "Edge", "Mobile Safari", ...
    pub browser: String,
    pub browser_version: String,
    /// "" for desktops; the model when known ("iPhone", "Pixel 7", ...).
    pub device: String,
    /// "desktop" | "mobile" | "tablet" | "other".
    pub device_type: String,
}

/// The embedded uap-core data failed to load; only a bad update of `regexes.json` causes this,
/// and the unit tests catch it.
#[derive(Debug, thiserror::Error)]
pub enum UserAgentError {
    #[error("embedded uap-core regexes are not valid JSON: {0}")]
    Data(#[from] serde_json::Error),
    #[error("embedded uap-core regexes do not compile: {0}")]
    Compile(#[from] ua_parser::Error),
}

/// A parser built once and shared by all worker threads (Send + Sync). Building may be costly;
/// parsing must not be.
pub struct UserAgentParser {
    extractor: ua_parser::Extractor<'static>,
}

impl Default for UserAgentParser {
    fn default() -> Self {
        Self::new()
    }
}

impl UserAgentParser {
    /// Compiles the embedded uap-core regexes.
    ///
    /// # Panics
    /// Only if the embedded data is broken, which the unit tests rule out; see [`Self::try_new`].
    pub fn new() -> Self {
        match Self::try_new() {
            Ok(parser) => parser,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`Self::new`] without the panic, for callers that prefer to report the error.
    pub fn try_new() -> Result<Self, UserAgentError> {
        let regexes: ua_parser::Regexes<'static> = serde_json::from_str(UAP_CORE_REGEXES)?;
        let extractor = ua_parser::Extractor::try_from(regexes)?;
        Ok(Self { extractor })
    }

    /// None when the agent is not a recognisable browser (empty, curl, bots): the start route
    /// then answers 403 "browser not recognized", as OpenReplay does.
    pub fn parse(&self, user_agent: &str) -> Option<UserAgentInfo> {
        let user_agent = clip(user_agent.trim());
        if user_agent.is_empty() {
            return None;
        }
        let browser = self.extractor.ua.extract(user_agent)?;
        let os = self.extractor.os.extract(user_agent)?;
        let device = self.extractor.dev.extract(user_agent);
        let device_family = device.as_ref().map_or("", |d| d.device.as_ref());
        if device_family == "Spider" {
            return None;
        }

        let browser_name = browser.family.split('/').next().unwrap_or_default();
        if browser_name.is_empty() || os.os.is_empty() {
            return None;
        }
        let device = match device_family {
            "Other" | "Mac" => "",
            family => family,
        };
        Some(UserAgentInfo {
            device_type: device_type(&os.os, device, user_agent).to_owned(),
            os_version: dotted([
                os.major.as_deref(),
                os.minor.as_deref(),
                os.patch.as_deref(),
            ]),
            os: os.os.into_owned(),
            browser_version: dotted([browser.major, browser.minor, browser.patch]),
            browser: browser_name.to_owned(),
            device: device.to_owned(),
        })
    }
}

/// A worker's memory of the agents it has parsed. Real traffic comes from comparatively few
/// distinct agents and a parse costs about 11 µs (`benches/request_path.rs`), so a start whose
/// agent is here costs a hash lookup, and one whose agent is not is prepared off the worker's
/// loop (`net::prepare`). Keyed by the part of the agent a parse reads (at most
/// [`MAX_PARSED_LEN`] bytes); bounded: when full it starts over, so a client sending a new agent
/// with every start costs a parse each time, never memory.
#[derive(Default)]
pub struct AgentCache {
    parsed: HashMap<Box<str>, Option<UserAgentInfo>>,
}

const AGENT_CACHE_ENTRIES: usize = 1024;

impl AgentCache {
    /// The parse of `user_agent`, if this cache has it.
    pub fn get(&self, user_agent: &str) -> Option<&Option<UserAgentInfo>> {
        self.parsed.get(clip(user_agent.trim()))
    }

    pub fn insert(&mut self, user_agent: &str, info: Option<UserAgentInfo>) {
        if self.parsed.len() >= AGENT_CACHE_ENTRIES {
            self.parsed.clear();
        }
        self.parsed.insert(clip(user_agent.trim()).into(), info);
    }

    /// The parse of `user_agent`, from this cache or from `parser` (then remembered).
    pub fn parse(&mut self, parser: &UserAgentParser, user_agent: &str) -> Option<UserAgentInfo> {
        if let Some(info) = self.get(user_agent) {
            return info.clone();
        }
        let info = parser.parse(user_agent);
        self.insert(user_agent, info.clone());
        info
    }
}

/// The longest prefix of `s` within [`MAX_PARSED_LEN`] bytes that ends on a char boundary.
fn clip(s: &str) -> &str {
    if s.len() <= MAX_PARSED_LEN {
        return s;
    }
    let mut end = MAX_PARSED_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

/// `major[.minor[.patch]]`, stopping at the first missing or empty part, as OpenReplay does.
fn dotted(parts: [Option<&str>; 3]) -> String {
    let mut out = String::new();
    for part in parts {
        match part {
            Some(p) if !p.is_empty() => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(p);
            }
            _ => break,
        }
    }
    out
}

/// OS families OpenReplay counts as desktops, plus the Linux distributions uap-core names.
const DESKTOP_OS: &[&str] = &[
    "Arch Linux",
    "CentOS",
    "Chrome OS",
    "ChromeOS",
    "Debian",
    "Fedora",
    "FreeBSD",
    "Gentoo",
    "Linux",
    "Linux Mint",
    "Mac OS X",
    "Mandriva",
    "NetBSD",
    "OpenBSD",
    "Red Hat",
    "Slackware",
    "SUSE",
    "Ubuntu",
    "Windows",
];

/// OS families OpenReplay counts as mobile (tablets are told apart by device, below).
const MOBILE_OS: &[&str] = &[
    "Android",
    "BlackBerry OS",
    "BlackBerry Tablet OS",
    "Firefox OS",
    "HarmonyOS",
    "iOS",
    "KaiOS",
    "Windows Phone",
];

fn device_type(os: &str, device: &str, user_agent: &str) -> &'static str {
    if device.starts_with("iPad") || device == "Generic Tablet" || os == "BlackBerry Tablet OS" {
        return "tablet";
    }
    if MOBILE_OS.contains(&os) {
        // Android browsers mark phones with a "Mobile" token and leave it out on tablets
        // (Chrome's and Firefox's documented convention, followed by the WebViews).
        if os == "Android" && !user_agent.contains("Mobile") {
            return "tablet";
        }
        return "mobile";
    }
    if DESKTOP_OS.contains(&os) {
        return "desktop";
    }
    "other"
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;

    /// Building takes a couple of seconds in a debug build: share one parser across tests.
    fn parser() -> &'static UserAgentParser {
        static PARSER: OnceLock<UserAgentParser> = OnceLock::new();
        PARSER.get_or_init(UserAgentParser::new)
    }

    const HEADLESS_CHROME_156: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 \
        (KHTML, like Gecko) HeadlessChrome/156.0.0.0 Safari/537.36";

    /// (agent, os, os version, browser, browser version, device, device type)
    const BROWSERS: &[(&str, &str, &str, &str, &str, &str, &str)] = &[
        (
            HEADLESS_CHROME_156,
            "Linux",
            "",
            "HeadlessChrome",
            "156.0.0",
            "",
            "desktop",
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) \
             Chrome/124.0.0.0 Safari/537.36",
            "Windows",
            "10",
            "Chrome",
            "124.0.0",
            "",
            "desktop",
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
            "Windows",
            "10",
            "Firefox",
            "125.0",
            "",
            "desktop",
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) \
             Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.80",
            "Windows",
            "10",
            "Edge",
            "124.0.2478",
            "",
            "desktop",
        ),
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 \
             (KHTML, like Gecko) Version/17.4.1 Safari/605.1.15",
            "Mac OS X",
            "10.15.7",
            "Safari",
            "17.4.1",
            "",
            "desktop",
        ),
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 \
             (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
            "Mac OS X",
            "10.15.7",
            "Chrome",
            "124.0.0",
            "",
            "desktop",
        ),
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 14.4; rv:125.0) Gecko/20100101 Firefox/125.0",
            "Mac OS X",
            "14.4",
            "Firefox",
            "125.0",
            "",
            "desktop",
        ),
        (
            "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) \
             Chrome/124.0.0.0 Safari/537.36",
            "Chrome OS",
            "14541.0.0",
            "Chrome",
            "124.0.0",
            "",
            "desktop",
        ),
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 \
             (KHTML, like Gecko) Version/17.4.1 Mobile/15E148 Safari/604.1",
            "iOS",
            "17.4.1",
            "Mobile Safari",
            "17.4.1",
            "iPhone",
            "mobile",
        ),
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 \
             (KHTML, like Gecko) CriOS/124.0.6367.88 Mobile/15E148 Safari/604.1",
            "iOS",
            "17.4",
            "Chrome Mobile iOS",
            "124.0.6367",
            "iPhone",
            "mobile",
        ),
        (
            "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 \
             (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1",
            "iOS",
            "16.6",
            "Mobile Safari",
            "16.6",
            "iPad",
            "tablet",
        ),
        (
            "Mozilla/5.0 (Linux; Android 14; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) \
             Chrome/124.0.6367.82 Mobile Safari/537.36",
            "Android",
            "14",
            "Chrome Mobile",
            "124.0.6367",
            "Pixel 7",
            "mobile",
        ),
        (
            "Mozilla/5.0 (Linux; Android 13; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) \
             Chrome/124.0.6367.82 Safari/537.36",
            "Android",
            "13",
            "Chrome",
            "124.0.6367",
            "SM-X710",
            "tablet",
        ),
        (
            "Mozilla/5.0 (Linux; Android 13; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) \
             SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36",
            "Android",
            "13",
            "Samsung Internet",
            "24.0",
            "Samsung SM-S918B",
            "mobile",
        ),
        (
            "Mozilla/5.0 (Android 14; Tablet; rv:125.0) Gecko/125.0 Firefox/125.0",
            "Android",
            "14",
            "Firefox Mobile",
            "125.0",
            "Generic Tablet",
            "tablet",
        ),
        (
            "Mozilla/5.0 (Linux; Android 13; Pixel 7 Build/TQ3A.230805.001; wv) \
             AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/116.0.0.0 \
             Mobile Safari/537.36",
            "Android",
            "13",
            "Chrome Mobile WebView",
            "116.0.0",
            "Pixel 7",
            "mobile",
        ),
    ];

    #[test]
    fn real_browsers() {
        for &(agent, os, os_version, browser, browser_version, device, device_type) in BROWSERS {
            let expected = UserAgentInfo {
                os: os.into(),
                os_version: os_version.into(),
                browser: browser.into(),
                browser_version: browser_version.into(),
                device: device.into(),
                device_type: device_type.into(),
            };
            assert_eq!(parser().parse(agent), Some(expected), "{agent}");
        }
    }

    #[test]
    fn non_browsers_are_refused() {
        for agent in [
            "",
            "   ",
            "curl/7.88.1",
            "Wget/1.21.3",
            "python-requests/2.31.0",
            "Go-http-client/1.1",
            "PostmanRuntime/7.36.0",
            "Mozilla/5.0",
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 \
             (KHTML, like Gecko) Chrome/124.0.6367.82 Mobile Safari/537.36 \
             (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
        ] {
            assert_eq!(parser().parse(agent), None, "{agent:?}");
        }
    }

    #[test]
    fn the_fixture_agent_is_the_one_tested() {
        // The captured tracker traffic must keep parsing as a browser, or every start of the
        // black-box tests would be refused.
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/fixtures/tracker-19.0.1/requests-esm-pv2-crossorigin.jsonl");
        let Ok(jsonl) = std::fs::read_to_string(&fixtures) else {
            return; // not every checkout has the shared fixtures beside it
        };
        assert!(jsonl.contains(HEADLESS_CHROME_156), "fixture agent changed");
    }

    #[test]
    fn overlong_and_hostile_agents_do_not_panic() {
        let chrome = BROWSERS[1].0;
        let padded = format!("{chrome} {}", "x".repeat(10 * MAX_PARSED_LEN));
        assert_eq!(
            parser().parse(&padded).map(|i| i.browser),
            Some("Chrome".to_owned())
        );
        // A multi-byte char straddling the cap must not split.
        let straddling = format!("{}é{}", "a".repeat(MAX_PARSED_LEN - 1), "b".repeat(10));
        assert_eq!(clip(&straddling).len(), MAX_PARSED_LEN - 1);
        for agent in [
            "(".repeat(5000),
            "Mozilla/5.0 (iPhone; Android ".repeat(100),
            "\u{0}\u{fffd}\u{10ffff}".to_owned(),
        ] {
            let _ = parser().parse(&agent);
        }
    }

    #[test]
    fn dotted_versions_stop_at_the_first_gap() {
        let cases: &[([Option<&str>; 3], &str)] = &[
            ([None, None, None], ""),
            ([Some("17"), None, Some("1")], "17"),
            ([Some("17"), Some("4"), None], "17.4"),
            ([Some("17"), Some("4"), Some("1")], "17.4.1"),
            ([Some(""), Some("4"), Some("1")], ""),
        ];
        for (parts, expected) in cases {
            assert_eq!(dotted(*parts), *expected, "{parts:?}");
        }
    }

    #[test]
    fn the_cache_answers_as_the_parser_and_stays_bounded() {
        let parser = parser();
        let mut cache = AgentCache::default();
        let chrome = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
                      Chrome/131.0.0.0 Safari/537.36";
        assert!(cache.get(chrome).is_none());
        assert_eq!(cache.parse(parser, chrome), parser.parse(chrome));
        assert_eq!(cache.get(chrome), Some(&parser.parse(chrome)));
        // Refusals are remembered too, and agents differing past the parsed prefix share one entry.
        assert_eq!(cache.parse(parser, "curl/8.5.0"), None);
        assert_eq!(cache.get("curl/8.5.0"), Some(&None));
        let long = format!("{chrome} {}", "x".repeat(MAX_PARSED_LEN));
        cache.insert(&long, None);
        assert_eq!(cache.get(&format!("{long}yz")), Some(&None));
        for i in 0..3 * AGENT_CACHE_ENTRIES {
            cache.insert(&format!("agent {i}"), None);
        }
        assert!(cache.parsed.len() <= AGENT_CACHE_ENTRIES);
    }

    #[test]
    fn parser_is_shareable_across_workers() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<UserAgentParser>();
    }
}
