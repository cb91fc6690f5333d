//! `tessera ingest --stac-catalog` / `--stac-api` against real servers started here on
//! localhost: a static catalog and its COG assets served by nginx (which answers HTTP range
//! requests; its access log shows that GDAL reads the assets by ranges), and two STAC APIs from
//! PyPI: rustac's (`rustac serve`, in memory: POST Item Search, paged by `next` links with a
//! body) and stac-fastapi-pgstac (on pgstac in a throwaway PostgreSQL + PostGIS server: GET
//! Item Search, paged by `next` links with a token).
//! Each Item is processed exactly once over passes, a changed Item (new `updated`) again, the
//! output Items link back to the input Items, and bad input (an unreachable catalog or API, an
//! Item without the asset, a malformed Item) is one line naming the URL while the pass goes on.

mod common;

use std::collections::BTreeSet;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{run, Run};
use serde_json::{json, Value};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A COG of `size` x `size` pixels of the bundled Sentinel-2 subset at (x, y).
fn cog(path: &Path, x: usize, y: usize, size: usize) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    common::crop_sample(path, (x, y), size, &["-of", "COG"]);
}

/// A classification pipeline over the bundled tiny CLIP model.
fn pipeline(dir: &Path) -> String {
    let p = dir.join("land-cover.toml");
    std::fs::write(
        &p,
        format!(
            "[input]\nbands = [1, 2, 3]\nscale = \"percentile:2,98\"\n[tiling]\ntarget_gsd = 20.0\nthreads = 1\n\
             [[stage]]\nname = \"landcover\"\ntask = \"classify\"\nmodel = \"{}\"\nlabels = [\"forest\", \"water\", \"city\"]\n",
            common::clip_tiny().display()
        ),
    )
    .expect("write pipeline");
    p.display().to_string()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before listening: {status}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what} never listened on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A server process, stopped when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nginx serving `dir`, logging each request's method, path, status and Range header to
/// `prefix/access.log`. `None` (a skip) when nginx is not installed outside CI.
fn nginx(dir: &Path, prefix: &Path) -> Option<Server> {
    let exe = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file());
    let Some(exe) = exe else {
        assert!(
            std::env::var_os("CI").is_none(),
            "nginx is absent: `make setup` installs it (nginx-light)"
        );
        eprintln!("skipping: nginx is absent (run `make setup`)");
        return None;
    };
    std::fs::create_dir_all(prefix.join("tmp")).expect("mkdir");
    let port = free_port();
    let p = prefix.display();
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/error.log;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  log_format ranges '$request_method $uri $status \"$http_range\"';\n  access_log {p}/access.log ranges;\n\
         client_body_temp_path {p}/tmp; proxy_temp_path {p}/tmp; fastcgi_temp_path {p}/tmp;\n\
         uwsgi_temp_path {p}/tmp; scgi_temp_path {p}/tmp;\n\
         types {{ application/json json; image/tiff tif; }}\n\
         server {{ listen 127.0.0.1:{port}; root {}; }}\n}}\n",
        dir.display()
    );
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("write nginx.conf");
    let mut child = Command::new(exe)
        .arg("-p")
        .arg(prefix)
        .arg("-e")
        .arg(prefix.join("error.log"))
        .arg("-c")
        .arg(&conf_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    wait_for_port(port, &mut child, "nginx");
    Some(Server { child, port })
}

/// A STAC API (rustac's server, in-memory backend) over `collection` and `items`, files.
fn stac_api(port: u16, collection: &Path, items: &Path) -> Option<Server> {
    let exe = root().join(".venv/bin/rustac");
    if !exe.is_file() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{} is absent: `make setup` installs it (tests/requirements.txt)",
            exe.display()
        );
        eprintln!("skipping: {} is absent (run `make setup`)", exe.display());
        return None;
    }
    let mut child = Command::new(exe)
        .arg("serve")
        .arg(collection)
        .arg(items)
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start rustac serve");
    wait_for_port(port, &mut child, "rustac serve");
    Some(Server { child, port })
}

fn write_json(path: &Path, v: &Value) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, serde_json::to_vec_pretty(v).expect("json")).expect("write");
}

/// A STAC Item over a 128 px crop at column `i` of the sample, with one asset under `key`.
fn item(id: &str, collection: &str, updated: &str, key: &str, href: &str, i: usize) -> Value {
    // The sample's footprint is near 9.7 E, 45.0 N; Items are laid out west to east so the
    // search box can leave some out.
    let (w, s) = (9.0 + i as f64 * 0.1, 45.0);
    json!({
        "type": "Feature", "stac_version": "1.0.0", "id": id, "collection": collection,
        "geometry": {"type": "Polygon", "coordinates": [[[w, s], [w + 0.05, s], [w + 0.05, s + 0.05], [w, s + 0.05], [w, s]]]},
        "bbox": [w, s, w + 0.05, s + 0.05],
        "properties": {"datetime": format!("2024-06-{:02}T10:00:00Z", i + 1), "updated": updated},
        "links": [],
        "assets": {key: {"href": href, "type": "image/tiff; application=geotiff; profile=cloud-optimized", "roles": ["data"]}}
    })
}

fn collection(id: &str) -> Value {
    json!({
        "type": "Collection", "stac_version": "1.0.0", "id": id, "description": "test scenes",
        "license": "proprietary",
        "extent": {"spatial": {"bbox": [[9.0, 45.0, 10.0, 46.0]]},
                   "temporal": {"interval": [["2024-01-01T00:00:00Z", null]]}},
        "links": []
    })
}

/// (name, status) of each scene a pass processed.
fn processed(r: &Run) -> Vec<(String, String)> {
    let report = r.json();
    let mut v: Vec<(String, String)> = report["processed"]
        .as_array()
        .unwrap_or_else(|| panic!("processed{}", r.context()))
        .iter()
        .map(|s| {
            let status = if s["error"].is_null() {
                "done"
            } else {
                "failed"
            };
            (
                s["name"].as_str().expect("name").to_string(),
                status.to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

fn pair(name: &str, status: &str) -> (String, String) {
    (name.to_string(), status.to_string())
}

/// The `derived_from` links of a scene's output Item.
fn derived_from(out: &Path, scene: &str) -> Vec<String> {
    let text = std::fs::read_to_string(out.join(scene).join("item.json"))
        .unwrap_or_else(|e| panic!("{scene}/item.json: {e}"));
    let v: Value = serde_json::from_str(&text).expect("item.json is JSON");
    v["links"]
        .as_array()
        .expect("links")
        .iter()
        .filter(|l| l["rel"] == "derived_from")
        .map(|l| l["href"].as_str().expect("href").to_string())
        .collect()
}

#[test]
fn a_static_catalog_over_http_is_ingested_once_and_changed_items_again() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let site = d.join("site");
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        cog(&site.join(format!("data/{name}.tif")), i * 96, 0, 128);
    }
    // catalog.json -> c1/collection.json (items a, b, one without the asset, one malformed)
    //              -> missing/catalog.json (404)
    let updated = "2024-06-10T00:00:00Z";
    write_json(
        &site.join("catalog.json"),
        &json!({"type": "Catalog", "stac_version": "1.0.0", "id": "root", "description": "r",
                "links": [{"rel": "child", "href": "./c1/collection.json"},
                          {"rel": "child", "href": "missing/catalog.json"},
                          {"rel": "self", "href": "./catalog.json"}]}),
    );
    let mut c1 = collection("c1");
    c1["links"] = json!([
        {"rel": "item", "href": "items/a.json"},
        {"rel": "item", "href": "items/b.json"},
        {"rel": "item", "href": "items/noasset.json"},
        {"rel": "item", "href": "items/bad.json"},
        {"rel": "parent", "href": "../catalog.json"}
    ]);
    write_json(&site.join("c1/collection.json"), &c1);
    let item_at = |id: &str, i: usize, updated: &str| {
        let mut v = item(
            id,
            "c1",
            updated,
            "image",
            &format!("../../data/{id}.tif"),
            i,
        );
        // Static catalogs may leave `collection` out: the parent Collection names it.
        v.as_object_mut().expect("object").remove("collection");
        write_json(&site.join(format!("c1/items/{id}.json")), &v);
    };
    item_at("a", 0, updated);
    item_at("b", 1, updated);
    let mut noasset = item("noasset", "c1", updated, "thumbnail", "../../data/c.tif", 2);
    noasset["assets"]["thumbnail"]["roles"] = json!(["thumbnail"]);
    write_json(&site.join("c1/items/noasset.json"), &noasset);
    std::fs::write(
        site.join("c1/items/bad.json"),
        b"{\"type\": \"Feature\", \"id\": ",
    )
    .expect("write");
    let logs = d.join("nginx");
    let Some(server) = nginx(&site, &logs) else {
        return;
    };
    let catalog = format!("{}/catalog.json", server.url());
    let p = pipeline(d);
    let ingest = || {
        run(
            d,
            &[
                "ingest",
                "--stac-catalog",
                &catalog,
                "--asset",
                "image",
                "--pipeline",
                &p,
                "--out",
                "out",
                "--json",
                "--quiet",
            ],
        )
    };

    let first = ingest();
    // Some Items failed, the others were processed: exit status 3.
    assert_eq!(first.output.status.code(), Some(3), "{}", first.context());
    assert_eq!(
        processed(&first),
        vec![
            pair("c1.a", "done"),
            pair("c1.b", "done"),
            pair("c1.noasset", "failed")
        ],
        "{}",
        first.context()
    );
    let report = first.json();
    assert_eq!(report["found"], 3, "{}", first.context());
    let failed = report["processed"]
        .as_array()
        .expect("processed")
        .iter()
        .find(|s| s["name"] == "c1.noasset")
        .expect("noasset reported");
    let e = failed["error"].as_str().expect("error");
    assert!(
        e.contains(&format!("{}/c1/items/noasset.json", server.url()))
            && e.contains("no asset with key or role 'image'"),
        "{e}"
    );
    // The malformed Item and the missing child: one line each, naming the URL and the cause.
    let problems: Vec<&str> = report["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .map(|p| p.as_str().expect("line"))
        .collect();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with(&format!("{}/c1/items/bad.json: not JSON", server.url()))),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with(&format!("{}/missing/catalog.json: HTTP 404", server.url()))),
        "{problems:?}"
    );
    let stderr = first.stderr();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 2, "{}", first.context());
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("tessera: warning: http://")),
        "{}",
        first.context()
    );
    assert!(!first.stderr().contains("panicked"), "{}", first.context());
    // The output Items link back to the input Items.
    let out = d.join("out");
    assert_eq!(
        derived_from(&out, "c1.a"),
        vec![format!("{}/c1/items/a.json", server.url())]
    );
    // GDAL read the COGs by ranges (206 Partial Content to Range requests).
    let log = std::fs::read_to_string(logs.join("access.log")).expect("access log");
    let ranged = log
        .lines()
        .filter(|l| l.starts_with("GET /data/a.tif 206 \"bytes="))
        .count();
    assert!(ranged >= 1, "no range request for a.tif:\n{log}");
    assert!(
        !log.lines().any(|l| l.starts_with("GET /data/a.tif 200")),
        "a.tif was downloaded whole:\n{log}"
    );
    // The same classes as a local run over the same file.
    let local = run(
        d,
        &[
            "run",
            &p,
            "site/data/a.tif",
            "--out",
            "local",
            "--quiet",
            "--json",
        ],
    );
    local.success();
    let classes = |dir: &Path| {
        let tif = common::walk(dir)
            .into_iter()
            .find(|p| p.file_name().is_some_and(|n| n == "classes.tif"))
            .unwrap_or_else(|| panic!("no classes.tif in {}", dir.display()));
        std::fs::read(tif).expect("read")
    };
    assert!(
        classes(&out.join("c1.a")) == classes(&d.join("local/a")),
        "remote and local classes differ"
    );

    // A second pass: nothing new (the failed Item stays failed until it changes).
    let second = ingest();
    assert_eq!(processed(&second), vec![], "{}", second.context());
    assert_eq!(second.json()["found"], 3);

    // Item b changes (a new `updated`): only b is processed again.
    item_at("b", 1, "2024-07-01T00:00:00Z");
    let third = ingest();
    assert_eq!(
        processed(&third),
        vec![pair("c1.b", "done")],
        "{}",
        third.context()
    );
    let status = run(d, &["ingest", "--status", "--out", "out", "--json"]);
    let status = status.success().json();
    assert_eq!(status["counts"]["done"], 2, "{status}");
    assert_eq!(status["counts"]["failed"], 1, "{status}");
    let keys: BTreeSet<&str> = status["scenes"]
        .as_array()
        .expect("scenes")
        .iter()
        .map(|s| s["path"].as_str().expect("path"))
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["stac:c1/a", "stac:c1/b", "stac:c1/noasset"])
    );
}

#[test]
fn a_stac_api_search_is_paged_filtered_and_ingested_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let site = d.join("site");
    let ids = ["s0", "s1", "s2", "s3", "s4", "s5"];
    for (i, id) in ids.iter().enumerate() {
        cog(
            &site.join(format!("{id}.tif")),
            (i % 4) * 96,
            (i / 4) * 96,
            128,
        );
    }
    let Some(assets) = nginx(&site, &d.join("nginx")) else {
        return;
    };
    let updated = "2024-06-10T00:00:00Z";
    // s0..s3 match the search; s4 lies outside the box and s5 outside the time range; s3
    // has no "visual" asset.
    let items = |s1_updated: &str| -> Value {
        let features: Vec<Value> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let key = if *id == "s3" { "preview" } else { "visual" };
                let href = format!("{}/{id}.tif", assets.url());
                let upd = if *id == "s1" { s1_updated } else { updated };
                let mut v = item(
                    id,
                    "scenes",
                    upd,
                    key,
                    &href,
                    if *id == "s4" { 9 } else { i.min(4) },
                );
                if *id == "s5" {
                    v["properties"]["datetime"] = json!("2023-01-01T00:00:00Z");
                }
                v
            })
            .collect();
        json!({"type": "FeatureCollection", "features": features})
    };
    write_json(&d.join("api/collection.json"), &collection("scenes"));
    write_json(&d.join("api/items.json"), &items(updated));
    let port = free_port();
    let Some(api) = stac_api(
        port,
        &d.join("api/collection.json"),
        &d.join("api/items.json"),
    ) else {
        return;
    };
    let p = pipeline(d);
    let root_url = format!("{}/", api.url());
    let ingest = || {
        run(
            d,
            &[
                "ingest",
                "--stac-api",
                &root_url,
                "--collections",
                "scenes",
                "--bbox",
                "8.9,44.9,9.6,45.2",
                "--datetime",
                "2024-06-01T00:00:00Z/..",
                "--page-size",
                "2",
                "--asset",
                "visual",
                "--pipeline",
                &p,
                "--out",
                "out",
                "--json",
                "--quiet",
            ],
        )
    };
    let first = ingest();
    assert_eq!(first.output.status.code(), Some(3), "{}", first.context());
    // Four Items over two pages of two: every page was read.
    assert_eq!(first.json()["found"], 4, "{}", first.context());
    assert_eq!(
        processed(&first),
        vec![
            pair("scenes.s0", "done"),
            pair("scenes.s1", "done"),
            pair("scenes.s2", "done"),
            pair("scenes.s3", "failed")
        ],
        "{}",
        first.context()
    );
    let e = first.json()["processed"][3]["error"]
        .as_str()
        .expect("error")
        .to_string();
    assert!(
        e.contains(&format!("{}/collections/scenes/items/s3", api.url()))
            && e.contains("no asset with key or role 'visual'"),
        "{e}"
    );
    let out = d.join("out");
    assert_eq!(
        derived_from(&out, "scenes.s0"),
        vec![format!("{}/collections/scenes/items/s0", api.url())]
    );

    let second = ingest();
    assert_eq!(processed(&second), vec![], "{}", second.context());

    // s1 is updated on the server: only s1 again.
    drop(api);
    write_json(&d.join("api/items.json"), &items("2024-07-01T00:00:00Z"));
    let Some(_api) = stac_api(
        port,
        &d.join("api/collection.json"),
        &d.join("api/items.json"),
    ) else {
        return;
    };
    let third = ingest();
    assert_eq!(
        processed(&third),
        vec![pair("scenes.s1", "done")],
        "{}",
        third.context()
    );
}

#[test]
fn unreachable_sources_and_bad_options_are_one_line() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let p = pipeline(d);
    let port = free_port();
    let api = format!("http://127.0.0.1:{port}/");
    run(
        d,
        &[
            "ingest",
            "--stac-api",
            &api,
            "--pipeline",
            &p,
            "--out",
            "out",
        ],
    )
    .fails_with(&[&api, "cannot connect"]);
    let missing = d.join("nowhere/catalog.json").display().to_string();
    run(
        d,
        &[
            "ingest",
            "--stac-catalog",
            &missing,
            "--pipeline",
            &p,
            "--out",
            "out",
        ],
    )
    .fails_with(&["nowhere/catalog.json", "cannot read"]);
    let not_stac = d.join("not-stac.json");
    std::fs::write(&not_stac, b"{\"type\": \"Topology\"}").expect("write");
    run(
        d,
        &[
            "ingest",
            "--stac-catalog",
            &not_stac.display().to_string(),
            "--pipeline",
            &p,
            "--out",
            "out",
        ],
    )
    .fails_with(&["not-stac.json", "not a STAC catalog"]);
    // A value clap rejects: the usage error (exit status 2) names the flag and the cause.
    let r = run(
        d,
        &[
            "ingest",
            "--stac-api",
            &api,
            "--bbox",
            "10,50,11,40",
            "--pipeline",
            &p,
            "--out",
            "out",
        ],
    );
    assert_eq!(r.output.status.code(), Some(2), "{}", r.context());
    assert!(
        r.stderr()
            .lines()
            .next()
            .is_some_and(|l| l.contains("--bbox") && l.contains("south 50 is above north 40")),
        "{}",
        r.context()
    );
    run(
        d,
        &[
            "ingest",
            "--stac-catalog",
            &missing,
            "--datetime",
            "2024-01-01T00:00:00Z",
            "--pipeline",
            &p,
            "--out",
            "out",
        ],
    )
    .fails_with(&["--datetime", "needs --stac-api"]);
    run(
        d,
        &[
            "ingest",
            "in",
            "--stac-api",
            &api,
            "--pipeline",
            &p,
            "--out",
            "out",
        ],
    )
    .fails_with(&["two sources"]);
    // A pipeline's [ingest] source, with the key and line named when it is bad.
    let bad = d.join("bad.toml");
    let text = std::fs::read_to_string(&p).expect("read") + "[ingest]\nstac_api = \"ftp://x\"\n";
    std::fs::write(&bad, text).expect("write");
    run(
        d,
        &[
            "ingest",
            "--pipeline",
            &bad.display().to_string(),
            "--out",
            "out",
        ],
    )
    .fails_with(&["bad.toml", "stac_api", "not an http"]);
    assert!(
        !d.join("out").exists()
            || common::walk(&d.join("out")).iter().all(|f| {
                f.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(".tessera-state"))
            })
    );
}

#[test]
fn watch_waits_out_a_missing_catalog_then_ingests_a_local_one() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let p = pipeline(d);
    let catalog = d.join("stac/catalog.json");
    let mut child = common::tessera()
        .args(["watch", "--stac-catalog"])
        .arg(&catalog)
        .args([
            "--pipeline",
            &p,
            "--out",
            "out",
            "--interval",
            "0.3",
            "--quiet",
        ])
        .current_dir(d)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Its first pass finds no catalog: a warning line, and it goes on.
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let stderr_pipe = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr_pipe)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    let first = lines
        .recv_timeout(Duration::from_secs(60))
        .expect("a warning line about the missing catalog");
    assert!(
        first.starts_with(&format!(
            "tessera: warning: {}: cannot read",
            catalog.display()
        )) && first.contains("trying again"),
        "{first}"
    );
    // The catalog appears (on disk: relative hrefs resolve against its files).
    cog(&d.join("stac/data/x.tif"), 0, 0, 128);
    write_json(
        &d.join("stac/c/x.json"),
        &item(
            "x",
            "c",
            "2024-06-10T00:00:00Z",
            "image",
            "../data/x.tif",
            0,
        ),
    );
    let mut c = collection("c");
    c["links"] = json!([{"rel": "item", "href": "./x.json"}]);
    write_json(&d.join("stac/c/collection.json"), &c);
    let tmp = d.join("stac/catalog.json.partial");
    write_json(
        &tmp,
        &json!({"type": "Catalog", "stac_version": "1.0.0", "id": "r", "description": "r",
                "links": [{"rel": "child", "href": "c/collection.json"}]}),
    );
    std::fs::rename(&tmp, &catalog).expect("rename");
    let record = d.join("out/c.x/record.json");
    let t = Instant::now();
    while !record.exists() && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().expect("wait");
    reader.join().expect("reader");
    let stderr: Vec<String> = lines.try_iter().collect();
    let stderr = stderr.join("\n");
    assert!(record.exists(), "watch ingested the Item:\n{stderr}");
    assert!(status.success(), "{status:?}\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let linked = derived_from(&d.join("out"), "c.x");
    assert_eq!(linked.len(), 1);
    let canonical = std::fs::canonicalize(d.join("stac/c/x.json")).expect("canonical");
    assert_eq!(linked, vec![format!("file://{}", canonical.display())]);
}

/// `.venv/bin/NAME`, or `None` (a skip outside CI) when `make setup` has not installed it.
fn venv_tool(name: &str) -> Option<PathBuf> {
    let exe = root().join(".venv/bin").join(name);
    if exe.is_file() {
        return Some(exe);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{} is absent: `make setup` installs it (tests/requirements.txt)",
        exe.display()
    );
    eprintln!("skipping: {} is absent (run `make setup`)", exe.display());
    None
}

fn pypgstac(exe: &Path, args: &[&str]) {
    let out = Command::new(exe).args(args).output().expect("run pypgstac");
    assert!(
        out.status.success(),
        "pypgstac {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_pgstac_api_is_paged_with_get_links_and_tokens() {
    let (Some(pypgstac_exe), Some(python)) = (venv_tool("pypgstac"), venv_tool("python")) else {
        return;
    };
    let Some(pg) = common::postgres::PgServer::start() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "no PostgreSQL server could be started"
        );
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let site = d.join("site");
    let ids = ["p0", "p1"];
    for (i, id) in ids.iter().enumerate() {
        cog(&site.join(format!("{id}.tif")), i * 96, 96, 128);
    }
    let Some(assets) = nginx(&site, &d.join("nginx")) else {
        return;
    };
    // pgstac's schema (PostGIS included), one collection, two Items.
    let dsn = pg.url();
    pypgstac(&pypgstac_exe, &["migrate", "--dsn", &dsn]);
    write_json(&d.join("collection.json"), &collection("scenes"));
    pypgstac(
        &pypgstac_exe,
        &[
            "load",
            "collections",
            &d.join("collection.json").display().to_string(),
            "--dsn",
            &dsn,
            "--method",
            "insert",
        ],
    );
    let load_items = |updated: &[&str]| {
        let lines: Vec<String> = ids
            .iter()
            .zip(updated)
            .enumerate()
            .map(|(i, (id, upd))| {
                item(
                    id,
                    "scenes",
                    upd,
                    "visual",
                    &format!("{}/{id}.tif", assets.url()),
                    i,
                )
                .to_string()
            })
            .collect();
        let path = d.join("items.ndjson");
        std::fs::write(&path, lines.join("\n") + "\n").expect("write");
        pypgstac(
            &pypgstac_exe,
            &[
                "load",
                "items",
                &path.display().to_string(),
                "--dsn",
                &dsn,
                "--method",
                "upsert",
            ],
        );
    };
    let updated = "2024-06-10T00:00:00Z";
    load_items(&[updated, updated]);
    let port = free_port();
    let mut child = Command::new(python)
        .args([
            "-m",
            "uvicorn",
            "stac_fastapi.pgstac.app:create_app",
            "--factory",
        ])
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", pg.port().to_string())
        .env("PGUSER", &pg.user)
        .env("PGPASSWORD", "")
        .env("PGDATABASE", &pg.database)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start uvicorn");
    wait_for_port(port, &mut child, "stac-fastapi-pgstac");
    let api = Server { child, port };
    let p = pipeline(d);
    let root_url = api.url();
    let ingest = || {
        run(
            d,
            &[
                "ingest",
                "--stac-api",
                &root_url,
                "--collections",
                "scenes",
                "--search-method",
                "GET",
                "--page-size",
                "1",
                "--datetime",
                "2024-01-01T00:00:00Z/2024-12-31T00:00:00Z",
                "--pipeline",
                &p,
                "--out",
                "out",
                "--json",
                "--quiet",
            ],
        )
    };
    let first = ingest();
    first.success();
    // Two pages of one Item, the second through a GET `next` link with pgstac's token.
    assert_eq!(first.json()["found"], 2, "{}", first.context());
    assert_eq!(
        processed(&first),
        vec![pair("scenes.p0", "done"), pair("scenes.p1", "done")],
        "{}",
        first.context()
    );
    assert_eq!(
        derived_from(&d.join("out"), "scenes.p1"),
        vec![format!("{}/collections/scenes/items/p1", api.url())]
    );
    let second = ingest();
    assert_eq!(processed(&second), vec![], "{}", second.context());
    // p0 updated in the database: the next pass takes p0 alone.
    load_items(&["2024-08-01T00:00:00Z", updated]);
    let third = ingest();
    assert_eq!(
        processed(&third),
        vec![pair("scenes.p0", "done")],
        "{}",
        third.context()
    );
}
