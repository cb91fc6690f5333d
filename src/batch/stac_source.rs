//! Where `tessera ingest --stac-api` / `--stac-catalog` find their scenes: the Items of a STAC
//! API's Item Search (every page, through the `next` links, GET or POST as each link says) or
//! of a static STAC catalog (child and item links followed, relative hrefs resolved against
//! the document they appear in; local catalogs too).
//!
//! Each Item becomes a [`RemoteItem`] keyed `stac:<collection>/<id>` in the ingest state, with
//! a fingerprint made of its `updated` property (or, without one, a hash of the Item less its
//! links), so an Item is processed once and again only when it changes.
//!
//! A catalog or API that cannot be read at all is an error; a child catalog, an Item or a page
//! that cannot be read, or an Item that is not valid, is a problem of the listing: one line
//! naming its URL and the cause, while every other Item is listed.

use std::collections::{HashSet, VecDeque};
use std::io::Read;
use std::time::Duration;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use thiserror::Error;
use url::Url;

use super::state::Fingerprint;
use crate::options::{StacOptions, DEFAULT_PAGE_SIZE};

/// The largest JSON document read (a page of Items, a catalog).
const MAX_DOCUMENT_BYTES: u64 = 256 << 20;
/// The most pages of one search, and the most documents of one static catalog, read in a pass.
const MAX_DOCUMENTS: usize = 100_000;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The catalog or API cannot be read (unreachable, HTTP error, not JSON).
    #[error("{url}: {reason}")]
    Fetch { url: String, reason: String },
    /// It can be read but is not what was asked for (not a STAC API or catalog).
    #[error("{url}: {reason}")]
    Invalid { url: String, reason: String },
}

/// One Item listed by a source.
#[derive(Clone, Debug)]
pub struct RemoteItem {
    /// The ingest state key: `stac:<collection>/<id>` (`stac:<id>` without a collection).
    pub key: String,
    pub id: String,
    pub collection: Option<String>,
    /// Where the Item is (its `self` link, else where it was read): the output Item links
    /// back to it and its relative asset hrefs resolve against it.
    pub url: Url,
    pub value: Value,
    /// Changes when the Item's `updated` (or, without one, its content) changes.
    pub fingerprint: Fingerprint,
}

/// The Items of one pass, and what could not be listed.
#[derive(Debug, Default)]
pub struct Listing {
    pub items: Vec<RemoteItem>,
    /// One line each: the URL and the cause.
    pub problems: Vec<String>,
}

#[derive(Debug)]
enum Kind {
    Api {
        url: Url,
        collections: Vec<String>,
        bbox: Option<[f64; 4]>,
        datetime: Option<String>,
        page_size: usize,
        /// `Some(true)`: POST, `Some(false)`: GET, `None`: POST when offered.
        post: Option<bool>,
    },
    Catalog {
        url: Url,
    },
}

/// A STAC API or static catalog to list Items from.
#[derive(Debug)]
pub struct StacSource {
    kind: Kind,
    agent: ureq::Agent,
}

/// `s` as a URL: http(s) and file URLs as they are, anything else as a local path.
fn url_of(s: &str) -> Result<Url, SourceError> {
    let bad = |reason: String| SourceError::Invalid {
        url: s.to_string(),
        reason,
    };
    if s.contains("://") {
        let u = Url::parse(s).map_err(|e| bad(format!("not a valid URL: {e}")))?;
        return match u.scheme() {
            "http" | "https" | "file" => Ok(u),
            other => Err(bad(format!(
                "{other}:// is not supported for catalogs (http, https or a local file)"
            ))),
        };
    }
    let path = std::path::absolute(s).map_err(|e| bad(format!("not a usable path: {e}")))?;
    Url::from_file_path(&path).map_err(|()| bad("not a usable path".into()))
}

impl StacSource {
    /// The source the options name, if any (they must have been validated).
    ///
    /// # Errors
    /// A URL that does not parse.
    pub fn from_options(o: &StacOptions) -> Result<Option<StacSource>, SourceError> {
        let timeout = Duration::from_secs_f64(o.timeout());
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(timeout)
            .timeout(timeout)
            .user_agent(concat!("tessera/", env!("CARGO_PKG_VERSION")))
            .build();
        let kind = match (&o.stac_api, &o.stac_catalog) {
            (Some(api), _) => Kind::Api {
                url: url_of(api)?,
                collections: o.collections.clone(),
                bbox: o.bbox.map(|b| b.0),
                datetime: o.datetime.clone(),
                page_size: o.page_size.unwrap_or(DEFAULT_PAGE_SIZE),
                post: o
                    .search_method
                    .as_ref()
                    .map(|m| m.eq_ignore_ascii_case("post")),
            },
            (None, Some(catalog)) => Kind::Catalog {
                url: url_of(catalog)?,
            },
            (None, None) => return Ok(None),
        };
        Ok(Some(StacSource { kind, agent }))
    }

    /// The catalog's or API's URL.
    #[must_use]
    pub fn url(&self) -> &Url {
        match &self.kind {
            Kind::Api { url, .. } | Kind::Catalog { url } => url,
        }
    }

    /// Every Item of the source.
    ///
    /// # Errors
    /// The API's landing page, its first search page or the catalog's root cannot be read or
    /// is not STAC. Anything below is a problem of the listing, not an error.
    pub fn list(&self) -> Result<Listing, SourceError> {
        match &self.kind {
            Kind::Api { .. } => self.search(),
            Kind::Catalog { url } => self.walk(url),
        }
    }

    /// GET (`body` None) or POST a JSON document.
    fn fetch(&self, url: &Url, body: Option<&Value>) -> Result<Value, SourceError> {
        let fail = |reason: String| SourceError::Fetch {
            url: shown(url),
            reason,
        };
        let bytes = if url.scheme() == "file" {
            let path = url
                .to_file_path()
                .map_err(|()| fail("not a local path".into()))?;
            std::fs::read(&path).map_err(|e| fail(format!("cannot read: {e}")))?
        } else {
            let request = match body {
                None => self.agent.request_url("GET", url),
                Some(_) => self.agent.request_url("POST", url),
            }
            .set("Accept", "application/geo+json, application/json");
            let response = match body {
                None => request.call(),
                Some(b) => request
                    .set("Content-Type", "application/json")
                    .send_string(&b.to_string()),
            };
            let response = response.map_err(|e| fail(http_reason(&e)))?;
            let mut bytes = Vec::new();
            response
                .into_reader()
                .take(MAX_DOCUMENT_BYTES + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| fail(format!("reading the answer failed: {e}")))?;
            if bytes.len() as u64 > MAX_DOCUMENT_BYTES {
                return Err(fail(format!(
                    "answer larger than {} MiB",
                    MAX_DOCUMENT_BYTES >> 20
                )));
            }
            bytes
        };
        serde_json::from_slice(&bytes).map_err(|e| fail(format!("not JSON: {e}")))
    }

    /// Item Search: the landing page's `search` link (POST when offered, else GET), then every
    /// page through the `next` links.
    fn search(&self) -> Result<Listing, SourceError> {
        let Kind::Api {
            url,
            collections,
            bbox,
            datetime,
            page_size,
            post: want_post,
        } = &self.kind
        else {
            return Ok(Listing::default());
        };
        let landing = self.fetch(url, None)?;
        if !landing.is_object() || landing.get("links").is_none() {
            return Err(SourceError::Invalid {
                url: url.to_string(),
                reason: "not a STAC API landing page (no links)".into(),
            });
        }
        let searches: Vec<&Value> = links(&landing)
            .filter(|l| l.get("rel").and_then(Value::as_str) == Some("search"))
            .collect();
        let method = |l: &&Value| {
            l.get("method")
                .and_then(Value::as_str)
                .unwrap_or("GET")
                .to_ascii_uppercase()
        };
        let of = |m: &str| searches.iter().find(|l| method(l) == m);
        let chosen = match want_post {
            // The method asked for, at the link that offers it (or the API's only one).
            Some(true) => of("POST").or_else(|| searches.first()),
            Some(false) => of("GET").or_else(|| searches.first()),
            None => of("POST").or_else(|| of("GET")),
        };
        let (search_url, post) = match chosen {
            Some(l) => {
                let href = l.get("href").and_then(Value::as_str).unwrap_or("search");
                let u = url.join(href).map_err(|e| SourceError::Invalid {
                    url: url.to_string(),
                    reason: format!("search link '{href}' is not a URL: {e}"),
                })?;
                (u, want_post.unwrap_or(method(l) == "POST"))
            }
            None => {
                return Err(SourceError::Invalid {
                    url: url.to_string(),
                    reason: "not a STAC API with Item Search (no rel=search link)".into(),
                })
            }
        };
        let mut body = Map::new();
        body.insert("limit".into(), json!(page_size));
        if !collections.is_empty() {
            body.insert("collections".into(), json!(collections));
        }
        if let Some(b) = bbox {
            body.insert("bbox".into(), json!(b));
        }
        if let Some(d) = datetime {
            body.insert("datetime".into(), json!(d));
        }
        let mut request = if post {
            Request {
                url: search_url,
                body: Some(Value::Object(body)),
            }
        } else {
            let mut u = search_url;
            {
                let mut q = u.query_pairs_mut();
                q.append_pair("limit", &page_size.to_string());
                if !collections.is_empty() {
                    q.append_pair("collections", &collections.join(","));
                }
                if let Some([w, s, e, n]) = bbox {
                    q.append_pair("bbox", &format!("{w},{s},{e},{n}"));
                }
                if let Some(d) = datetime {
                    q.append_pair("datetime", d);
                }
            }
            Request { url: u, body: None }
        };
        let mut listing = Listing::default();
        let mut seen_pages = HashSet::new();
        let mut seen_items = HashSet::new();
        for page in 0..MAX_DOCUMENTS {
            let value = match self.fetch(&request.url, request.body.as_ref()) {
                Ok(v) => v,
                Err(e) if page == 0 => return Err(e),
                Err(e) => {
                    listing.problems.push(format!(
                        "{e} (page {} of the search; later pages not read)",
                        page + 1
                    ));
                    break;
                }
            };
            let Some(features) = value.get("features").and_then(Value::as_array) else {
                let e = format!(
                    "{}: not an Item Search page (no features array)",
                    request.url
                );
                if page == 0 {
                    return Err(SourceError::Invalid {
                        url: request.url.to_string(),
                        reason: "not an Item Search page (no features array)".into(),
                    });
                }
                listing.problems.push(e);
                break;
            };
            for (i, f) in features.iter().enumerate() {
                let at = format!("{} (feature {} of page {})", request.url, i + 1, page + 1);
                match item_of(f, &request.url, None) {
                    Ok(item) => {
                        if seen_items.insert(item.key.clone()) {
                            listing.items.push(item);
                        }
                    }
                    Err(reason) => listing.problems.push(format!("{at}: {reason}")),
                }
            }
            let Some(next) = next_request(&value, &request) else {
                break;
            };
            let fingerprint = format!("{} {:?}", next.url, next.body);
            if features.is_empty() || !seen_pages.insert(fingerprint) {
                // A server that sends the same page again would be followed forever.
                break;
            }
            request = next;
        }
        Ok(listing)
    }

    /// A static catalog, breadth first: child links are catalogs or collections, item links
    /// Items; each document is read once.
    fn walk(&self, root: &Url) -> Result<Listing, SourceError> {
        let mut listing = Listing::default();
        let mut queue: VecDeque<(Url, Option<Value>, Option<String>)> = VecDeque::new();
        let mut seen: HashSet<Url> = HashSet::new();
        let first = self.fetch(root, None)?;
        let kind = first.get("type").and_then(Value::as_str).unwrap_or("");
        if !matches!(
            kind,
            "Catalog" | "Collection" | "Feature" | "FeatureCollection"
        ) {
            return Err(SourceError::Invalid {
                url: shown(root),
                reason: format!("not a STAC catalog, collection or Item (type '{kind}')"),
            });
        }
        seen.insert(root.clone());
        let mut seen_items = HashSet::new();
        // (where, the document when already read, the collection of the parent)
        queue.push_back((root.clone(), Some(first), None));
        let mut count = 0;
        while let Some((url, doc, parent_collection)) = queue.pop_front() {
            count += 1;
            if count > MAX_DOCUMENTS {
                listing.problems.push(format!(
                    "{}: more than {MAX_DOCUMENTS} documents; the rest not read",
                    shown(root)
                ));
                break;
            }
            let doc = match doc {
                Some(doc) => doc,
                None => match self.fetch(&url, None) {
                    Ok(doc) => doc,
                    Err(e) => {
                        listing.problems.push(e.to_string());
                        continue;
                    }
                },
            };
            match doc.get("type").and_then(Value::as_str) {
                Some("Feature") => match item_of(&doc, &url, parent_collection.as_deref()) {
                    Ok(item) => {
                        if seen_items.insert(item.key.clone()) {
                            listing.items.push(item);
                        }
                    }
                    Err(reason) => listing.problems.push(format!("{}: {reason}", shown(&url))),
                },
                Some("Catalog" | "Collection") => {
                    let collection = (doc.get("type").and_then(Value::as_str)
                        == Some("Collection"))
                    .then(|| doc.get("id").and_then(Value::as_str).map(str::to_string))
                    .flatten()
                    .or(parent_collection);
                    for l in links(&doc) {
                        let rel = l.get("rel").and_then(Value::as_str).unwrap_or("");
                        if rel != "child" && rel != "item" {
                            continue;
                        }
                        let Some(href) = l.get("href").and_then(Value::as_str) else {
                            listing
                                .problems
                                .push(format!("{}: a {rel} link without an href", shown(&url)));
                            continue;
                        };
                        match url.join(href) {
                            Ok(u) => {
                                if seen.insert(u.clone()) {
                                    queue.push_back((u, None, collection.clone()));
                                }
                            }
                            Err(e) => listing.problems.push(format!(
                                "{}: {rel} link '{href}' is not a URL: {e}",
                                shown(&url)
                            )),
                        }
                    }
                }
                Some("FeatureCollection") => {
                    for (i, f) in doc
                        .get("features")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .enumerate()
                    {
                        match item_of(f, &url, parent_collection.as_deref()) {
                            Ok(item) => {
                                if seen_items.insert(item.key.clone()) {
                                    listing.items.push(item);
                                }
                            }
                            Err(reason) => listing.problems.push(format!(
                                "{} (feature {}): {reason}",
                                shown(&url),
                                i + 1
                            )),
                        }
                    }
                }
                other => listing.problems.push(format!(
                    "{}: not a STAC catalog, collection or Item (type {})",
                    shown(&url),
                    other.map_or("missing".to_string(), |t| format!("'{t}'"))
                )),
            }
        }
        Ok(listing)
    }
}

/// A URL as messages and links show it: a local file as its path.
pub(crate) fn shown(url: &Url) -> String {
    match url.to_file_path() {
        Ok(p) if url.scheme() == "file" => p.display().to_string(),
        _ => url.to_string(),
    }
}

/// A search request: GET `url`, or POST `body` to it.
#[derive(Debug, Clone)]
struct Request {
    url: Url,
    body: Option<Value>,
}

fn links(doc: &Value) -> impl Iterator<Item = &Value> {
    doc.get("links")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// The request a page's `next` link asks for (STAC API: `method`, `body`, `merge`).
fn next_request(page: &Value, current: &Request) -> Option<Request> {
    let link = links(page).find(|l| l.get("rel").and_then(Value::as_str) == Some("next"))?;
    let href = link.get("href").and_then(Value::as_str)?;
    let url = current.url.join(href).ok()?;
    let method = link
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or("GET")
        .to_ascii_uppercase();
    if method != "POST" {
        return Some(Request { url, body: None });
    }
    let given = link.get("body").cloned().unwrap_or_else(|| json!({}));
    let merge = link.get("merge").and_then(Value::as_bool).unwrap_or(false);
    let body = match (merge, current.body.clone(), given) {
        (true, Some(Value::Object(mut base)), Value::Object(extra)) => {
            base.extend(extra);
            Value::Object(base)
        }
        (_, _, given) => given,
    };
    Some(Request {
        url,
        body: Some(body),
    })
}

/// A request error as one short cause.
fn http_reason(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Status(code, r) => {
            format!("HTTP {code} {}", r.status_text())
        }
        ureq::Error::Transport(t) => {
            let kind = match t.kind() {
                ureq::ErrorKind::ConnectionFailed => "cannot connect",
                ureq::ErrorKind::Dns => "cannot resolve the host",
                ureq::ErrorKind::Io => "connection failed",
                _ => "request failed",
            };
            match std::error::Error::source(t) {
                Some(s) => format!("{kind}: {s}"),
                None => match t.message() {
                    Some(m) => format!("{kind}: {m}"),
                    None => kind.to_string(),
                },
            }
        }
    }
}

/// A [`RemoteItem`] of a feature read at `at`, or why it is not a usable STAC Item.
fn item_of(f: &Value, at: &Url, collection: Option<&str>) -> Result<RemoteItem, String> {
    if f.get("type").and_then(Value::as_str) != Some("Feature") {
        return Err("malformed STAC Item: type is not \"Feature\"".into());
    }
    let id = match f.get("id") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(Value::String(_)) => return Err("malformed STAC Item: empty id".into()),
        _ => return Err("malformed STAC Item: no id".into()),
    };
    if !f.get("assets").is_some_and(Value::is_object) {
        return Err(format!("malformed STAC Item '{id}': no assets object"));
    }
    let properties = f
        .get("properties")
        .and_then(Value::as_object)
        .ok_or_else(|| format!("malformed STAC Item '{id}': no properties object"))?;
    let collection = f
        .get("collection")
        .and_then(Value::as_str)
        .or(collection)
        .map(str::to_string);
    let url = links(f)
        .find(|l| l.get("rel").and_then(Value::as_str) == Some("self"))
        .and_then(|l| l.get("href").and_then(Value::as_str))
        .and_then(|h| at.join(h).ok())
        .unwrap_or_else(|| at.clone());
    let version = match properties.get("updated").and_then(Value::as_str) {
        Some(updated) => format!("updated {updated}"),
        None => {
            let mut stripped = f.clone();
            if let Some(o) = stripped.as_object_mut() {
                o.remove("links");
            }
            let h = Sha256::digest(stripped.to_string().as_bytes());
            format!("content {h:x}")
        }
    };
    let key = match &collection {
        Some(c) => format!("stac:{c}/{id}"),
        None => format!("stac:{id}"),
    };
    Ok(RemoteItem {
        fingerprint: fingerprint(&version),
        key,
        id,
        collection,
        url,
        value: f.clone(),
    })
}

/// A state fingerprint for an Item version (63 bits of its hash: the state stores integers).
fn fingerprint(version: &str) -> Fingerprint {
    let h = Sha256::digest(version.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&h[..8]);
    Fingerprint {
        size: u64::from_be_bytes(first) >> 1,
        mtime_ns: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page_url() -> Url {
        Url::parse("http://h/api/search").unwrap()
    }

    #[test]
    fn items_are_keyed_by_collection_and_id_and_versioned_by_updated() {
        let item = json!({
            "type": "Feature", "id": "A1", "collection": "s2",
            "properties": {"datetime": "2024-01-01T00:00:00Z", "updated": "2024-01-02T00:00:00Z"},
            "links": [{"rel": "self", "href": "../collections/s2/items/A1"}],
            "assets": {}
        });
        let a = item_of(&item, &page_url(), None).unwrap();
        assert_eq!(a.key, "stac:s2/A1");
        assert_eq!(a.url.as_str(), "http://h/collections/s2/items/A1");
        // Links (which servers rewrite) do not change the version; `updated` does.
        let mut relinked = item.clone();
        relinked["links"] = json!([]);
        let b = item_of(&relinked, &page_url(), None).unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!(b.url, page_url());
        let mut updated = item.clone();
        updated["properties"]["updated"] = json!("2024-02-01T00:00:00Z");
        assert_ne!(
            item_of(&updated, &page_url(), None).unwrap().fingerprint,
            a.fingerprint
        );
        // Without `updated`, the content is the version.
        let mut plain = item.clone();
        plain["properties"] = json!({"datetime": "2024-01-01T00:00:00Z"});
        let p = item_of(&plain, &page_url(), Some("other")).unwrap();
        assert_eq!(p.key, "stac:s2/A1");
        plain["properties"]["eo:cloud_cover"] = json!(3);
        assert_ne!(
            item_of(&plain, &page_url(), None).unwrap().fingerprint,
            p.fingerprint
        );
        let mut nocol = plain.clone();
        nocol.as_object_mut().unwrap().remove("collection");
        assert_eq!(
            item_of(&nocol, &page_url(), Some("parent")).unwrap().key,
            "stac:parent/A1"
        );
        assert_eq!(item_of(&nocol, &page_url(), None).unwrap().key, "stac:A1");
    }

    #[test]
    fn malformed_items_say_why() {
        let bad = [
            (json!({"type": "Collection", "id": "x"}), "type is not"),
            (
                json!({"type": "Feature", "properties": {}, "assets": {}}),
                "no id",
            ),
            (
                json!({"type": "Feature", "id": "x", "properties": {}}),
                "no assets",
            ),
            (
                json!({"type": "Feature", "id": "x", "assets": {}}),
                "no properties",
            ),
        ];
        for (v, why) in bad {
            let e = item_of(&v, &page_url(), None).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn next_links_give_get_or_post_requests() {
        let post = Request {
            url: page_url(),
            body: Some(json!({"limit": 2, "collections": ["s2"]})),
        };
        let page = json!({"links": [{"rel": "next", "href": "search", "method": "POST",
                                     "body": {"token": "t2"}, "merge": true}]});
        let n = next_request(&page, &post).unwrap();
        assert_eq!(
            n.body,
            Some(json!({"limit": 2, "collections": ["s2"], "token": "t2"}))
        );
        let page = json!({"links": [{"rel": "next", "method": "POST", "href": "search",
                                     "body": {"skip": 2}}]});
        assert_eq!(
            next_request(&page, &post).unwrap().body,
            Some(json!({"skip": 2}))
        );
        let page = json!({"links": [{"rel": "next", "href": "?page=2"}]});
        let n = next_request(&page, &post).unwrap();
        assert_eq!(
            (n.url.as_str(), n.body),
            ("http://h/api/search?page=2", None)
        );
        assert!(next_request(&json!({"links": []}), &post).is_none());
    }
}
