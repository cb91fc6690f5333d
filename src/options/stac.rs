//! `[ingest]`: where `tessera ingest` / `tessera watch` find new scenes when they come from a
//! STAC API (Item Search) or a static STAC catalog instead of a local folder.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use clap::Args;
use serde::{Deserialize, Deserializer};

use super::InvalidOption;

/// Items per page asked of a STAC API when `page_size` is not given.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Seconds a request may take (connecting, then the whole answer) when `http_timeout` is not
/// given.
pub const DEFAULT_HTTP_TIMEOUT: f64 = 30.0;
/// The most Items a page may be asked for.
pub const MAX_PAGE_SIZE: usize = 10_000;

/// A bounding box in WGS 84 degrees: west, south, east, north (west > east crosses the
/// antimeridian).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bbox(pub [f64; 4]);

impl Bbox {
    /// A box from four numbers.
    ///
    /// # Errors
    /// Not four finite numbers, longitudes outside -180..180, latitudes outside -90..90, or
    /// south above north.
    pub fn new(v: &[f64]) -> Result<Bbox, String> {
        let [w, s, e, n] = v else {
            return Err(format!(
                "needs 4 numbers W,S,E,N (degrees), got {}",
                v.len()
            ));
        };
        if !v.iter().all(|x| x.is_finite()) {
            return Err("numbers must be finite".into());
        }
        if !(-180.0..=180.0).contains(w) || !(-180.0..=180.0).contains(e) {
            return Err(format!(
                "longitudes {w} and {e} must be within -180..180 (W,S,E,N in degrees)"
            ));
        }
        if !(-90.0..=90.0).contains(s) || !(-90.0..=90.0).contains(n) {
            return Err(format!(
                "latitudes {s} and {n} must be within -90..90 (W,S,E,N in degrees)"
            ));
        }
        if s > n {
            return Err(format!("south {s} is above north {n} (W,S,E,N)"));
        }
        Ok(Bbox([*w, *s, *e, *n]))
    }
}

impl FromStr for Bbox {
    type Err = String;

    fn from_str(s: &str) -> Result<Bbox, String> {
        let v = s
            .split(',')
            .map(|p| {
                p.trim()
                    .parse::<f64>()
                    .map_err(|_| format!("'{s}' is not W,S,E,N (four numbers)"))
            })
            .collect::<Result<Vec<f64>, String>>()?;
        Bbox::new(&v)
    }
}

impl fmt::Display for Bbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [w, s, e, n] = self.0;
        write!(f, "{w},{s},{e},{n}")
    }
}

/// `bbox = [W, S, E, N]` in a pipeline file.
fn bbox<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Bbox>, D::Error> {
    match Option::<Vec<f64>>::deserialize(d)? {
        None => Ok(None),
        Some(v) => Bbox::new(&v).map(Some).map_err(serde::de::Error::custom),
    }
}

/// `[ingest]` of a pipeline file and the matching flags of `ingest` / `watch`: a STAC API to
/// search or a static STAC catalog to walk. Flags given on the command line override the file.
#[derive(Clone, Debug, Default, Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[command(next_help_heading = "STAC sources")]
pub struct StacOptions {
    /// A STAC API (its landing page URL) whose Item Search lists the scenes; pages are
    /// followed through their `next` links.
    #[arg(long, value_name = "URL")]
    pub stac_api: Option<String>,
    /// A static STAC catalog (URL or local file of a Catalog or Collection); its child and
    /// item links are followed.
    #[arg(long, value_name = "URL|FILE")]
    pub stac_catalog: Option<String>,
    /// --stac-api: only Items of these collections (comma-separated ids).
    #[arg(long, value_name = "C[,C...]", value_delimiter = ',')]
    pub collections: Vec<String>,
    /// --stac-api: only Items intersecting this box (WGS 84 degrees, W,S,E,N).
    #[arg(long, value_name = "W,S,E,N", allow_hyphen_values = true)]
    #[serde(deserialize_with = "bbox")]
    pub bbox: Option<Bbox>,
    /// --stac-api: only Items of this time or interval (RFC 3339, `START/END`, `..` for an
    /// open end), e.g. 2024-06-01T00:00:00Z/2024-07-01T00:00:00Z.
    #[arg(long, value_name = "RANGE")]
    pub datetime: Option<String>,
    /// --stac-api: how to search, GET or POST (default: POST when the API offers it, else
    /// GET); the pages that follow are asked for as their `next` links say.
    #[arg(long, value_name = "GET|POST")]
    pub search_method: Option<String>,
    /// --stac-api: Items asked for per page (default 100).
    #[arg(long, value_name = "N")]
    pub page_size: Option<usize>,
    /// Seconds an HTTP request of the catalog or API may take (default 30).
    #[arg(long, value_name = "SECONDS")]
    pub http_timeout: Option<f64>,
}

fn instant_regex() -> &'static regex::Regex {
    static RE: OnceLock<regex::Regex> = OnceLock::new();
    RE.get_or_init(|| {
        regex::Regex::new(r"(?i)^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
            .expect("a valid regex")
    })
}

/// Check a STAC `datetime` parameter: one RFC 3339 instant, or `START/END` with `..` (or
/// nothing) for an open end.
fn check_datetime(s: &str) -> Result<(), String> {
    let instant = |t: &str| {
        if instant_regex().is_match(t) {
            Ok(())
        } else {
            Err(format!(
                "'{t}' is not an RFC 3339 date-time (e.g. 2024-06-01T00:00:00Z)"
            ))
        }
    };
    match s.split_once('/') {
        None => instant(s),
        Some((a, b)) => {
            let open = |t: &str| t.is_empty() || t == "..";
            if open(a) && open(b) {
                return Err(format!("'{s}' is open at both ends"));
            }
            for t in [a, b] {
                if !open(t) {
                    instant(t)?;
                }
            }
            Ok(())
        }
    }
}

fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

impl StacOptions {
    /// These options, with each one not given taken from `file` (a pipeline's `[ingest]`).
    #[must_use]
    pub fn or(self, file: &StacOptions) -> StacOptions {
        let source_given = self.stac_api.is_some() || self.stac_catalog.is_some();
        StacOptions {
            // A source on the command line replaces the file's (never one of each).
            stac_api: if source_given {
                self.stac_api
            } else {
                file.stac_api.clone()
            },
            stac_catalog: if source_given {
                self.stac_catalog
            } else {
                file.stac_catalog.clone()
            },
            collections: if self.collections.is_empty() {
                file.collections.clone()
            } else {
                self.collections
            },
            bbox: self.bbox.or(file.bbox),
            datetime: self.datetime.or_else(|| file.datetime.clone()),
            search_method: self.search_method.or_else(|| file.search_method.clone()),
            page_size: self.page_size.or(file.page_size),
            http_timeout: self.http_timeout.or(file.http_timeout),
        }
    }

    /// Whether a STAC source is given.
    #[must_use]
    pub fn is_set(&self) -> bool {
        self.stac_api.is_some() || self.stac_catalog.is_some()
    }

    /// The request timeout in seconds.
    #[must_use]
    pub fn timeout(&self) -> f64 {
        self.http_timeout.unwrap_or(DEFAULT_HTTP_TIMEOUT)
    }

    /// Check the values and that they go together.
    ///
    /// # Errors
    /// The option at fault, with the reason.
    pub fn validate(&self) -> Result<(), InvalidOption> {
        if let (Some(_), Some(_)) = (&self.stac_api, &self.stac_catalog) {
            return Err(InvalidOption::new(
                "stac_catalog",
                "and `stac_api` are two sources: give one",
            ));
        }
        if let Some(api) = &self.stac_api {
            if !is_url(api) {
                return Err(InvalidOption::new(
                    "stac_api",
                    format!("'{api}' is not an http:// or https:// URL"),
                ));
            }
        }
        if let Some(c) = &self.stac_catalog {
            if c.trim().is_empty() {
                return Err(InvalidOption::new("stac_catalog", "is empty"));
            }
        }
        if self.stac_api.is_none() {
            let search_only = [
                ("collections", !self.collections.is_empty()),
                ("bbox", self.bbox.is_some()),
                ("datetime", self.datetime.is_some()),
                ("page_size", self.page_size.is_some()),
                ("search_method", self.search_method.is_some()),
            ];
            if let Some((key, _)) = search_only.iter().find(|(_, given)| *given) {
                return Err(InvalidOption::new(
                    key,
                    "filters a STAC API's Item Search: it needs `stac_api`",
                ));
            }
        }
        if let Some(c) = self.collections.iter().find(|c| c.trim().is_empty()) {
            return Err(InvalidOption::new(
                "collections",
                format!("has an empty collection id ('{c}')"),
            ));
        }
        if let Some(m) = &self.search_method {
            if !m.eq_ignore_ascii_case("get") && !m.eq_ignore_ascii_case("post") {
                return Err(InvalidOption::new(
                    "search_method",
                    format!("'{m}' is neither GET nor POST"),
                ));
            }
        }
        if let Some(d) = &self.datetime {
            check_datetime(d).map_err(|m| InvalidOption::new("datetime", m))?;
        }
        if let Some(n) = self.page_size {
            if n == 0 || n > MAX_PAGE_SIZE {
                return Err(InvalidOption::new(
                    "page_size",
                    format!("must be between 1 and {MAX_PAGE_SIZE}, got {n}"),
                ));
            }
        }
        if let Some(t) = self.http_timeout {
            if !(t.is_finite() && t > 0.0) {
                return Err(InvalidOption::new(
                    "http_timeout",
                    format!("must be a positive number of seconds, got {t}"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_and_datetimes_are_checked() {
        assert_eq!(
            "-10,40.5,5,50".parse::<Bbox>(),
            Ok(Bbox([-10.0, 40.5, 5.0, 50.0]))
        );
        assert!("1,2,3".parse::<Bbox>().is_err());
        assert!("0,50,1,40".parse::<Bbox>().is_err());
        assert!("0,0,181,1".parse::<Bbox>().is_err());
        assert!("a,b,c,d".parse::<Bbox>().is_err());
        assert!(check_datetime("2024-06-01T00:00:00Z").is_ok());
        assert!(check_datetime("2024-06-01T00:00:00Z/..").is_ok());
        assert!(check_datetime("/2024-06-01T00:00:00.5+02:00").is_ok());
        assert!(check_datetime("../..").is_err());
        assert!(check_datetime("2024-06-01").is_err());
        assert!(check_datetime("yesterday/2024-06-01T00:00:00Z").is_err());
    }

    #[test]
    fn sources_and_filters_go_together() {
        let api = |f: fn(&mut StacOptions)| {
            let mut o = StacOptions {
                stac_api: Some("http://localhost:1/".into()),
                ..StacOptions::default()
            };
            f(&mut o);
            o.validate().map_err(|e| e.key)
        };
        assert_eq!(api(|_| {}), Ok(()));
        assert_eq!(
            api(|o| o.stac_catalog = Some("c.json".into())),
            Err("stac_catalog")
        );
        assert_eq!(
            api(|o| o.stac_api = Some("ftp://x".into())),
            Err("stac_api")
        );
        assert_eq!(api(|o| o.page_size = Some(0)), Err("page_size"));
        assert_eq!(api(|o| o.search_method = Some("get".into())), Ok(()));
        assert_eq!(
            api(|o| o.search_method = Some("PUT".into())),
            Err("search_method")
        );
        assert_eq!(api(|o| o.http_timeout = Some(-1.0)), Err("http_timeout"));
        let catalog = StacOptions {
            stac_catalog: Some("c.json".into()),
            collections: vec!["s2".into()],
            ..StacOptions::default()
        };
        let e = catalog.validate().expect_err("collections need an API");
        assert_eq!(
            e.render(crate::options::KeyStyle::Flag),
            "--collections filters a STAC API's Item Search: it needs --stac-api"
        );
        // The command line's source replaces the file's.
        let file = StacOptions {
            stac_api: Some("http://a/".into()),
            datetime: Some("2024-01-01T00:00:00Z".into()),
            ..StacOptions::default()
        };
        let merged = StacOptions {
            stac_catalog: Some("c.json".into()),
            ..StacOptions::default()
        }
        .or(&file);
        assert_eq!(merged.stac_api, None);
        assert_eq!(merged.datetime.as_deref(), Some("2024-01-01T00:00:00Z"));
    }
}
