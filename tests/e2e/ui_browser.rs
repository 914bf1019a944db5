//! The review UI in a real browser: headless Chromium (Debian's `chromium`), driven over
//! WebDriver by `fantoccini` through `chromedriver` (Debian's `chromium-driver`).
//!
//! The real `cordon serve` runs the shipped default runbook against the vendor sandbox. In
//! the browser: a chat link to a task opens the login page and comes back after login; the
//! legal and finance holds are marked done; counsel (an approver who did not start the run)
//! approves containment and the notifications on the approval page, and sees the run
//! finish; a draft is read; a viewer is refused the draft's contents; a form posted without
//! its CSRF token is refused.
//!
//! `CORDON_CHROMEDRIVER` and `CORDON_CHROMIUM` name the programs (default: `chromedriver`
//! and `chromium` on PATH). Without them the test says loudly that it was skipped; under
//! `CI` it fails instead (`.ci/run` installs both). Screenshots of the main pages are taken
//! every time; with `CORDON_UI_SCREENSHOTS=1` they are written to `docs/` (committed, shown
//! in the README).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::harness::Env;
use crate::serve::{serve, token, tokens_yaml, Serving, TOKENS};
use crate::ui::UiClient;

const DRIVER_ENV: &str = "CORDON_CHROMEDRIVER";
const CHROMIUM_ENV: &str = "CORDON_CHROMIUM";
const SCREENSHOTS_ENV: &str = "CORDON_UI_SCREENSHOTS";
const SUBJECT: &str = "j.smith@example.com";

/// A program named by `var`, else the first of `names` on PATH.
fn program(var: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{var}={} is not a file", p.display());
        return Some(p);
    }
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|n| {
        std::env::split_paths(&path)
            .map(|d| d.join(n))
            .find(|p| p.is_file())
    })
}

/// chromedriver and chromium, or None (loudly) when either is missing; CI must have both.
fn browser_tools() -> Option<(PathBuf, PathBuf)> {
    let driver = program(DRIVER_ENV, &["chromedriver"]);
    let chromium = program(CHROMIUM_ENV, &["chromium", "chromium-browser"]);
    match (driver, chromium) {
        (Some(d), Some(c)) => Some((d, c)),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run the browser tests: install Debian's chromium and chromium-driver \
                 (see .ci/run), or set {DRIVER_ENV} and {CHROMIUM_ENV}"
            );
            eprintln!(
                "\n**************************************************************\n\
                 SKIPPED: the review UI's browser test needs chromedriver and\n\
                 chromium (apt-get install chromium chromium-driver), or\n\
                 {DRIVER_ENV} and {CHROMIUM_ENV}\n\
                 **************************************************************\n"
            );
            None
        }
    }
}

/// A Chrome DevTools command through chromedriver (`POST …/goog/cdp/execute`).
#[derive(Debug)]
struct Cdp {
    cmd: &'static str,
    params: Value,
}

impl Cdp {
    fn new(cmd: &'static str, params: Value) -> Cdp {
        Cdp { cmd, params }
    }
}

impl fantoccini::wd::WebDriverCompatibleCommand for Cdp {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/goog/cdp/execute",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _url: &url::Url) -> (axum::http::Method, Option<String>) {
        (
            axum::http::Method::POST,
            Some(json!({"cmd": self.cmd, "params": self.params}).to_string()),
        )
    }
}

/// A chromedriver on a port of its own choosing (`--port=0`; it prints the port).
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start(path: &Path) -> Driver {
        let mut child = Command::new(path)
            .arg("--port=0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", path.display()));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line
                    .split("started successfully on port ")
                    .nth(1)
                    .and_then(|p| p.trim_end_matches('.').trim().parse::<u16>().ok())
                {
                    let _ = tx.send(port);
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(port) => Driver {
                child,
                url: format!("http://127.0.0.1:{port}"),
            },
            Err(_) => {
                let _ = child.kill();
                panic!("chromedriver did not say which port it listens on within 30 s");
            }
        }
    }
}

impl Drop for Driver {
    /// chromedriver's `/shutdown` first: it quits the browsers it started (a test that
    /// panicked did not close its session; a signal would leave them running); SIGKILL if
    /// it lingers.
    fn drop(&mut self) {
        use std::io::{Read, Write};
        let addr = self.url.trim_start_matches("http://").to_string();
        if let Ok(mut conn) = std::net::TcpStream::connect(&addr) {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = conn.write_all(
                format!("GET /shutdown HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            );
            let _ = conn.read_to_end(&mut Vec::new());
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The browser, with what the test needs around it.
struct Browser {
    c: Client,
    base: String,
    shots: PathBuf,
}

impl Browser {
    async fn open(driver: &Driver, chromium: &Path, base: &str, shots: &Path) -> Browser {
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium.display().to_string(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,900", "--force-device-scale-factor=1", "--lang=en-US",
                         "--no-first-run", "--disable-extensions"],
            }),
        );
        let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&driver.url)
            .await
            .unwrap_or_else(|e| panic!("chromedriver could not start chromium: {e}"));
        Browser {
            c,
            base: base.to_string(),
            shots: shots.to_path_buf(),
        }
    }

    async fn goto(&self, path: &str) {
        self.c
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap_or_else(|e| panic!("goto {path}: {e}"));
    }

    async fn path(&self) -> String {
        let u = self.c.current_url().await.expect("url");
        match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_string(),
        }
    }

    async fn html(&self) -> String {
        self.c.source().await.expect("source")
    }

    /// The element `css` points at, or a panic naming the page and showing it.
    async fn el(&self, css: &str) -> fantoccini::elements::Element {
        // Waits a little: a click that submits a form may return before the next page is
        // there.
        match self
            .c
            .wait()
            .at_most(Duration::from_secs(30))
            .for_element(Locator::Css(css))
            .await
        {
            Ok(e) => e,
            Err(e) => panic!(
                "no {css} on {}: {e}\n{}",
                self.path().await,
                self.html().await
            ),
        }
    }

    async fn text(&self, css: &str) -> String {
        self.el(css).await.text().await.expect("text")
    }

    async fn has(&self, css: &str) -> bool {
        self.c.find(Locator::Css(css)).await.is_ok()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let el = self.el(css).await;
        el.send_keys(text).await.expect("type");
    }

    async fn click(&self, css: &str) {
        let el = self.el(css).await;
        el.click().await.expect("click");
    }

    /// Wait until the browser shows a page whose path (and query) starts with `prefix`.
    async fn wait_path(&self, prefix: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = self.path().await;
            if now.starts_with(prefix) {
                return;
            }
            assert!(Instant::now() < deadline, "on {now}, expected {prefix}…");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Log in on the login page the browser is showing.
    async fn login(&self, name: &str) {
        assert!(
            self.path().await.starts_with("/ui/login"),
            "{}",
            self.path().await
        );
        self.type_into("#token", token(name)).await;
        self.click("form button[type=submit]").await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.path().await.starts_with("/ui/login") {
            assert!(Instant::now() < deadline, "still on the login page");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn logout(&self) {
        self.click("header form button").await;
        self.wait_path("/ui/login").await;
    }

    /// A screenshot of the whole page (beyond the window, through chromedriver's DevTools
    /// endpoint), checked to be a PNG.
    async fn shot(&self, name: &str) {
        let metrics = self
            .c
            .issue_cmd(Cdp::new("Page.getLayoutMetrics", json!({})))
            .await
            .expect("layout metrics");
        let size = &metrics["cssContentSize"];
        let (w, h) = (
            size["width"].as_f64().unwrap_or(1280.0).min(1280.0),
            size["height"].as_f64().unwrap_or(900.0).min(3000.0),
        );
        let shot = self
            .c
            .issue_cmd(Cdp::new(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true,
                       "clip": {"x": 0, "y": 0, "width": w, "height": h, "scale": 1}}),
            ))
            .await
            .expect("screenshot");
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("data"))
            .expect("base64");
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
            "{name}: not a real PNG"
        );
        std::fs::write(self.shots.join(format!("ui-{name}.png")), &png).expect("write screenshot");
    }

    /// Reload the run's page until its status is `status`.
    async fn wait_run(&self, run: &str, status: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.goto(&format!("/ui/runs/{run}")).await;
            let shown = self.text("h1 .status").await;
            if shown == status {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "run {run} shows {shown} after 60 s, expected {status}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

fn env_for_browser(sandbox_url: &str) -> Env {
    let mut env = Env::with_sandbox(sandbox_url);
    let config = env.path().join("config.yaml");
    let mut text = std::fs::read_to_string(&config).expect("config");
    text.push_str(&tokens_yaml());
    std::fs::write(&config, text).expect("config");
    let runbook =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../runbooks/dprk-it-worker-containment.yaml");
    std::fs::copy(
        &runbook,
        env.path().join("runbooks/dprk-it-worker-containment.yaml"),
    )
    .expect("copy the default runbook");
    for (name, value, _, _) in TOKENS {
        env.extra_env
            .push((format!("TOKEN_{}", name.to_uppercase()), value.to_string()));
    }
    env
}

fn start(srv: &Serving, body: Value) -> String {
    let a = srv.post("/api/v1/runs", Some(token("rita")), body);
    assert_eq!(a.status, 201, "{a:?}");
    a.json()["id"].as_str().unwrap().to_string()
}

#[test]
fn ui_browser_login_approve_and_see_the_run_finish() {
    let Some((driver_path, chromium)) = browser_tools() else {
        return;
    };
    use cordon_connectors::sandbox::Sandbox;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let sandbox = rt.block_on(Sandbox::seeded().serve()).expect("sandbox");
    let env = env_for_browser(&sandbox.base_url());
    let srv = serve(&env);

    // A responder starts the default runbook (rita may not approve; dana and fin decide).
    let run = start(
        &srv,
        json!({"runbook": "dprk-it-worker-containment", "inputs": {
            "alert_id": "SIEM-4471", "subject_email": SUBJECT,
            "device_serials": ["C02DEMO0001", "C02DEMO0002"], "confidence": 0.92}}),
    );
    // A second case, rehearsed as a dry run, so that the list has more than one.
    let rehearsal = start(
        &srv,
        json!({"runbook": "dprk-it-worker-containment", "dry_run": true, "inputs": {
            "alert_id": "SIEM-4502", "subject_email": "m.lee@example.com"}}),
    );
    srv.wait_status(&run, "waiting");
    let deadline = Instant::now() + Duration::from_secs(60);
    while srv.run(&rehearsal)["status"] == "running" || srv.run(&rehearsal)["status"] == "queued" {
        assert!(Instant::now() < deadline, "the dry run did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }

    let shots = tempfile::tempdir().expect("tempdir");
    let driver = Driver::start(&driver_path);
    let base = srv.base.clone();
    let draft_id: String = rt.block_on(async {
        let b = Browser::open(&driver, &chromium, &base, shots.path()).await;

        // A chat link to counsel's task: the login page first, then back to the link.
        b.goto(&format!("/ui/runs/{run}/steps/legal-hold")).await;
        assert!(
            b.path().await.starts_with("/ui/login?next="),
            "{}",
            b.path().await
        );
        b.shot("login").await;
        b.login("dana").await;
        assert_eq!(b.path().await, format!("/ui/runs/{run}/steps/legal-hold"));
        assert!(b
            .html()
            .await
            .contains("Issue the legal hold for j.smith@example.com"));
        b.type_into("#note", "Hold notices sent to IT, HR, Finance and Security")
            .await;
        b.click("#done").await;
        assert!(b
            .text(".alert.ok")
            .await
            .contains("The task was marked done"));

        // Finance is not counsel's: dana sees no form for the payment hold.
        b.goto(&format!("/ui/runs/{run}/steps/payment-hold")).await;
        assert!(!b.has("#done").await);
        assert!(b.html().await.contains("not among this step"));
        b.logout().await;

        // Finance marks its hold done from its pending page.
        b.goto("/ui/pending").await;
        b.login("fin").await;
        assert_eq!(b.path().await, "/ui/pending");
        b.click(&format!("a[href='/ui/runs/{run}/steps/payment-hold']"))
            .await;
        b.wait_path(&format!("/ui/runs/{run}/steps/payment-hold"))
            .await;
        b.type_into("#note", "Payroll and invoices held; payee flagged")
            .await;
        b.click("#done").await;
        assert!(b.text(".alert.ok").await.contains("marked done"));
        b.logout().await;

        // Counsel: the runs list, the run's timeline, what waits, then the approval page.
        b.goto("/ui/").await;
        b.login("dana").await;
        srv_wait_waiting_step(&b, &run, "approve-containment").await;
        b.goto("/ui/").await;
        let list = b.html().await;
        assert!(list.contains(&run) && list.contains(&rehearsal), "{list}");
        assert!(
            list.contains(&format!("<code>{SUBJECT}</code>")),
            "grouped by case: {list}"
        );
        b.shot("runs").await;
        b.goto("/ui/pending").await;
        assert!(b.text("main").await.contains("approve-containment"));
        b.shot("pending").await;
        b.click(&format!(
            "a.button[href='/ui/runs/{run}/steps/approve-containment']"
        ))
        .await;
        b.wait_path(&format!("/ui/runs/{run}/steps/approve-containment"))
            .await;
        let page = b.text("main").await;
        assert!(page.contains("What this approval releases"), "{page}");
        assert!(
            page.contains("suspend-identity") && page.contains(SUBJECT),
            "{page}"
        );
        b.shot("approval").await;
        b.type_into(
            "#approve-comment",
            "Evidence preserved; proceed with containment.",
        )
        .await;
        b.click("#approve").await;
        assert!(b
            .text(".alert.ok")
            .await
            .contains("Your approval was recorded"));

        // The notifications gate comes next; approve it too, then watch the run finish.
        srv_wait_waiting_step(&b, &run, "approve-notifications").await;
        b.goto(&format!("/ui/runs/{run}/steps/approve-notifications"))
            .await;
        b.click("#approve").await;
        assert!(b
            .text(".alert.ok")
            .await
            .contains("Your approval was recorded"));
        b.wait_run(&run, "succeeded").await;
        let timeline = b.text("main").await;
        assert!(timeline.contains("suspend-identity") && timeline.contains("lock-devices"));
        assert!(timeline.contains("approve by ui:dana"), "{timeline}");
        assert!(timeline.contains("Evidence preserved; proceed with containment."));
        b.shot("run-timeline").await;

        // A draft for counsel, rendered for reading.
        let link =
            b.c.find(Locator::Css("a[href^='/ui/drafts/']"))
                .await
                .expect("a draft link");
        let href = link.attr("href").await.expect("href").expect("href");
        let draft_id = href.rsplit('/').next().unwrap().to_string();
        b.goto(&format!("/ui/drafts/{draft_id}")).await;
        assert!(b.has("article.draft h1, article.draft h2").await);
        b.goto(&format!("/ui/runs/{run}")).await;
        let fbi_href =
            b.c.find(Locator::XPath(
                "//tr[td[contains(., 'fbi-ic3-complaint')]]//a[contains(@href,'/ui/drafts/')]",
            ))
            .await
            .expect("the FBI complaint draft")
            .attr("href")
            .await
            .expect("href")
            .expect("href");
        b.goto(&fbi_href).await;
        let draft_text = b.text("article.draft").await;
        assert!(draft_text.contains(SUBJECT), "{draft_text}");
        b.shot("draft").await;
        b.logout().await;

        // A viewer sees the run, but not the draft's contents.
        b.goto(&fbi_href).await;
        b.login("vic").await;
        assert_eq!(b.path().await, fbi_href);
        let refused = b.text("main").await;
        assert!(
            refused.contains("Viewers see run metadata only"),
            "{refused}"
        );
        assert!(!b.has("article.draft").await);
        assert!(
            !b.html().await.contains(SUBJECT),
            "no draft text for a viewer"
        );

        // A form whose CSRF token was taken out is refused, and nothing happens.
        b.goto("/ui/").await;
        b.c.execute(
            "document.querySelectorAll('input[name=csrf]').forEach(e => e.remove())",
            vec![],
        )
        .await
        .expect("remove the csrf field");
        b.click("header form button").await;
        b.wait_path("/ui/logout").await;
        assert!(b
            .text("main")
            .await
            .contains("CSRF token is missing or wrong"));
        b.goto("/ui/").await;
        assert_eq!(b.path().await, "/ui/", "still logged in");
        b.c.clone().close().await.expect("close the browser");
        draft_id
    });
    assert!(!draft_id.is_empty());

    // The decisions are the people's, through the UI, and the run succeeded.
    let doc = srv.run(&run);
    assert_eq!(doc["status"], "succeeded", "{doc:#}");
    let audit = srv
        .get(&format!("/api/v1/runs/{run}/audit"), Some(token("root")))
        .json();
    let decided: Vec<(String, String, String)> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "approval.decided" || e["action"] == "task.done")
        .map(|e| {
            (
                e["details"]["step"].as_str().unwrap_or("").to_string(),
                e["details"]["decision"].as_str().unwrap_or("").to_string(),
                e["actor"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let expect = |step: &str, decision: &str, actor: &str| {
        (step.to_string(), decision.to_string(), actor.to_string())
    };
    for want in [
        expect("legal-hold", "done", "ui:dana"),
        expect("payment-hold", "done", "ui:fin"),
        expect("approve-containment", "approve", "ui:dana"),
        expect("approve-notifications", "approve", "ui:dana"),
    ] {
        assert!(decided.contains(&want), "{want:?} not in {decided:?}");
    }
    assert_eq!(decided.len(), 4, "{decided:?}");

    // Lock PINs are secret outputs: withheld from everyone's timeline, shown to an admin
    // who asks (and that view is audited).
    let revealed = srv
        .get(
            &format!("/api/v1/runs/{run}?reveal=true"),
            Some(token("root")),
        )
        .json();
    let secrets: Vec<Value> = revealed["steps"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["items"].as_array().cloned().unwrap_or_default())
        .filter_map(|i| i.get("secret_output").cloned())
        .collect();
    let pin_digits = secrets
        .iter()
        .find_map(find_pin)
        .unwrap_or_else(|| panic!("the device locks set PINs: {revealed:#}"));
    let mut root = UiClient::login(&srv, "root");
    let page = root.get(&format!("/ui/runs/{run}"));
    assert!(page.body.contains("Reveal them"), "{page:?}");
    assert!(!page.body.contains(&pin_digits), "a PIN in the timeline");
    let page = root.get(&format!("/ui/runs/{run}?reveal=1"));
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.body.contains(&pin_digits), "{page:?}");

    // Screenshots for the README, on request.
    let names = [
        "login",
        "runs",
        "run-timeline",
        "approval",
        "draft",
        "pending",
    ];
    for n in names {
        assert!(shots.path().join(format!("ui-{n}.png")).is_file(), "{n}");
    }
    if std::env::var_os(SCREENSHOTS_ENV).is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
        std::fs::create_dir_all(&docs).expect("docs/");
        for n in names {
            let f = format!("ui-{n}.png");
            std::fs::copy(shots.path().join(&f), docs.join(&f)).expect("copy screenshot");
        }
    }
    drop(driver);
    drop(sandbox);
}

/// The first `pin` string anywhere in a value.
fn find_pin(v: &Value) -> Option<String> {
    match v {
        Value::Object(m) => m
            .get("pin")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| m.values().find_map(find_pin)),
        Value::Array(a) => a.iter().find_map(find_pin),
        _ => None,
    }
}

/// Reload the step's page until the step waits for a decision.
async fn srv_wait_waiting_step(b: &Browser, run: &str, step: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        b.goto(&format!("/ui/runs/{run}/steps/{step}")).await;
        if b.text("h1 .status").await == "waiting" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "step {step} of run {run} is not waiting after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
