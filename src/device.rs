//! Mobile start: the tracker's model identifier (`userDevice`, e.g. `iPhone14,2`) and device
//! type hint (`userDeviceType`) -> the marketing name and type that OpenReplay records in
//! MobileSessionStart (UserDevice, UserDeviceType).
//!
//! Enters: two strings from the mobile start request. Leaves: a name (borrowed from the input when
//! the identifier is not one of Apple's) and a [`DeviceType`]. Runs on the worker threads, during a
//! mobile start only; pure lookups in a static table, no state.
//!
//! The names follow OpenReplay's Go `MapIOSDevice` (so existing sessions and new ones group
//! together) and Apple's own naming for the models it lacks. Android trackers already send
//! marketing-ish names ("Pixel 7", "SM-S918B"); those pass through untouched.

use std::borrow::Cow;

/// The `userDeviceType` of a mobile session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceType {
    Mobile,
    Tablet,
    Other,
}

impl DeviceType {
    /// The spelling OpenReplay stores: "mobile" | "tablet" | "other".
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceType::Mobile => "mobile",
            DeviceType::Tablet => "tablet",
            DeviceType::Other => "other",
        }
    }

    /// The type implied by an Apple identifier's family prefix, if it has one we know.
    fn of_apple_family(identifier: &str) -> Option<Self> {
        const FAMILIES: &[(&str, DeviceType)] = &[
            ("iPhone", DeviceType::Mobile),
            ("iPod", DeviceType::Mobile),
            ("iPad", DeviceType::Tablet),
            ("AppleTV", DeviceType::Other),
            ("AudioAccessory", DeviceType::Other),
            ("RealityDevice", DeviceType::Other),
            ("Watch", DeviceType::Other),
        ];
        FAMILIES
            .iter()
            .find(|(prefix, _)| identifier.starts_with(prefix))
            .map(|&(_, kind)| kind)
    }

    /// The client's own `userDeviceType`, spelled by whichever tracker sent it.
    fn from_hint(hint: &str) -> Option<Self> {
        const HINTS: &[(&str, DeviceType)] = &[
            ("mobile", DeviceType::Mobile),
            ("phone", DeviceType::Mobile),
            ("smartphone", DeviceType::Mobile),
            ("tablet", DeviceType::Tablet),
            ("pad", DeviceType::Tablet),
            ("other", DeviceType::Other),
            ("desktop", DeviceType::Other),
            ("tv", DeviceType::Other),
            ("watch", DeviceType::Other),
        ];
        let hint = hint.trim();
        HINTS
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(hint))
            .map(|&(_, kind)| kind)
    }
}

/// Name OpenReplay gives every simulator, whatever host CPU it reports.
const SIMULATOR: &str = "Simulator";

/// "iPhone14,2" -> ("iPhone 13 Pro", Mobile); "iPad13,1" -> ("iPad Air (4th generation)", Tablet);
/// simulator ids ("x86_64", "arm64") -> ("Simulator", Other); unknown identifiers keep their text,
/// with the type guessed from the prefix (iPhone/iPod -> Mobile, iPad -> Tablet) or from `hint`
/// (the client's userDeviceType string), else Mobile.
pub fn mobile_device<'a>(identifier: &'a str, hint: &str) -> (Cow<'a, str>, DeviceType) {
    if let Ok(at) = APPLE_MODELS.binary_search_by(|&(id, _)| id.cmp(identifier)) {
        if let Some(&(_, name)) = APPLE_MODELS.get(at) {
            let kind = if name == SIMULATOR {
                DeviceType::Other
            } else {
                DeviceType::of_apple_family(identifier).unwrap_or(DeviceType::Other)
            };
            return (Cow::Borrowed(name), kind);
        }
    }
    let kind = DeviceType::of_apple_family(identifier)
        .or_else(|| DeviceType::from_hint(hint))
        .unwrap_or(DeviceType::Mobile);
    (Cow::Borrowed(identifier), kind)
}

/// Apple model identifiers (`utsname.machine`) to marketing names, sorted by identifier bytes for
/// binary search (so "iPad13,10" sorts before "iPad13,2"); a test keeps it sorted and unique.
/// Compiled from OpenReplay's Go table and public identifier lists; add rows as Apple ships models
/// (until then a new model keeps its identifier and still gets the right type from its prefix).
#[rustfmt::skip]
static APPLE_MODELS: &[(&str, &str)] = &[
    ("AppleTV11,1", "Apple TV 4K (2nd generation)"),
    ("AppleTV14,1", "Apple TV 4K (3rd generation)"),
    ("AppleTV5,3", "Apple TV"),
    ("AppleTV6,2", "Apple TV 4K"),
    ("AudioAccessory1,1", "HomePod"),
    ("AudioAccessory1,2", "HomePod"),
    ("AudioAccessory5,1", "HomePod mini"),
    ("AudioAccessory6,1", "HomePod (2nd generation)"),
    ("RealityDevice14,1", "Apple Vision Pro"),
    ("arm64", "Simulator"),
    ("i386", "Simulator"),
    ("iPad1,1", "iPad"),
    ("iPad1,2", "iPad"),
    ("iPad11,1", "iPad mini (5th generation)"),
    ("iPad11,2", "iPad mini (5th generation)"),
    ("iPad11,3", "iPad Air (3rd generation)"),
    ("iPad11,4", "iPad Air (3rd generation)"),
    ("iPad11,6", "iPad (8th generation)"),
    ("iPad11,7", "iPad (8th generation)"),
    ("iPad12,1", "iPad (9th generation)"),
    ("iPad12,2", "iPad (9th generation)"),
    ("iPad13,1", "iPad Air (4th generation)"),
    ("iPad13,10", "iPad Pro (12.9-inch) (5th generation)"),
    ("iPad13,11", "iPad Pro (12.9-inch) (5th generation)"),
    ("iPad13,16", "iPad Air (5th generation)"),
    ("iPad13,17", "iPad Air (5th generation)"),
    ("iPad13,18", "iPad (10th generation)"),
    ("iPad13,19", "iPad (10th generation)"),
    ("iPad13,2", "iPad Air (4th generation)"),
    ("iPad13,4", "iPad Pro (11-inch) (3rd generation)"),
    ("iPad13,5", "iPad Pro (11-inch) (3rd generation)"),
    ("iPad13,6", "iPad Pro (11-inch) (3rd generation)"),
    ("iPad13,7", "iPad Pro (11-inch) (3rd generation)"),
    ("iPad13,8", "iPad Pro (12.9-inch) (5th generation)"),
    ("iPad13,9", "iPad Pro (12.9-inch) (5th generation)"),
    ("iPad14,1", "iPad mini (6th generation)"),
    ("iPad14,10", "iPad Air 13-inch (M2)"),
    ("iPad14,11", "iPad Air 13-inch (M2)"),
    ("iPad14,2", "iPad mini (6th generation)"),
    ("iPad14,3", "iPad Pro (11-inch) (4th generation)"),
    ("iPad14,4", "iPad Pro (11-inch) (4th generation)"),
    ("iPad14,5", "iPad Pro (12.9-inch) (6th generation)"),
    ("iPad14,6", "iPad Pro (12.9-inch) (6th generation)"),
    ("iPad14,8", "iPad Air 11-inch (M2)"),
    ("iPad14,9", "iPad Air 11-inch (M2)"),
    ("iPad15,3", "iPad Air 11-inch (M3)"),
    ("iPad15,4", "iPad Air 11-inch (M3)"),
    ("iPad15,5", "iPad Air 13-inch (M3)"),
    ("iPad15,6", "iPad Air 13-inch (M3)"),
    ("iPad15,7", "iPad (A16)"),
    ("iPad15,8", "iPad (A16)"),
    ("iPad16,1", "iPad mini (A17 Pro)"),
    ("iPad16,2", "iPad mini (A17 Pro)"),
    ("iPad16,3", "iPad Pro 11-inch (M4)"),
    ("iPad16,4", "iPad Pro 11-inch (M4)"),
    ("iPad16,5", "iPad Pro 13-inch (M4)"),
    ("iPad16,6", "iPad Pro 13-inch (M4)"),
    ("iPad2,1", "iPad 2"),
    ("iPad2,2", "iPad 2"),
    ("iPad2,3", "iPad 2"),
    ("iPad2,4", "iPad 2"),
    ("iPad2,5", "iPad mini"),
    ("iPad2,6", "iPad mini"),
    ("iPad2,7", "iPad mini"),
    ("iPad3,1", "iPad (3rd generation)"),
    ("iPad3,2", "iPad (3rd generation)"),
    ("iPad3,3", "iPad (3rd generation)"),
    ("iPad3,4", "iPad (4th generation)"),
    ("iPad3,5", "iPad (4th generation)"),
    ("iPad3,6", "iPad (4th generation)"),
    ("iPad4,1", "iPad Air"),
    ("iPad4,2", "iPad Air"),
    ("iPad4,3", "iPad Air"),
    ("iPad4,4", "iPad mini 2"),
    ("iPad4,5", "iPad mini 2"),
    ("iPad4,6", "iPad mini 2"),
    ("iPad4,7", "iPad mini 3"),
    ("iPad4,8", "iPad mini 3"),
    ("iPad4,9", "iPad mini 3"),
    ("iPad5,1", "iPad mini 4"),
    ("iPad5,2", "iPad mini 4"),
    ("iPad5,3", "iPad Air 2"),
    ("iPad5,4", "iPad Air 2"),
    ("iPad6,11", "iPad (5th generation)"),
    ("iPad6,12", "iPad (5th generation)"),
    ("iPad6,3", "iPad Pro (9.7-inch)"),
    ("iPad6,4", "iPad Pro (9.7-inch)"),
    ("iPad6,7", "iPad Pro (12.9-inch) (1st generation)"),
    ("iPad6,8", "iPad Pro (12.9-inch) (1st generation)"),
    ("iPad7,1", "iPad Pro (12.9-inch) (2nd generation)"),
    ("iPad7,11", "iPad (7th generation)"),
    ("iPad7,12", "iPad (7th generation)"),
    ("iPad7,2", "iPad Pro (12.9-inch) (2nd generation)"),
    ("iPad7,3", "iPad Pro (10.5-inch)"),
    ("iPad7,4", "iPad Pro (10.5-inch)"),
    ("iPad7,5", "iPad (6th generation)"),
    ("iPad7,6", "iPad (6th generation)"),
    ("iPad8,1", "iPad Pro (11-inch) (1st generation)"),
    ("iPad8,10", "iPad Pro (11-inch) (2nd generation)"),
    ("iPad8,11", "iPad Pro (12.9-inch) (4th generation)"),
    ("iPad8,12", "iPad Pro (12.9-inch) (4th generation)"),
    ("iPad8,2", "iPad Pro (11-inch) (1st generation)"),
    ("iPad8,3", "iPad Pro (11-inch) (1st generation)"),
    ("iPad8,4", "iPad Pro (11-inch) (1st generation)"),
    ("iPad8,5", "iPad Pro (12.9-inch) (3rd generation)"),
    ("iPad8,6", "iPad Pro (12.9-inch) (3rd generation)"),
    ("iPad8,7", "iPad Pro (12.9-inch) (3rd generation)"),
    ("iPad8,8", "iPad Pro (12.9-inch) (3rd generation)"),
    ("iPad8,9", "iPad Pro (11-inch) (2nd generation)"),
    ("iPhone1,1", "iPhone"),
    ("iPhone1,2", "iPhone 3G"),
    ("iPhone10,1", "iPhone 8"),
    ("iPhone10,2", "iPhone 8 Plus"),
    ("iPhone10,3", "iPhone X"),
    ("iPhone10,4", "iPhone 8"),
    ("iPhone10,5", "iPhone 8 Plus"),
    ("iPhone10,6", "iPhone X"),
    ("iPhone11,2", "iPhone XS"),
    ("iPhone11,4", "iPhone XS Max"),
    ("iPhone11,6", "iPhone XS Max"),
    ("iPhone11,8", "iPhone XR"),
    ("iPhone12,1", "iPhone 11"),
    ("iPhone12,3", "iPhone 11 Pro"),
    ("iPhone12,5", "iPhone 11 Pro Max"),
    ("iPhone12,8", "iPhone SE (2nd generation)"),
    ("iPhone13,1", "iPhone 12 mini"),
    ("iPhone13,2", "iPhone 12"),
    ("iPhone13,3", "iPhone 12 Pro"),
    ("iPhone13,4", "iPhone 12 Pro Max"),
    ("iPhone14,2", "iPhone 13 Pro"),
    ("iPhone14,3", "iPhone 13 Pro Max"),
    ("iPhone14,4", "iPhone 13 mini"),
    ("iPhone14,5", "iPhone 13"),
    ("iPhone14,6", "iPhone SE (3rd generation)"),
    ("iPhone14,7", "iPhone 14"),
    ("iPhone14,8", "iPhone 14 Plus"),
    ("iPhone15,2", "iPhone 14 Pro"),
    ("iPhone15,3", "iPhone 14 Pro Max"),
    ("iPhone15,4", "iPhone 15"),
    ("iPhone15,5", "iPhone 15 Plus"),
    ("iPhone16,1", "iPhone 15 Pro"),
    ("iPhone16,2", "iPhone 15 Pro Max"),
    ("iPhone17,1", "iPhone 16 Pro"),
    ("iPhone17,2", "iPhone 16 Pro Max"),
    ("iPhone17,3", "iPhone 16"),
    ("iPhone17,4", "iPhone 16 Plus"),
    ("iPhone17,5", "iPhone 16e"),
    ("iPhone18,1", "iPhone 17 Pro"),
    ("iPhone18,2", "iPhone 17 Pro Max"),
    ("iPhone18,3", "iPhone 17"),
    ("iPhone18,4", "iPhone Air"),
    ("iPhone2,1", "iPhone 3GS"),
    ("iPhone3,1", "iPhone 4"),
    ("iPhone3,2", "iPhone 4"),
    ("iPhone3,3", "iPhone 4"),
    ("iPhone4,1", "iPhone 4s"),
    ("iPhone5,1", "iPhone 5"),
    ("iPhone5,2", "iPhone 5"),
    ("iPhone5,3", "iPhone 5c"),
    ("iPhone5,4", "iPhone 5c"),
    ("iPhone6,1", "iPhone 5s"),
    ("iPhone6,2", "iPhone 5s"),
    ("iPhone7,1", "iPhone 6 Plus"),
    ("iPhone7,2", "iPhone 6"),
    ("iPhone8,1", "iPhone 6s"),
    ("iPhone8,2", "iPhone 6s Plus"),
    ("iPhone8,4", "iPhone SE"),
    ("iPhone9,1", "iPhone 7"),
    ("iPhone9,2", "iPhone 7 Plus"),
    ("iPhone9,3", "iPhone 7"),
    ("iPhone9,4", "iPhone 7 Plus"),
    ("iPod1,1", "iPod touch"),
    ("iPod2,1", "iPod touch (2nd generation)"),
    ("iPod3,1", "iPod touch (3rd generation)"),
    ("iPod4,1", "iPod touch (4th generation)"),
    ("iPod5,1", "iPod touch (5th generation)"),
    ("iPod7,1", "iPod touch (6th generation)"),
    ("iPod9,1", "iPod touch (7th generation)"),
    ("x86_64", "Simulator"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_identifiers() {
        let cases: &[(&str, &str, DeviceType)] = &[
            ("iPhone1,1", "iPhone", DeviceType::Mobile),
            ("iPhone3,2", "iPhone 4", DeviceType::Mobile),
            ("iPhone8,4", "iPhone SE", DeviceType::Mobile),
            ("iPhone10,6", "iPhone X", DeviceType::Mobile),
            (
                "iPhone12,8",
                "iPhone SE (2nd generation)",
                DeviceType::Mobile,
            ),
            ("iPhone14,2", "iPhone 13 Pro", DeviceType::Mobile),
            ("iPhone15,4", "iPhone 15", DeviceType::Mobile),
            ("iPhone16,2", "iPhone 15 Pro Max", DeviceType::Mobile),
            ("iPhone17,3", "iPhone 16", DeviceType::Mobile),
            ("iPhone17,5", "iPhone 16e", DeviceType::Mobile),
            ("iPod9,1", "iPod touch (7th generation)", DeviceType::Mobile),
            ("iPad13,1", "iPad Air (4th generation)", DeviceType::Tablet),
            (
                "iPad13,10",
                "iPad Pro (12.9-inch) (5th generation)",
                DeviceType::Tablet,
            ),
            ("iPad13,18", "iPad (10th generation)", DeviceType::Tablet),
            ("iPad14,1", "iPad mini (6th generation)", DeviceType::Tablet),
            ("iPad16,3", "iPad Pro 11-inch (M4)", DeviceType::Tablet),
            ("iPad2,5", "iPad mini", DeviceType::Tablet),
            ("AppleTV6,2", "Apple TV 4K", DeviceType::Other),
            ("x86_64", "Simulator", DeviceType::Other),
            ("arm64", "Simulator", DeviceType::Other),
            ("i386", "Simulator", DeviceType::Other),
        ];
        for &(identifier, name, kind) in cases {
            // A known identifier's own family decides its type, whatever the client claims.
            for hint in ["", "tablet", "mobile"] {
                assert_eq!(
                    mobile_device(identifier, hint),
                    (Cow::Borrowed(name), kind),
                    "{identifier} with hint {hint:?}"
                );
            }
        }
    }

    #[test]
    fn unknown_identifiers_keep_their_text() {
        let cases: &[(&str, &str, DeviceType)] = &[
            ("iPhone99,1", "", DeviceType::Mobile),
            ("iPhone99,1", "tablet", DeviceType::Mobile),
            ("iPod99,1", "", DeviceType::Mobile),
            ("iPad99,1", "mobile", DeviceType::Tablet),
            ("Watch7,1", "", DeviceType::Other),
            ("Pixel 7", "", DeviceType::Mobile),
            ("Pixel 7", "mobile", DeviceType::Mobile),
            ("SM-X710", "tablet", DeviceType::Tablet),
            ("SM-X710", "Tablet", DeviceType::Tablet),
            ("SM-X710", " TABLET ", DeviceType::Tablet),
            ("Chromecast", "tv", DeviceType::Other),
            ("Chromecast", "other", DeviceType::Other),
            ("SM-S918B", "gibberish", DeviceType::Mobile),
            ("", "", DeviceType::Mobile),
            ("iphone14,2", "", DeviceType::Mobile),
        ];
        for &(identifier, hint, kind) in cases {
            let (name, got) = mobile_device(identifier, hint);
            assert!(
                matches!(name, Cow::Borrowed(n) if n == identifier),
                "{identifier}"
            );
            // Lower-case "iphone" is not Apple's spelling: only the hint and the default apply.
            assert_eq!(got, kind, "{identifier} with hint {hint:?}");
        }
    }

    #[test]
    fn table_is_sorted_and_unique() {
        for pair in APPLE_MODELS.windows(2) {
            if let [(a, _), (b, _)] = pair {
                assert!(a < b, "{a} must sort before {b}");
            }
        }
    }

    #[test]
    fn every_table_entry_is_found_and_typed() {
        for &(identifier, name) in APPLE_MODELS {
            let (got, kind) = mobile_device(identifier, "");
            assert_eq!(got, name, "{identifier}");
            let expected = match DeviceType::of_apple_family(identifier) {
                _ if name == SIMULATOR => DeviceType::Other,
                Some(kind) => kind,
                None => panic!("{identifier} has no known family prefix"),
            };
            assert_eq!(kind, expected, "{identifier}");
        }
    }

    #[test]
    fn type_spellings() {
        assert_eq!(DeviceType::Mobile.as_str(), "mobile");
        assert_eq!(DeviceType::Tablet.as_str(), "tablet");
        assert_eq!(DeviceType::Other.as_str(), "other");
    }
}
