//! The review UI over plain HTTP (no browser): login and logout, cookie attributes, CSRF
//! refusals, what each role sees, approval pages that never decide on GET, refusals shown
//! on the page, and `next` redirects that never leave the site.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::TestServer;
use crate::serve::{env_with, serve, token, Serving};

/// A browser without a browser: a cookie jar, no redirects followed.
pub(crate) struct UiClient<'a> {
    srv: &'a Serving,
    http: reqwest::blocking::Client,
    jar: HashMap<String, String>,
}

pub(crate) struct Page {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Page {
    fn location(&self) -> &str {
        self.headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// Every `Set-Cookie` line.
    fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect()
    }

    fn set_cookie(&self, name: &str) -> Option<String> {
        self.set_cookies()
            .into_iter()
            .find(|c| c.starts_with(&format!("{name}=")))
    }

    /// The value of the first hidden `csrf` field.
    fn csrf(&self) -> String {
        field(&self.body, "csrf").unwrap_or_else(|| panic!("no csrf field in:\n{}", self.body))
    }

    fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

impl std::fmt::Debug for Page {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?}\n{}", self.status, self.headers, self.body)
    }
}

/// The value of `<input … name="NAME" value="…">`.
fn field(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{name}\" value=\""))?;
    let rest = &html[at + name.len() + 15..];
    rest.split('"').next().map(unescape)
}

/// Undo Handlebars' HTML escaping of an attribute value (what a browser does).
fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&#x60;", "`")
        .replace("&#x3D;", "=")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

impl<'a> UiClient<'a> {
    pub(crate) fn new(srv: &'a Serving) -> UiClient<'a> {
        UiClient {
            srv,
            http: reqwest::blocking::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            jar: HashMap::new(),
        }
    }

    fn remember(&mut self, page: &Page) {
        for line in page.set_cookies() {
            let first = line.split(';').next().unwrap_or("");
            if let Some((k, v)) = first.split_once('=') {
                if v.is_empty() || line.contains("Max-Age=0") {
                    self.jar.remove(k);
                } else {
                    self.jar.insert(k.to_string(), v.to_string());
                }
            }
        }
    }

    fn cookie_header(&self) -> String {
        self.jar
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn send(&mut self, req: reqwest::blocking::RequestBuilder) -> Page {
        let req = if self.jar.is_empty() {
            req
        } else {
            req.header("cookie", self.cookie_header())
        };
        let resp = req.send().expect("request");
        let page = Page {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: resp.text().unwrap_or_default(),
        };
        self.remember(&page);
        page
    }

    pub(crate) fn get(&mut self, path: &str) -> Page {
        let r = self.http.get(format!("{}{path}", self.srv.base));
        self.send(r)
    }

    pub(crate) fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        self.post_with(path, fields, &[])
    }

    pub(crate) fn post_with(
        &mut self,
        path: &str,
        fields: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> Page {
        let mut r = self
            .http
            .post(format!("{}{path}", self.srv.base))
            .form(fields);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        self.send(r)
    }

    /// Log in through the form; returns the answer to the form's POST.
    pub(crate) fn login_to(&mut self, tok: &str, next: &str) -> Page {
        let form = self.get(&format!("/ui/login?next={}", urlencode(next)));
        assert_eq!(form.status, 200, "{form:?}");
        let csrf = form.csrf();
        let next_field = field(&form.body, "next").expect("next field");
        self.post(
            "/ui/login",
            &[("csrf", &csrf), ("next", &next_field), ("token", tok)],
        )
    }

    pub(crate) fn login(srv: &'a Serving, name: &str) -> UiClient<'a> {
        let mut c = UiClient::new(srv);
        let p = c.login_to(token(name), "/ui/");
        assert_eq!(p.status, 303, "{p:?}");
        assert!(c.jar.contains_key("cordon_session"), "{p:?}");
        c
    }

    /// The CSRF token of this session (from the runs page's logout form).
    pub(crate) fn csrf(&mut self) -> String {
        let p = self.get("/ui/");
        assert_eq!(p.status, 200, "{p:?}");
        p.csrf()
    }
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Start a run over the API as `who`; its id.
fn start(srv: &Serving, who: &str, runbook: &str, inputs: Value) -> String {
    let a = srv.post(
        "/api/v1/runs",
        Some(token(who)),
        json!({"runbook": runbook, "inputs": inputs}),
    );
    assert_eq!(a.status, 201, "{a:?}");
    a.json()["id"].as_str().unwrap().to_string()
}

fn audit(srv: &Serving, run: &str) -> Vec<Value> {
    let a = srv.get(&format!("/api/v1/runs/{run}/audit"), Some(token("root")));
    assert_eq!(a.status, 200, "{a:?}");
    a.json().as_array().unwrap().clone()
}

fn decisions(srv: &Serving, run: &str) -> Vec<Value> {
    audit(srv, run)
        .into_iter()
        .filter(|e| e["action"] == "approval.decided" || e["action"] == "task.done")
        .collect()
}

/// A run with evidence (a snapshot of the test server), a draft, and an approval gate.
pub(crate) const REVIEW: &str = r#"version: 1
name: review
inputs:
  alert_id: { type: string, required: true }
  subject_email: { type: string, required: true }
  base: { type: string, required: true }
steps:
  - id: snapshot
    uses: http.snapshot
    with: { method: GET, url: "{{ inputs.base }}/ndjson/3/logs" }
  - id: draft-brief
    needs: [snapshot]
    uses: notify.draft
    with: { template: executive-brief, to: "CEO <script>alert(1)</script>" }
  - id: approve-suspend
    needs: [draft-brief]
    approval:
      approvers: [role:legal]
      message: "Suspend {{ inputs.subject_email }}?"
  - id: suspend
    needs: [approve-suspend]
    uses: core.noop
    with: { user: "{{ inputs.subject_email }}", reason: "approved" }
"#;

#[test]
fn ui_login_logout_and_cookie_attributes() {
    let env = env_with("");
    let srv = serve(&env);
    let mut c = UiClient::new(&srv);

    // Not logged in: every page sends to the login page, keeping where it was going.
    let p = c.get("/ui/");
    assert_eq!(p.status, 303, "{p:?}");
    assert_eq!(p.location(), "/ui/login?next=%2Fui%2F");
    let p = c.get("/ui/runs/01ABC/steps/approve-suspend?x=1");
    assert_eq!(p.status, 303, "{p:?}");
    assert_eq!(
        p.location(),
        "/ui/login?next=%2Fui%2Fruns%2F01ABC%2Fsteps%2Fapprove-suspend%3Fx%3D1"
    );
    assert_eq!(c.get("/ui").location(), "/ui/");

    // The login form sets its own CSRF cookie, strict and HttpOnly.
    let form = c.get("/ui/login?next=%2Fui%2Fpending");
    assert_eq!(form.status, 200, "{form:?}");
    assert!(form.content_type().starts_with("text/html"), "{form:?}");
    let login_cookie = form.set_cookie("cordon_login").expect("login cookie");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/ui/login"] {
        assert!(login_cookie.contains(attr), "{login_cookie}");
    }
    let csp = form.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("script-src"),
        "{csp}"
    );
    assert_eq!(form.headers["x-frame-options"], "DENY");
    let csrf = form.csrf();

    // A wrong token: 401, no session.
    let p = c.post(
        "/ui/login",
        &[
            ("csrf", &csrf),
            ("next", "/ui/pending"),
            ("token", "tok-wrong"),
        ],
    );
    assert_eq!(p.status, 401, "{p:?}");
    assert!(p.body.contains("not one of this server"), "{p:?}");
    assert!(p.set_cookie("cordon_session").is_none(), "{p:?}");

    // A CSRF value that is not the cookie's: refused, even with a good token.
    let p = c.post(
        "/ui/login",
        &[
            ("csrf", "forged"),
            ("next", "/ui/pending"),
            ("token", token("dana")),
        ],
    );
    assert_eq!(p.status, 403, "{p:?}");
    assert!(p.set_cookie("cordon_session").is_none(), "{p:?}");
    // The refusal offers a fresh form (new CSRF value and cookie).
    assert!(
        field(&p.body, "csrf").is_some() && p.set_cookie("cordon_login").is_some(),
        "{p:?}"
    );
    // No CSRF value from another site (a browser says so): refused.
    for (k, v) in [
        ("origin", "https://evil.example"),
        ("origin", "null"),
        ("sec-fetch-site", "cross-site"),
    ] {
        let p = c.post_with(
            "/ui/login",
            &[("next", "/ui/pending"), ("token", token("dana"))],
            &[(k, v)],
        );
        assert_eq!(p.status, 403, "{k}: {v}: {p:?}");
        assert!(p.set_cookie("cordon_session").is_none(), "{p:?}");
    }
    // A script (no form, nothing cross-site) may log in with the token alone.
    let mut script = UiClient::new(&srv);
    let origin = srv.base.clone();
    let p = script.post_with(
        "/ui/login",
        &[("token", token("vic"))],
        &[("origin", origin.as_str())],
    );
    assert_eq!(p.status, 303, "{p:?}");
    assert!(p.set_cookie("cordon_session").is_some(), "{p:?}");
    assert!(script.get("/ui/").body.contains("vic"));

    // The real thing: back to `next`, with an HttpOnly, Lax, /ui session cookie.
    let p = c.login_to(token("dana"), "/ui/pending");
    assert_eq!(p.status, 303, "{p:?}");
    assert_eq!(p.location(), "/ui/pending");
    let session = p.set_cookie("cordon_session").expect("session cookie");
    for attr in ["HttpOnly", "SameSite=Lax", "Path=/ui", "Max-Age="] {
        assert!(session.contains(attr), "{session}");
    }
    assert!(
        !session.contains("Secure"),
        "no https public_url: {session}"
    );
    let value = session
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1;
    assert!(value.len() >= 43, "{session}");
    assert!(!session.contains(token("dana")), "{session}");

    let home = c.get("/ui/");
    assert_eq!(home.status, 200, "{home:?}");
    assert!(
        home.body.contains("dana") && home.body.contains("approver"),
        "{home:?}"
    );
    assert_eq!(home.headers["cache-control"], "no-store");
    // A script may read pages with the bearer token (no cookie involved), but a change
    // needs a session and its CSRF token.
    let mut script = UiClient::new(&srv);
    let url = format!("{}/ui/pending", srv.base);
    let p = script.send(script.http.get(&url).bearer_auth(token("dana")));
    assert_eq!(p.status, 200, "{p:?}");
    assert!(
        p.body.contains("Pending approvals and tasks") && p.body.contains("dana"),
        "{p:?}"
    );
    let url = format!("{}/ui/logout", srv.base);
    let p = script.send(script.http.post(&url).bearer_auth(token("dana")));
    assert_eq!(p.status, 303, "{p:?}");
    assert!(p.location().starts_with("/ui/login"), "{p:?}");
    let url = format!("{}/ui/", srv.base);
    let p = script.send(script.http.get(&url).bearer_auth("tok-wrong"));
    assert_eq!(p.status, 303, "{p:?}");

    // Logout needs the session's CSRF token.
    let p = c.post("/ui/logout", &[]);
    assert_eq!(p.status, 403, "{p:?}");
    assert!(p.body.contains("CSRF"), "{p:?}");
    assert_eq!(c.get("/ui/").status, 200, "still logged in");
    let old = c.jar.clone();
    let csrf = c.csrf();
    let p = c.post("/ui/logout", &[("csrf", &csrf)]);
    assert_eq!(p.status, 303, "{p:?}");
    assert_eq!(p.location(), "/ui/login");
    let cleared = p.set_cookie("cordon_session").expect("cleared cookie");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    // The session is gone on the server too: the old cookie no longer works.
    c.jar = old;
    let p = c.get("/ui/");
    assert_eq!(p.status, 303, "{p:?}");
}

#[test]
fn ui_next_redirect_never_leaves_the_site_and_https_cookies_are_secure() {
    let env = env_with("public_url: https://cordon.example.com/\n");
    let srv = serve(&env);
    for (next, expect) in [
        (
            "/ui/runs/01ABC/steps/approve-suspend",
            "/ui/runs/01ABC/steps/approve-suspend",
        ),
        ("/ui/?status=waiting", "/ui/?status=waiting"),
        ("https://evil.example/ui/", "/ui/"),
        ("//evil.example/ui/", "/ui/"),
        ("/\\evil.example", "/ui/"),
        ("/ui//evil.example", "/ui/"),
        ("/ui/../api/v1/runs", "/ui/"),
        ("/api/v1/runs", "/ui/"),
        ("javascript:alert(1)", "/ui/"),
    ] {
        let mut c = UiClient::new(&srv);
        let p = c.login_to(token("vic"), next);
        assert_eq!(p.status, 303, "{next}: {p:?}");
        assert_eq!(p.location(), expect, "{next}");
        let session = p.set_cookie("cordon_session").expect("session");
        assert!(session.ends_with("; Secure"), "{session}");
        // Logged in, the login page sends on at once, with the same rule.
        let p = c.get(&format!("/ui/login?next={}", urlencode(next)));
        assert_eq!(p.status, 303, "{p:?}");
        assert_eq!(p.location(), expect, "{next}");
    }
    // A forged `next` in the form itself is treated the same way.
    let mut c = UiClient::new(&srv);
    let form = c.get("/ui/login");
    let csrf = form.csrf();
    let p = c.post(
        "/ui/login",
        &[
            ("csrf", &csrf),
            ("next", "https://evil.example"),
            ("token", token("vic")),
        ],
    );
    assert_eq!(p.location(), "/ui/", "{p:?}");
    // The step page shows the link to share, built from public_url.
    let rid = start(
        &srv,
        "rita",
        "gate",
        json!({"alert_id": "A-L", "subject_email": "l@example.com"}),
    );
    srv.wait_status(&rid, "waiting");
    let p = c.get(&format!("/ui/runs/{rid}/steps/approve-suspend"));
    assert!(
        p.body.contains(&format!(
            "https://cordon.example.com/ui/runs/{rid}/steps/approve-suspend"
        )),
        "{p:?}"
    );
}

#[test]
fn ui_roles_decide_what_pages_show_and_downloads_are_audited() {
    let logs = TestServer::start();
    let env = env_with("");
    env.write_runbook("review", REVIEW);
    let srv = serve(&env);
    let rid = start(
        &srv,
        "rita",
        "review",
        json!({"alert_id": "A-R", "subject_email": "j.smith+<script>@example.com", "base": logs.url()}),
    );
    srv.wait_status(&rid, "waiting");
    let ev = srv
        .get(&format!("/api/v1/runs/{rid}/evidence"), Some(token("rita")))
        .json();
    let evidence_id = ev[0]["evidence_id"].as_str().unwrap().to_string();
    let sha = ev[0]["sha256"].as_str().unwrap().to_string();
    let drafts = srv
        .get(&format!("/api/v1/runs/{rid}/drafts"), Some(token("rita")))
        .json();
    let draft_id = drafts[0]["draft_id"].as_str().unwrap().to_string();
    let draft_subject = drafts[0]["subject"].as_str().unwrap().to_string();

    // A viewer: run metadata, not evidence or drafts.
    let mut vic = UiClient::login(&srv, "vic");
    let p = vic.get(&format!("/ui/runs/{rid}"));
    assert_eq!(p.status, 200, "{p:?}");
    assert!(
        p.body.contains(&rid) && p.body.contains("approve-suspend"),
        "{p:?}"
    );
    // (Step outputs, as in the API's run document, name the evidence and the draft by id
    // and hash; their contents are what a viewer may not open.)
    assert!(
        !p.body.contains("/ui/evidence/") && !p.body.contains("/ui/drafts/"),
        "{p:?}"
    );
    assert!(p.body.contains("Evidence is shown to responders"), "{p:?}");
    assert!(p.body.contains("Drafts are shown to responders"), "{p:?}");
    // Every value is escaped.
    assert!(
        p.body.contains("j.smith+&lt;script&gt;@example.com"),
        "{p:?}"
    );
    assert!(!p.body.contains("<script"), "{p:?}");
    for path in [
        format!("/ui/drafts/{draft_id}"),
        format!("/ui/evidence/{evidence_id}"),
    ] {
        let p = vic.get(&path);
        assert_eq!(p.status, 403, "{path}: {p:?}");
        assert!(p.content_type().starts_with("text/html"), "{p:?}");
        assert!(p.body.contains("Viewers see run metadata only"), "{p:?}");
        assert!(!p.body.contains("body_markdown"), "{p:?}");
    }
    let p = vic.get(&format!("/ui/runs/{rid}?reveal=1"));
    assert_eq!(p.status, 403, "{p:?}");
    assert!(p.body.contains("Only admins"), "{p:?}");
    // No cancel or undo form for a viewer.
    assert!(!vic
        .get(&format!("/ui/runs/{rid}"))
        .body
        .contains("Cancel run"));

    // A responder: evidence with hashes and a download link, drafts rendered for reading.
    let mut rita = UiClient::login(&srv, "rita");
    let p = rita.get(&format!("/ui/runs/{rid}"));
    assert!(
        p.body.contains(&sha) && p.body.contains(&format!("/ui/evidence/{evidence_id}")),
        "{p:?}"
    );
    assert!(p.body.contains(&format!("/ui/drafts/{draft_id}")), "{p:?}");
    assert!(p.body.contains("Cancel run"), "{p:?}");
    let d = rita.get(&format!("/ui/drafts/{draft_id}"));
    assert_eq!(d.status, 200, "{d:?}");
    assert!(
        d.body.contains(&draft_subject.replace('&', "&amp;")),
        "{d:?}"
    );
    assert!(
        d.body.contains("<h1>") || d.body.contains("<h2>"),
        "Markdown rendered: {d:?}"
    );
    assert!(d.body.contains("CEO &lt;script&gt;"), "{d:?}");
    assert!(!d.body.contains("<script"), "{d:?}");
    let dl = rita.get(&format!("/ui/evidence/{evidence_id}"));
    assert_eq!(dl.status, 200, "{dl:?}");
    assert_eq!(dl.body.lines().count(), 3, "{dl:?}");
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(dl.body.as_bytes()));
    assert_eq!(digest, sha);
    let downloaded: Vec<Value> = audit(&srv, &rid)
        .into_iter()
        .filter(|e| e["action"] == "evidence.downloaded")
        .collect();
    assert_eq!(downloaded.len(), 1, "{downloaded:?}");
    assert_eq!(downloaded[0]["actor"], "ui:rita");
    assert_eq!(downloaded[0]["details"]["sha256"], json!(sha));

    // An approver reads drafts too, and sees the audit chain and exports like everyone.
    let mut dana = UiClient::login(&srv, "dana");
    assert_eq!(dana.get(&format!("/ui/drafts/{draft_id}")).status, 200);
    let a = vic.get("/ui/audit");
    assert_eq!(a.status, 200, "{a:?}");
    assert!(a.body.contains("Intact"), "{a:?}");
    assert!(
        a.body.contains(&format!("/ui/runs/{rid}/audit.jsonl")),
        "{a:?}"
    );
    let html = vic.get(&format!("/ui/runs/{rid}/audit.html"));
    assert_eq!(html.status, 200, "{html:?}");
    assert!(html.body.contains("Audit chain verified"), "{html:?}");
    let jsonl = vic.get(&format!("/ui/runs/{rid}/audit.jsonl"));
    assert_eq!(jsonl.status, 200, "{jsonl:?}");
    assert!(
        jsonl.content_type().starts_with("application/x-ndjson"),
        "{jsonl:?}"
    );
    let lines: Vec<Value> = jsonl
        .body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines.iter().any(|e| e["action"] == "run.created"),
        "{lines:?}"
    );
    let exported: Vec<Value> = audit(&srv, &rid)
        .into_iter()
        .filter(|e| e["action"] == "audit.exported")
        .collect();
    assert_eq!(exported.len(), 2, "{exported:?}");
    assert!(
        exported.iter().all(|e| e["actor"] == "ui:vic"),
        "{exported:?}"
    );

    // An admin may reveal secret outputs; that view is recorded.
    let mut root = UiClient::login(&srv, "root");
    let p = root.get(&format!("/ui/runs/{rid}?reveal=1"));
    assert_eq!(p.status, 200, "{p:?}");
    assert!(audit(&srv, &rid)
        .iter()
        .any(|e| e["action"] == "secrets.revealed" && e["actor"] == "ui:root"));

    // A responder cancels from the run page (with the session's CSRF token).
    let csrf = rita.csrf();
    let p = rita.post(&format!("/ui/runs/{rid}/cancel"), &[]);
    assert_eq!(p.status, 403, "{p:?}");
    let p = rita.post(&format!("/ui/runs/{rid}/cancel"), &[("csrf", &csrf)]);
    assert_eq!(p.status, 303, "{p:?}");
    srv.wait_status(&rid, "cancelled");
    assert!(audit(&srv, &rid)
        .iter()
        .any(|e| e["action"] == "run.cancel_requested" && e["actor"] == "ui:rita"));
    // Unknown things are pages too, not JSON.
    let p = rita.get("/ui/runs/01NOSUCHRUN");
    assert_eq!(p.status, 404, "{p:?}");
    assert!(p.content_type().starts_with("text/html"), "{p:?}");
    let p = rita.get("/ui/nowhere");
    assert_eq!(p.status, 404, "{p:?}");
    assert!(p.content_type().starts_with("text/html"), "{p:?}");
}

#[test]
fn ui_approval_page_never_decides_on_get_and_shows_refusals_on_the_page() {
    let env = env_with("");
    let srv = serve(&env);
    let rid = start(
        &srv,
        "rita",
        "gate",
        json!({"alert_id": "A-G", "subject_email": "g@example.com"}),
    );
    srv.wait_status(&rid, "waiting");
    let page_path = format!("/ui/runs/{rid}/steps/approve-suspend");

    // Opening the page, however often, decides nothing.
    let mut dana = UiClient::login(&srv, "dana");
    for _ in 0..3 {
        let p = dana.get(&page_path);
        assert_eq!(p.status, 200, "{p:?}");
        assert!(p.body.contains("Suspend g@example.com?"), "{p:?}");
        assert!(p.body.contains("What this approval releases"), "{p:?}");
        assert!(
            p.body.contains(">suspend</a>"),
            "releases the suspend step: {p:?}"
        );
        assert!(
            p.body.contains("id=\"approve\"") && p.body.contains("id=\"reject\""),
            "{p:?}"
        );
    }
    let head = srv.send(srv.http.head(format!("{}{page_path}", srv.base)));
    assert!(head.status == 200 || head.status == 303, "{}", head.status);
    assert_eq!(srv.run(&rid)["status"], "waiting");
    assert!(decisions(&srv, &rid).is_empty());

    // A POST without the CSRF token, or with another session's, decides nothing.
    let p = dana.post(&format!("{page_path}/approve"), &[("comment", "no token")]);
    assert_eq!(p.status, 403, "{p:?}");
    assert!(p.body.contains("CSRF"), "{p:?}");
    let mut sam = UiClient::login(&srv, "sam");
    let sams = sam.csrf();
    let p = dana.post(&format!("{page_path}/approve"), &[("csrf", &sams)]);
    assert_eq!(p.status, 403, "{p:?}");
    assert!(decisions(&srv, &rid).is_empty());
    assert_eq!(srv.run(&rid)["status"], "waiting");

    // Another group: no form, and a forged POST is refused on the page, not as JSON.
    let mut fin = UiClient::login(&srv, "fin");
    let p = fin.get(&page_path);
    assert!(!p.body.contains("id=\"approve\""), "{p:?}");
    assert!(
        p.body
            .contains("You are not among this step&#x27;s approvers")
            || p.body.contains("not among this step"),
        "{p:?}"
    );
    let csrf = fin.csrf();
    let p = fin.post(&format!("{page_path}/approve"), &[("csrf", &csrf)]);
    assert_eq!(p.status, 403, "{p:?}");
    assert!(p.content_type().starts_with("text/html"), "{p:?}");
    assert!(
        p.body.contains("Refused") && p.body.contains("may not decide"),
        "{p:?}"
    );
    assert!(!p.body.trim_start().starts_with('{'), "{p:?}");
    // A viewer may not decide at all.
    let mut vic = UiClient::login(&srv, "vic");
    let csrf = vic.csrf();
    let p = vic.post(&format!("{page_path}/approve"), &[("csrf", &csrf)]);
    assert_eq!(p.status, 403, "{p:?}");
    assert!(decisions(&srv, &rid).is_empty());

    // The approver approves with a comment: recorded as ui:dana, and the run finishes.
    let csrf = dana.csrf();
    let p = dana.post(
        &format!("{page_path}/approve"),
        &[("csrf", &csrf), ("comment", "evidence is clear <b>")],
    );
    assert_eq!(p.status, 303, "{p:?}");
    assert_eq!(p.location(), format!("{page_path}?decided=approve"));
    srv.wait_status(&rid, "succeeded");
    let p = dana.get(p.location());
    assert!(p.body.contains("Your approval was recorded"), "{p:?}");
    assert!(
        p.body.contains("ui:dana") && p.body.contains("evidence is clear &lt;b&gt;"),
        "{p:?}"
    );
    let d = decisions(&srv, &rid);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0]["actor"], "ui:dana");
    assert_eq!(d[0]["details"]["comment"], "evidence is clear <b>");
    assert_eq!(d[0]["details"]["decision"], "approve");
    // The timeline shows who decided, when, and the comment.
    let t = dana.get(&format!("/ui/runs/{rid}"));
    assert!(
        t.body.contains("ui:dana") && t.body.contains("succeeded"),
        "{t:?}"
    );
    // A decided step takes no more decisions: 409 on the page.
    let p = dana.post(&format!("{page_path}/approve"), &[("csrf", &csrf)]);
    assert_eq!(p.status, 409, "{p:?}");
    assert!(p.body.contains("not waiting"), "{p:?}");

    // The starter alone may not approve (an admin who started the run).
    let own = start(
        &srv,
        "root",
        "gate",
        json!({"alert_id": "A-S", "subject_email": "s@example.com"}),
    );
    srv.wait_status(&own, "waiting");
    let mut root = UiClient::login(&srv, "root");
    let csrf = root.csrf();
    let p = root.post(
        &format!("/ui/runs/{own}/steps/approve-suspend/approve"),
        &[("csrf", &csrf)],
    );
    assert_eq!(p.status, 403, "{p:?}");
    assert!(p.body.contains("cannot approve it alone"), "{p:?}");
    assert_eq!(srv.run(&own)["status"], "waiting");

    // A quorum: one person is one approver, whichever channel they use.
    let q = start(&srv, "rita", "quorum", json!({"alert_id": "A-Q"}));
    srv.wait_status(&q, "waiting");
    let a = srv.post(
        &format!("/api/v1/runs/{q}/steps/approve-both/approve"),
        Some(token("dana")),
        json!({}),
    );
    assert_eq!(a.status, 200, "{a:?}");
    let csrf = dana.csrf();
    let p = dana.post(
        &format!("/ui/runs/{q}/steps/approve-both/approve"),
        &[("csrf", &csrf)],
    );
    assert_eq!(p.status, 409, "{p:?}");
    assert!(p.body.contains("already approved"), "{p:?}");
    // (The API's approval woke the run, which found no quorum and waits again.)
    srv.wait_status(&q, "waiting");
    assert_eq!(decisions(&srv, &q).len(), 1);
    // The pending page: for sam it waits; for dana (who approved) it is someone else's.
    let p = sam.get("/ui/pending");
    let mine = p.body.split("Waiting for others").next().unwrap();
    assert!(mine.contains(&q), "{p:?}");
    let p = dana.get("/ui/pending");
    let (mine, others) = p.body.split_once("Waiting for others").unwrap();
    assert!(
        !mine.contains(&q) && others.contains(&q) && others.contains("you approved"),
        "{p:?}"
    );
    let csrf = sam.csrf();
    let p = sam.post(
        &format!("/ui/runs/{q}/steps/approve-both/approve"),
        &[("csrf", &csrf)],
    );
    assert_eq!(p.status, 303, "{p:?}");
    srv.wait_status(&q, "succeeded");

    // A task: its assignee marks it done with a note.
    let t = start(&srv, "rita", "chore", json!({"alert_id": "A-T"}));
    srv.wait_status(&t, "waiting");
    let p = fin.get("/ui/pending");
    let others = p.body.split_once("Waiting for others").unwrap().1;
    assert!(others.contains("hold-payments"), "{p:?}");
    let p = dana.get("/ui/pending");
    let mine = p.body.split("Waiting for others").next().unwrap();
    assert!(
        mine.contains("hold-payments") && mine.contains("Hold payments for A-T"),
        "{p:?}"
    );
    let task = dana.get(&format!("/ui/runs/{t}/steps/hold-payments"));
    assert!(
        task.body.contains("id=\"done\"") && !task.body.contains("id=\"approve\""),
        "{task:?}"
    );
    let csrf = dana.csrf();
    let p = dana.post(
        &format!("/ui/runs/{t}/steps/hold-payments/done"),
        &[("csrf", &csrf), ("note", "held at the bank")],
    );
    assert_eq!(p.status, 303, "{p:?}");
    srv.wait_status(&t, "succeeded");
    let d = decisions(&srv, &t);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0]["action"], "task.done");
    assert_eq!(d[0]["actor"], "ui:dana");
    assert_eq!(d[0]["details"]["comment"], "held at the bank");
}

#[test]
fn ui_runs_list_filters_and_groups_by_case() {
    let env = env_with("");
    let srv = serve(&env);
    let a1 = start(
        &srv,
        "rita",
        "plain",
        json!({"alert_id": "CASE-1", "subject_email": "ann@example.com"}),
    );
    let a2 = start(
        &srv,
        "rita",
        "plain",
        json!({"alert_id": "CASE-1", "subject_email": "ann@example.com"}),
    );
    let b = start(
        &srv,
        "rita",
        "gate",
        json!({"alert_id": "CASE-2", "subject_email": "bob@example.com"}),
    );
    srv.wait_status(&a1, "succeeded");
    srv.wait_status(&a2, "succeeded");
    srv.wait_status(&b, "waiting");
    let mut vic = UiClient::login(&srv, "vic");

    let all = vic.get("/ui/");
    assert_eq!(all.status, 200, "{all:?}");
    // Two cases; both runs of CASE-1 in one group.
    let case1 = all.body.find("<code>CASE-1</code>").expect("case 1");
    let case2 = all.body.find("<code>CASE-2</code>").expect("case 2");
    assert!(case2 < case1, "the newest case first");
    let group1 = &all.body[case1..];
    assert!(
        group1.contains(&a1) && group1.contains(&a2) && !group1.contains(&b),
        "{all:?}"
    );

    let ids = |p: &Page| [&a1, &a2, &b].map(|id| p.body.contains(id.as_str()));
    assert_eq!(ids(&vic.get("/ui/?status=waiting")), [false, false, true]);
    assert_eq!(ids(&vic.get("/ui/?runbook=plain")), [true, true, false]);
    assert_eq!(ids(&vic.get("/ui/?subject=BOB")), [false, false, true]);
    assert_eq!(ids(&vic.get("/ui/?case=CASE-1")), [true, true, false]);
    let today = chrono::Utc::now().date_naive();
    assert_eq!(
        ids(&vic.get(&format!("/ui/?from={today}&to={today}"))),
        [true, true, true]
    );
    let tomorrow = today.succ_opt().unwrap();
    let yesterday = today.pred_opt().unwrap();
    assert_eq!(
        ids(&vic.get(&format!("/ui/?from={tomorrow}"))),
        [false, false, false]
    );
    assert_eq!(
        ids(&vic.get(&format!("/ui/?to={yesterday}"))),
        [false, false, false]
    );
    // A bad filter is said on the page.
    let p = vic.get("/ui/?status=sleeping&from=yesterday");
    assert_eq!(p.status, 200, "{p:?}");
    assert!(
        p.body.contains("unknown status &#x60;sleeping&#x60;"),
        "{p:?}"
    );
    assert!(
        p.body
            .contains("from: &#x60;yesterday&#x60; is neither a day"),
        "{p:?}"
    );
    // The undo run of a run shares its case and is listed with it.
    let mut rita = UiClient::login(&srv, "rita");
    let csrf = rita.csrf();
    let p = rita.post(&format!("/ui/runs/{a1}/undo"), &[("csrf", &csrf)]);
    assert_eq!(p.status, 303, "{p:?}");
    let undo = p.location().rsplit('/').next().unwrap().to_string();
    srv.wait_status(&undo, "succeeded");
    let p = vic.get("/ui/?case=CASE-1");
    assert!(
        p.body.contains(&undo) && p.body.contains("undo of"),
        "{p:?}"
    );
}
