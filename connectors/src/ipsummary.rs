//! IP-address summaries of log snapshots: which addresses a subject used, and when.
//!
//! A notification to the FBI lists the IP addresses the suspect used, with times. Every
//! identity-log and SIEM snapshot feeds each vendor record it writes to an [`IpCollector`]
//! (one record at a time, as the page or stream is written: never the whole export), with
//! that vendor's [`IpFields`]. The collector keeps, per distinct address:
//!
//! - `first_seen` / `last_seen`: RFC 3339 UTC times, compared as instants (not as text);
//!   null only when no record of that address carried a readable time;
//! - `events`: how many records carried the address;
//! - `country`: the first non-empty country the vendor gave with it (null if none).
//!
//! Its output (merged into the snapshot's output by [`IpCollector::add_to`]) is
//! `ip_addresses: [{ip, first_seen, last_seen, events, country}]`, sorted by `first_seen`
//! (addresses without a time last) then by address, and `ip_addresses_truncated`. At most
//! [`MAX_IPS`] distinct addresses are kept, so a snapshot's output stays small whatever the
//! export's size; once that many are held, records of further addresses are not counted and
//! `ip_addresses_truncated` is true (the artifact itself still has every record).
//!
//! A value counts as an address only if it parses as one (`std::net::IpAddr`, written in
//! its canonical form: IPv4-mapped IPv6 addresses become IPv4); anything else, such as a
//! host name, `unknown` or an address with a port, is ignored. Where a vendor has several
//! candidate fields ([`IpFields::ip`]), the first that holds a valid address wins; a list
//! (a multivalue field) gives its first element.
//!
//! Times: RFC 3339, and for Splunk's `_time` also the forms Splunk renders with other time
//! formats (`2024-06-01 10:00:00.000 +0000`, an offset without a colon, a trailing `UTC`
//! or `GMT`) and Unix epoch seconds or milliseconds (numbers or numeric strings; see
//! [`Epoch`]). A time without a zone is not guessed at: the record still counts, its time
//! does not.

use std::collections::HashMap;
use std::net::IpAddr;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, TimeZone, Utc};
use serde_json::{json, Value};

use crate::catalog::FieldDecl;

/// The most distinct addresses one snapshot's summary keeps.
pub const MAX_IPS: usize = 500;

/// The `ip_addresses` output, as snapshot actions declare it.
pub const IP_ADDRESSES_OUTPUT: FieldDecl = FieldDecl {
    name: "ip_addresses",
    ty: "array",
    required: true,
    description: "distinct IP addresses in the records, [{ip, first_seen, last_seen (RFC 3339 UTC), events, country}], by first_seen then ip; at most 500",
};

/// The `ip_addresses_truncated` output.
pub const IP_ADDRESSES_TRUNCATED_OUTPUT: FieldDecl = FieldDecl {
    name: "ip_addresses_truncated",
    ty: "boolean",
    required: true,
    description: "true when more than 500 distinct addresses occurred and the rest were left out of ip_addresses",
};

/// How a numeric time is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Epoch {
    /// Numbers are not times.
    None,
    /// Unix seconds, possibly fractional; a value too large to be seconds (after the year
    /// 5000) is read as milliseconds (Splunk shows both).
    Seconds,
    /// Unix milliseconds (Elasticsearch's `epoch_millis`).
    Millis,
}

/// One candidate address field, and where the vendor puts the country that goes with it.
#[derive(Debug, Clone, Copy)]
pub struct IpSource {
    /// Path segments, e.g. `["client", "ipAddress"]`.
    pub ip: &'static [&'static str],
    pub country: Option<&'static [&'static str]>,
}

/// Where one vendor's records keep their address, time and country.
#[derive(Debug, Clone, Copy)]
pub struct IpFields {
    /// Candidates in order of preference.
    pub ip: &'static [IpSource],
    /// Time fields in order of preference.
    pub time: &'static [&'static [&'static str]],
    pub epoch: Epoch,
}

/// Okta System Log `LogEvent`: `client.ipAddress`, `published`,
/// `client.geographicalContext.country` (a country name).
pub const OKTA_SYSTEM_LOG: IpFields = IpFields {
    ip: &[IpSource {
        ip: &["client", "ipAddress"],
        country: Some(&["client", "geographicalContext", "country"]),
    }],
    time: &[&["published"]],
    epoch: Epoch::None,
};

/// Microsoft Graph `signIn`: `ipAddress`, `createdDateTime`, `location.countryOrRegion`
/// (a two-letter code).
pub const ENTRA_SIGN_INS: IpFields = IpFields {
    ip: &[IpSource {
        ip: &["ipAddress"],
        country: Some(&["location", "countryOrRegion"]),
    }],
    time: &[&["createdDateTime"]],
    epoch: Epoch::None,
};

/// Microsoft Graph `directoryAudit`: `initiatedBy.user.ipAddress`, `activityDateTime` (no
/// country).
pub const ENTRA_DIRECTORY_AUDITS: IpFields = IpFields {
    ip: &[IpSource {
        ip: &["initiatedBy", "user", "ipAddress"],
        country: None,
    }],
    time: &[&["activityDateTime"]],
    epoch: Epoch::None,
};

/// Google Reports API `Activity`: `ipAddress`, `id.time`, `networkInfo.regionCode`
/// (ISO 3166-1 alpha-2).
pub const GOOGLE_LOGIN_ACTIVITY: IpFields = IpFields {
    ip: &[IpSource {
        ip: &["ipAddress"],
        country: Some(&["networkInfo", "regionCode"]),
    }],
    time: &[&["id", "time"]],
    epoch: Epoch::None,
};

/// A Splunk export row's `result`: the first valid of `src_ip`, `src`, `clientip`,
/// `client_ip`, `ip`; time `_time`.
pub const SPLUNK_RESULT: IpFields = IpFields {
    ip: &[
        IpSource {
            ip: &["src_ip"],
            country: None,
        },
        IpSource {
            ip: &["src"],
            country: None,
        },
        IpSource {
            ip: &["clientip"],
            country: None,
        },
        IpSource {
            ip: &["client_ip"],
            country: None,
        },
        IpSource {
            ip: &["ip"],
            country: None,
        },
    ],
    time: &[&["_time"]],
    epoch: Epoch::Seconds,
};

/// An Elasticsearch hit (ECS fields under `_source`): the first valid of `source.ip`,
/// `client.ip`, `related.ip` (its first element); time `@timestamp`; country the ECS
/// `geo.country_iso_code` next to the address used.
pub const ELASTICSEARCH_HIT: IpFields = IpFields {
    ip: &[
        IpSource {
            ip: &["_source", "source", "ip"],
            country: Some(&["_source", "source", "geo", "country_iso_code"]),
        },
        IpSource {
            ip: &["_source", "client", "ip"],
            country: Some(&["_source", "client", "geo", "country_iso_code"]),
        },
        IpSource {
            ip: &["_source", "related", "ip"],
            country: None,
        },
    ],
    time: &[&["_source", "@timestamp"]],
    epoch: Epoch::Millis,
};

#[derive(Debug, Clone)]
struct Seen {
    first: Option<DateTime<Utc>>,
    last: Option<DateTime<Utc>>,
    events: u64,
    country: Option<String>,
}

/// Collects the addresses of one snapshot, record by record. Bounded: at most
/// [`MAX_IPS`] entries whatever is fed.
#[derive(Debug, Clone)]
pub struct IpCollector {
    fields: IpFields,
    seen: HashMap<IpAddr, Seen>,
    truncated: bool,
    cap: usize,
    /// Only records whose value at this path is this string count.
    only: Option<(&'static [&'static str], String)>,
}

impl IpCollector {
    pub fn new(fields: IpFields) -> IpCollector {
        IpCollector::with_cap(fields, MAX_IPS)
    }

    /// A collector keeping at most `cap` addresses (tests use small caps).
    pub fn with_cap(fields: IpFields, cap: usize) -> IpCollector {
        IpCollector {
            fields,
            seen: HashMap::new(),
            truncated: false,
            cap,
            only: None,
        }
    }

    /// Count only records whose value at `path` is `value`: a log that also holds events
    /// about the subject done by others (an admin suspending them) must not list the
    /// others' addresses as the subject's.
    pub fn only_where(mut self, path: &'static [&'static str], value: &str) -> IpCollector {
        self.only = Some((path, value.to_string()));
        self
    }

    /// Take one vendor record into account. Records without a valid address are ignored.
    pub fn feed(&mut self, record: &Value) {
        if let Some((path, want)) = &self.only {
            if lookup(record, path).and_then(Value::as_str) != Some(want.as_str()) {
                return;
            }
        }
        let Some((ip, source)) = self.fields.ip.iter().find_map(|s| {
            let v = first_of(lookup(record, s.ip)?)?;
            Some((parse_ip(v)?, s))
        }) else {
            return;
        };
        if !self.seen.contains_key(&ip) && self.seen.len() >= self.cap {
            self.truncated = true;
            return;
        }
        let time = self
            .fields
            .time
            .iter()
            .find_map(|p| parse_time(first_of(lookup(record, p)?)?, self.fields.epoch));
        let country = source
            .country
            .and_then(|p| lookup(record, p))
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|c| !c.is_empty());
        let entry = self.seen.entry(ip).or_insert(Seen {
            first: None,
            last: None,
            events: 0,
            country: None,
        });
        entry.events += 1;
        if let Some(t) = time {
            if entry.first.is_none_or(|f| t < f) {
                entry.first = Some(t);
            }
            if entry.last.is_none_or(|l| t > l) {
                entry.last = Some(t);
            }
        }
        if entry.country.is_none() {
            entry.country = country.map(str::to_string);
        }
    }

    /// Whether addresses were left out because the cap was reached.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// The distinct addresses kept so far.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// `[{ip, first_seen, last_seen, events, country}]`, by `first_seen` (untimed last),
    /// then by address.
    pub fn addresses(&self) -> Value {
        let mut all: Vec<(&IpAddr, &Seen)> = self.seen.iter().collect();
        all.sort_by(|(a_ip, a), (b_ip, b)| {
            match (a.first, b.first) {
                (Some(x), Some(y)) => x.cmp(&y),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            }
            .then_with(|| a_ip.cmp(b_ip))
        });
        Value::Array(
            all.into_iter()
                .map(|(ip, s)| {
                    json!({
                        "ip": ip.to_string(),
                        "first_seen": s.first.map(rfc3339),
                        "last_seen": s.last.map(rfc3339),
                        "events": s.events,
                        "country": s.country,
                    })
                })
                .collect(),
        )
    }

    /// Set `ip_addresses` and `ip_addresses_truncated` on a snapshot's output object.
    pub fn add_to(&self, output: &mut Value) {
        if let Some(obj) = output.as_object_mut() {
            obj.insert("ip_addresses".into(), self.addresses());
            obj.insert("ip_addresses_truncated".into(), Value::Bool(self.truncated));
        }
    }
}

/// The fields of a snapshot that collected nothing (a user not found).
pub fn add_empty(output: &mut Value) {
    if let Some(obj) = output.as_object_mut() {
        obj.insert("ip_addresses".into(), Value::Array(Vec::new()));
        obj.insert("ip_addresses_truncated".into(), Value::Bool(false));
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// The value at `path`, reading nested objects; where a level has no such key, a key that
/// joins several segments with dots (Elasticsearch documents may store `"source.ip"`
/// flat) is tried too.
fn lookup<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let Some((first, rest)) = path.split_first() else {
        return Some(value);
    };
    let obj = value.as_object()?;
    if let Some(found) = obj.get(*first).and_then(|v| lookup(v, rest)) {
        return Some(found);
    }
    (2..=path.len()).find_map(|n| {
        let key = path[..n].join(".");
        obj.get(&key).and_then(|v| lookup(v, &path[n..]))
    })
}

/// A multivalue field gives its first element; null is absent.
fn first_of(value: &Value) -> Option<&Value> {
    match value {
        Value::Array(items) => items.first().filter(|v| !v.is_null()),
        Value::Null => None,
        v => Some(v),
    }
}

fn parse_ip(value: &Value) -> Option<IpAddr> {
    let text = value.as_str()?.trim();
    // Bound the work on hostile input: no address is longer than 45 characters.
    if text.is_empty() || text.len() > 64 {
        return None;
    }
    text.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// A time as the vendor wrote it, as an instant; None when it cannot be read with
/// certainty.
pub fn parse_time(value: &Value, epoch: Epoch) -> Option<DateTime<Utc>> {
    match value {
        Value::String(s) => parse_time_text(s.trim(), epoch),
        Value::Number(n) => from_epoch(n.as_f64()?, epoch),
        _ => None,
    }
}

fn parse_time_text(s: &str, epoch: Epoch) -> Option<DateTime<Utc>> {
    if s.is_empty() || s.len() > 64 {
        return None;
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    if epoch != Epoch::None && s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return from_epoch(s.parse::<f64>().ok()?, epoch);
    }
    if epoch != Epoch::Seconds {
        return None;
    }
    // Splunk with another `time_format`: `T` or a space, fractions optional, then an
    // offset with or without a colon, or a UTC zone name.
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f%z",
        "%Y-%m-%d %H:%M:%S%.f%z",
        "%Y-%m-%d %H:%M:%S%.f %z",
        "%Y-%m-%dT%H:%M:%S%.f %z",
    ] {
        if let Ok(t) = DateTime::parse_from_str(s, fmt) {
            return Some(t.with_timezone(&Utc));
        }
    }
    let utc_named = ["UTC", "GMT", "Z"].iter().find_map(|z| {
        s.strip_suffix(z)
            .filter(|rest| !rest.is_empty())
            .map(str::trim_end)
    });
    let local = utc_named?;
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
        .iter()
        .find_map(|fmt| NaiveDateTime::parse_from_str(local, fmt).ok())
        .map(|n| Utc.from_utc_datetime(&n))
}

fn from_epoch(n: f64, epoch: Epoch) -> Option<DateTime<Utc>> {
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    let millis = match epoch {
        Epoch::None => return None,
        // 1e11 seconds is after the year 5000: such a value is milliseconds.
        Epoch::Seconds if n >= 1e11 => n,
        Epoch::Seconds => n * 1000.0,
        Epoch::Millis => n,
    };
    if millis > 1e15 {
        return None;
    }
    DateTime::<Utc>::from_timestamp_millis(millis.round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn okta(ip: &str, at: &str, country: &str) -> Value {
        json!({"published": at, "client": {"ipAddress": ip,
            "geographicalContext": {"country": country}}})
    }

    #[test]
    fn merges_per_address_comparing_instants() {
        let mut c = IpCollector::new(OKTA_SYSTEM_LOG);
        // Out of order, and with offsets: `+02:00` at 11:00 is 09:00 UTC, before 10:00Z.
        c.feed(&okta("198.51.100.23", "2024-06-01T10:00:00Z", ""));
        c.feed(&okta(
            "198.51.100.23",
            "2024-06-01T11:00:00+02:00",
            "United States",
        ));
        c.feed(&okta("198.51.100.23", "2024-06-03T08:30:00.250Z", "Canada"));
        c.feed(&okta("192.0.2.14", "2024-06-01T09:30:00Z", "China"));
        c.feed(&json!({"published": "2024-06-01T00:00:00Z", "client": {"ipAddress": null}}));
        c.feed(&json!({"published": "2024-06-01T00:00:00Z"}));
        c.feed(&okta("not-an-ip", "2024-06-01T00:00:00Z", "X"));
        assert_eq!(
            c.addresses(),
            json!([
                {"ip": "198.51.100.23", "first_seen": "2024-06-01T09:00:00Z",
                 "last_seen": "2024-06-03T08:30:00.250Z", "events": 3, "country": "United States"},
                {"ip": "192.0.2.14", "first_seen": "2024-06-01T09:30:00Z",
                 "last_seen": "2024-06-01T09:30:00Z", "events": 1, "country": "China"},
            ])
        );
        assert!(!c.truncated());
    }

    #[test]
    fn only_the_subjects_own_records_count_when_asked() {
        let mut c = IpCollector::new(OKTA_SYSTEM_LOG).only_where(&["actor", "id"], "00u1");
        let mut own = okta("203.0.113.45", "2024-06-01T10:00:00Z", "United States");
        own["actor"] = json!({"id": "00u1"});
        let mut admin = okta("198.51.100.7", "2024-06-01T11:00:00Z", "United States");
        admin["actor"] = json!({"id": "00u0admin"});
        admin["target"] = json!([{"id": "00u1"}]);
        c.feed(&own);
        c.feed(&admin);
        c.feed(&okta("192.0.2.1", "2024-06-01T12:00:00Z", ""));
        let a = c.addresses();
        assert_eq!(a.as_array().unwrap().len(), 1, "{a}");
        assert_eq!(a[0]["ip"], "203.0.113.45");
    }

    #[test]
    fn same_first_seen_sorts_by_address_and_untimed_go_last() {
        let mut c = IpCollector::new(ENTRA_SIGN_INS);
        for ip in ["203.0.113.9", "2001:db8::1", "198.51.100.7"] {
            c.feed(&json!({"ipAddress": ip, "createdDateTime": "2024-06-01T00:00:00Z"}));
        }
        c.feed(&json!({"ipAddress": "192.0.2.1", "createdDateTime": "yesterday"}));
        let ips: Vec<String> = c
            .addresses()
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["ip"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            ips,
            ["198.51.100.7", "203.0.113.9", "2001:db8::1", "192.0.2.1"]
        );
        assert_eq!(c.addresses()[3]["first_seen"], Value::Null);
        assert_eq!(c.addresses()[3]["events"], 1);
    }

    #[test]
    fn addresses_are_canonical_and_bogus_ones_ignored() {
        let mut c = IpCollector::new(ENTRA_SIGN_INS);
        for ip in [
            " 2001:DB8:0:0::1 ",
            "::ffff:198.51.100.4",
            "198.51.100.4",
            "198.51.100.256",
            "198.51.100.4:443",
            "host.example.com",
            "",
        ] {
            c.feed(&json!({"ipAddress": ip, "createdDateTime": "2024-06-01T00:00:00Z"}));
        }
        c.feed(&json!({"ipAddress": 3232235777u64}));
        let a = c.addresses();
        assert_eq!(a.as_array().unwrap().len(), 2, "{a}");
        assert_eq!(a[0]["ip"], "198.51.100.4");
        assert_eq!(a[0]["events"], 2);
        assert_eq!(a[1]["ip"], "2001:db8::1");
    }

    #[test]
    fn the_cap_keeps_counting_known_addresses_only() {
        let mut c = IpCollector::with_cap(ENTRA_SIGN_INS, 2);
        let rec = |ip: &str| json!({"ipAddress": ip, "createdDateTime": "2024-06-01T00:00:00Z"});
        c.feed(&rec("192.0.2.1"));
        c.feed(&rec("192.0.2.2"));
        assert!(!c.truncated());
        c.feed(&rec("192.0.2.3"));
        c.feed(&rec("192.0.2.1"));
        assert!(c.truncated());
        assert_eq!(c.len(), 2);
        let mut out = json!({"records": 4});
        c.add_to(&mut out);
        assert_eq!(out["ip_addresses_truncated"], true);
        assert_eq!(out["ip_addresses"][0]["events"], 2);
        assert_eq!(out["ip_addresses"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn splunk_fields_in_order_and_its_time_forms() {
        let mut c = IpCollector::new(SPLUNK_RESULT);
        // `src` is a host name: `clientip` is the first valid address.
        c.feed(&json!({"src": "laptop-7", "clientip": "203.0.113.5", "_time": "2024-06-01T10:00:00.000+00:00"}));
        c.feed(&json!({"src_ip": ["203.0.113.5", "192.0.2.9"], "_time": "1717236000"}));
        c.feed(&json!({"ip": "203.0.113.5", "_time": 1717250400.5}));
        c.feed(&json!({"ip": "203.0.113.5", "_time": "2024-06-01 02:00:00.000 -0500"}));
        c.feed(&json!({"ip": "203.0.113.5", "_time": "2024-05-31 23:00:00 UTC"}));
        c.feed(&json!({"ip": "203.0.113.5", "_time": "1717200000000"}));
        // No zone: counted, not timed.
        c.feed(&json!({"ip": "203.0.113.5", "_time": "2024-01-01 00:00:00"}));
        let a = c.addresses();
        assert_eq!(a.as_array().unwrap().len(), 1, "{a}");
        assert_eq!(a[0]["events"], 7);
        assert_eq!(a[0]["first_seen"], "2024-05-31T23:00:00Z");
        assert_eq!(a[0]["last_seen"], "2024-06-01T14:00:00.500Z");
    }

    #[test]
    fn elasticsearch_nested_flat_and_related() {
        let mut c = IpCollector::new(ELASTICSEARCH_HIT);
        c.feed(&json!({"_source": {"@timestamp": "2024-06-01T10:00:00Z",
            "source": {"ip": "198.51.100.1", "geo": {"country_iso_code": "US"}}}}));
        c.feed(&json!({"_source": {"@timestamp": "2024-06-01T11:00:00Z",
            "source.ip": "198.51.100.1"}}));
        c.feed(&json!({"_source": {"@timestamp": 1717236000000u64,
            "related": {"ip": ["2001:db8::7", "198.51.100.1"]}}}));
        c.feed(&json!({"_source": {"@timestamp": "2024-06-01T12:00:00Z",
            "client": {"ip": "192.0.2.8", "geo": {"country_iso_code": "KP"}},
            "source": {"ip": "unknown"}}}));
        let a = c.addresses();
        assert_eq!(a[0]["ip"], "198.51.100.1");
        assert_eq!(a[0]["events"], 2);
        assert_eq!(a[0]["country"], "US");
        assert_eq!(a[0]["last_seen"], "2024-06-01T11:00:00Z");
        assert_eq!(a[1]["ip"], "2001:db8::7");
        assert_eq!(a[1]["first_seen"], "2024-06-01T10:00:00Z");
        assert_eq!(a[2]["ip"], "192.0.2.8");
        assert_eq!(a[2]["country"], "KP");
    }

    #[test]
    fn no_panic_on_odd_values() {
        for epoch in [Epoch::None, Epoch::Seconds, Epoch::Millis] {
            for v in [
                json!(-1),
                json!(1e300),
                json!("9".repeat(40)),
                json!("1.2.3"),
                json!(f64::MAX),
                json!({"a": 1}),
                json!("2024-13-45T99:99:99Z"),
            ] {
                let _ = parse_time(&v, epoch);
            }
        }
        assert!(parse_time(&json!(1717236000), Epoch::None).is_none());
    }

    #[test]
    fn splunk_time_renderings_are_the_same_instant() {
        let at = |s: &str| parse_time(&json!(s), Epoch::Seconds).map(rfc3339);
        let want = Some("2024-06-01T07:00:00Z".to_string());
        for s in [
            "2024-06-01T07:00:00.000+00:00",
            "2024-06-01T02:00:00.000-05:00",
            "2024-06-01T02:00:00.000-0500",
            "2024-06-01 02:00:00.000 -0500",
            "2024-06-01 02:00:00-0500",
            "2024-06-01 07:00:00 UTC",
            "2024-06-01T07:00:00 GMT",
            "2024-06-01 07:00:00.000Z",
            "1717225200",
            "1717225200.000",
            "1717225200000",
        ] {
            assert_eq!(at(s), want, "{s}");
        }
        for s in [
            "2024-06-01 07:00:00",
            "07:00",
            "UTC",
            "06/01/2024 07:00:00 PDT",
        ] {
            assert_eq!(at(s), None, "{s}");
        }
        // Elasticsearch numbers are milliseconds; RFC 3339 only for the others.
        assert_eq!(
            parse_time(&json!(1717225200000u64), Epoch::Millis).map(rfc3339),
            want
        );
        assert_eq!(
            parse_time(&json!("2024-06-01 07:00:00 UTC"), Epoch::None),
            None
        );
    }
}
